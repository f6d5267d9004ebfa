"""Deploy a round's LoRA adapter into the running vLLM server(s), switch ``current``, roll back.

deploy(round N):
  1. the adapter folder is ``runs/<name>/round-NNN/adapter`` (or a given path); it is copied into a private
     folder under ``runs/<name>/staged-adapters/`` and the copy is checked against the served base model
     (selfevolve/adapters.py :func:`stage_adapter`: inside the run, no links, no extra or pickle files, a plain
     LoRA whose config, ranks, alpha and tensor shapes fit the base model's layers);
  2. the *staged copy* is loaded under the versioned name ``se-rNNN`` (``POST /v1/load_lora_adapter``): what
     was checked is what vLLM reads, however the round's folder changes afterwards;
  3. one short generation through it must succeed (non-empty text, finish ``stop``/``length``);
  4. ``current.json`` is switched atomically (tmp + rename): ``previous`` = the old live, ``live`` = se-rNNN,
     and a ``history`` entry is appended; the gateway routes ``model=current`` from the in-memory copy,
     which changes only after the file is written.
A refusal or a failure at 2-3 leaves ``live`` untouched and unloads the adapter again if it got loaded; its
staged copy is removed with it (and when it is unloaded or pruned later). The base model the checks use is the
one given (``base_model``) or the one vLLM reports serving (``root`` of ``base`` in ``/v1/models``).
The previous adapter stays loaded, so ``rollback`` (swap live and previous) is instant; older ``se-r*``
adapters are unloaded after a switch (requests already running on them finish).

With several servers (``serve.replicas`` / ``serve.upstreams``, selfevolve/gateway_pool.py) every step is all or
none: staged and checked once, loaded on every server, smoke-tested on each; a failure anywhere unloads it again
from those that loaded it (a server where even that fails is taken out of service) and changes nothing. A deploy
is refused while any server is out of service; a rollback runs on those in service. A server that comes back is
brought to the live adapter (:meth:`Deployer.sync`) before it gets traffic again: no server ever serves
another version than the others (selfevolve/deploy_replicas.py has the steps).

The checks of step 1 are selfevolve/adapters.py's and selfevolve/adapter_checks.py's. The gateway's admin routes call
:class:`Deployer` in-process; the CLI and the round's deploy stage (:func:`run`) call those routes through
selfevolve/gateway_client.py.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from .adapters import BaseModel, DeployError, Staging, check_adapter_dir
from .deploy_replicas import AllOrNone, Replicas, adapters_of, describe, load, model_ids, smoke, unload
from .gateway_client import GatewayError, admin_call, running_gateway
from .gateway_pool import Upstream, UpstreamPool
from .layout import RunLayout
from .live import adapter_name, event, read_current, round_of, write_current
from .serve import BASE_NAME
from .stage import StageContext, StageResult, recorded

__all__ = ["DeployError", "Deployer", "adapter_name", "check_adapter_dir", "make_live_offline", "read_current",
           "round_of", "run"]


# ---------------------------------------------------------------- current.json

def make_live_offline(run: RunLayout, round_n: int, max_rank: int, base_model: str | Path) -> dict:
    """With no server running: check round N's adapter and name it live in current.json, the previous live one
    as ``previous``. The next ``selfevolve serve`` loads it and smoke-tests it (falling back to the base model,
    recorded in the history, if it does not load). Never call this while a gateway of the run is up: it owns
    current.json then."""
    name = adapter_name(round_n)
    folder = check_adapter_dir(run, run.round(round_n).adapter, max_rank, base_model)
    state = read_current(run)
    if state["live"] != name:
        state = {"live": name, "previous": state["live"], "history": state["history"] + [
            event("deploy-offline", round=round_n, live=name, previous=state["live"], path=str(folder))]}
        write_current(run, state)
    return state


# ---------------------------------------------------------------- the deployer

class Deployer(AllOrNone):
    """Adapters of one run on its model servers (``pool``: one, or the replicas behind the gateway). All
    operations are serialized by one asyncio lock."""

    def __init__(self, run: RunLayout, vllm_url: str | None = None, headers: dict | None = None, max_rank: int = 16,
                 timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None,
                 base_model: str | Path | None = None, pool: UpstreamPool | None = None):
        if pool is None:
            if vllm_url is None:
                raise ValueError("give the vLLM server's url or a pool of them")
            pool = UpstreamPool.of([vllm_url], headers, transport)
        self.run = run
        self.pool = pool
        self.base_model = base_model  # None: the model vLLM reports serving (asked once)
        self._base: BaseModel | None = None
        self.staging = Staging(run, max_rank)  # the checked copies vLLM loads from, shared by all servers
        self.max_rank = max_rank
        self.timeout_s = timeout_s
        self.state = read_current(run)
        self._lock: asyncio.Lock | None = None

    @property
    def live_model(self) -> str:
        """The served name ``model=current`` maps to."""
        return self.state["live"] or BASE_NAME

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _replicas(self, op: str, require_all: bool = False) -> Replicas:
        return Replicas(self.pool, self.timeout_s, op, require_all)

    async def loaded_on(self) -> dict[str, list[str]]:
        """Adapter names each server in service has loaded now."""
        async with self._replicas("listing adapters") as rs:
            return {u.name: names for u, names in (await rs.names()).items()}

    async def loaded(self) -> list[str]:
        """Adapter names loaded now (the first server in service; all of them hold the same live / previous)."""
        return next(iter((await self.loaded_on()).values()))

    def _switch(self, live: str | None, previous: str | None, event: dict) -> None:
        state = {"live": live, "previous": previous, "history": self.state["history"] + [event]}
        write_current(self.run, state)  # atomic: readers see the old file or the new one
        self.state = state

    async def deploy(self, round_n: int, path: str | Path | None = None, activate: bool = True) -> dict:
        """Validate, load as ``se-rNNN`` on every server, smoke-test each, then (``activate``) switch ``current``
        to it. Refused (nothing changed) unless every server is in service."""
        if not isinstance(round_n, int) or isinstance(round_n, bool) or round_n <= 0:
            raise DeployError(f"round must be a positive integer, got {round_n!r}")
        name = adapter_name(round_n)
        folder = Path(path if path is not None else self.run.round(round_n).adapter).resolve()
        async with self._locked():
            t0 = time.perf_counter()
            async with self._replicas(f"deploy of {name}", require_all=True) as rs:
                staged = await self._stage(rs.client, name, folder)  # a refusal loads nothing and changes nothing
                if activate and self.state["live"] == name:
                    self.staging.drop(staged=staged)
                    return {**self.public_state(), "status": "already live", "name": name}
                loaded_now = await self._load_everywhere(rs, name, staged)
                t1 = time.perf_counter()
                await self._smoke_everywhere(rs, name, loaded_now)
                t2 = time.perf_counter()
                if activate:
                    old = self.state["live"]
                    self._switch(name, old, event("deploy", round=round_n, live=name, previous=old, path=str(folder)))
                t3 = time.perf_counter()
                pruned = await self._prune(rs) if activate else []
            return {**self.public_state(), "status": "live" if activate else "loaded", "name": name,
                    "path": str(folder), "staged": str(self.staging.copies.get(name)), "pruned": pruned,
                    "replicas": [u.name for u, _ in rs.members], "timings_ms": {
                        "load": round((t1 - t0) * 1000, 1), "smoke": round((t2 - t1) * 1000, 1),
                        "switch": round((t3 - t2) * 1000, 1), "total": round((t3 - t0) * 1000, 1)}}

    async def load_private(self, name: str, path: str | Path) -> dict:
        """Load an adapter under a name of its own on every server in service (all or none), checked and staged
        like a deploy; never live (selfevolve/gateway_engine.py lends it to ``selfevolve iterate``)."""
        async with self._locked():
            async with self._replicas(f"loading {name}") as rs:
                staged = await self._stage(rs.client, name, Path(path).resolve())
                await self._load_everywhere(rs, name, staged)
        return {"name": name, "status": "loaded"}

    async def rollback(self) -> dict:
        """Switch back to the previous adapter (or the base model when the first deploy is rolled back) on every
        server in service; one out of service is brought to it before it serves again (:meth:`sync`)."""
        async with self._locked():
            live, previous = self.state["live"], self.state["previous"]
            if live is None and previous is None:
                raise DeployError("nothing to roll back: the base model is live and there is no previous adapter", 409)
            async with self._replicas("rollback") as rs:
                if previous is not None:
                    await self._smoke_everywhere(rs, previous, await self._load_everywhere(rs, previous))
                self._switch(previous, live, event("rollback", live=previous, previous=live))
            return {**self.public_state(), "status": "rolled back"}

    async def unload(self, name: str) -> dict:
        """Unload an adapter that is not live (unloading ``previous`` is allowed; rollback reloads it)."""
        async with self._locked():
            if name == self.state["live"]:
                raise DeployError(f"{name} is live: deploy another adapter or roll back first", 409)
            async with self._replicas(f"unload of {name}") as rs:
                have = await rs.names()
                holders = [(u, c) for u, c in rs.members if name in have[u]]
                if not holders:
                    raise DeployError(f"{name} is not loaded", 404)
                _, failed = await rs.run(lambda c: unload(c, name), holders)
                if failed:
                    raise DeployError(f"{name} could not be unloaded: {describe(failed)}", 502)
                self.staging.drop(name)
            return {**self.public_state(), "status": "unloaded", "name": name}

    async def restore(self) -> dict:
        """After a server (re)start: load the live and previous adapters that current.json names on every server.
        A live adapter that no longer loads falls back to the base model (recorded in history); a server found
        unreachable meanwhile is left out (brought to the live adapter when it is back) and the others go on."""
        report = {}
        async with self._locked():
            for role in ("live", "previous"):
                name = self.state[role]
                if name is None:
                    continue
                for attempt in (1, 2):
                    try:
                        if round_of(name) is None:
                            raise DeployError(f"{name} is not a deployable adapter name")
                        async with self._replicas("restore") as rs:
                            loaded_now = await self._load_everywhere(rs, name)
                            if role == "live":
                                await self._smoke_everywhere(rs, name, loaded_now)
                        report[role] = f"{name} loaded"
                        break
                    except (DeployError, httpx.HTTPError) as e:
                        if getattr(e, "status", 0) == 503:  # servers unreachable: not the adapter's fault
                            if attempt == 1 and self.pool.in_service():
                                continue  # the one that went down is out of service now: once more on the others
                            report[role] = f"{name} not restored yet ({e}): servers get it when they are back"
                            break
                        report[role] = f"{name} failed: {e}"
                        live, previous = ((None, self.state["previous"]) if role == "live"
                                          else (self.state["live"], None))
                        self._switch(live, previous, event("restore-failed", failed=name, reason=str(e)[:300],
                                                           **({"live": None} if role == "live" else {})))
                        break
        return report

    async def sync(self, u: Upstream) -> bool:
        """Bring a server that was out of service (back up, restarted, or left unsure by a failed undo) to the
        live adapter: live and lent ones (:meth:`required`; and, if it loads, previous) loaded, live smoke-tested,
        stale ``se-r*`` unloaded; then back in service. Else it stays out, with the reason (logged)."""
        async with self._locked():
            live, previous, need = self.state["live"], self.state["previous"], self.required()
            async with u.new_client(self.timeout_s) as c:
                try:
                    have = adapters_of(await model_ids(c))
                    for name in dict.fromkeys((*need, previous)):
                        if name is None or name in have:
                            continue
                        src, fresh = await self._source(c, name)
                        try:
                            await load(c, name, src)
                        except (DeployError, httpx.HTTPError):
                            if fresh:
                                self.staging.drop(staged=src)
                            if name in need:
                                raise
                            continue  # previous: a rollback loads it again
                        if fresh:
                            self.staging.keep(name, src)
                    if live is not None:
                        await smoke(c, live)
                    for n in have:
                        if round_of(n) is not None and n not in (live, previous):
                            await unload(c, n, must=False)
                except (DeployError, httpx.HTTPError) as e:
                    self.pool.take_out(u, f"cannot be brought to the live adapter {self.live_model}: {e}")
                    return False
            self.pool.mark_up(u)
            return True

    def public_state(self) -> dict:
        return {"live": self.state["live"], "previous": self.state["previous"], "model": self.live_model}


# ---------------------------------------------------------------- the round's deploy stage

NAME = "deploy"


def run(ctx: StageContext) -> StageResult:
    """Make the gate's promoted adapter live: hot-loaded through this run's running gateway, or named in
    current.json for the next ``selfevolve serve`` when none runs. A refused adapter leaves the live one."""
    done = recorded(ctx, NAME, None)
    if done:
        return done
    t0 = time.time()
    rnd, cfg = ctx.rnd, ctx.cfg
    decision = (ctx.entry("gate") or {}).get("decision") or {}
    if not decision.get("promote"):
        action = {"action": "none", "reason": decision.get("reason") if decision.get("candidate") is None
                  else "the gate did not promote the adapter"}
    elif cfg.gate.deploy == "never":
        action = {"action": "none", "reason": "gate.deploy=never: promoted but not deployed; "
                                               f"`selfevolve deploy --round {rnd.number}` makes it live"}
    else:
        target = running_gateway(cfg, ctx.run)
        if target is not None:
            url, key = target
            try:
                out = admin_call(url, key, "/admin/adapters/load", {"round": rnd.number})
                action = {"action": "hot-loaded", "gateway": url, "live": out.get("live"),
                          "previous": out.get("previous"), "timings_ms": out.get("timings_ms")}
            except GatewayError as e:  # refused or broken: the gateway left the live adapter as it was
                action = {"action": "refused", "gateway": url, "reason": str(e), "status": e.status}
        else:
            try:
                make_live_offline(ctx.run, rnd.number, cfg.lora_slots.max_rank, cfg.model.path)
                action = {"action": "offline", "live": adapter_name(rnd.number),
                          "reason": "no gateway running: current.json names it, `selfevolve serve` loads it"}
            except DeployError as e:
                action = {"action": "refused", "reason": str(e)}
    line = action["action"] + (f" → live {action['live']}" if action.get("live") else "") + \
        (f" ({action['reason']})" if action.get("reason") else "")
    res = ctx.record(NAME, inputs=[], outputs=[], counts={}, started=t0, line=line, **action)
    res.data = action
    return res
