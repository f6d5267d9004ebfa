"""Deploy a round's LoRA adapter into the running vLLM server, switch ``current``, roll back.

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
from .layout import RunLayout
from .gateway_client import GatewayError, admin_call, running_gateway
from .live import adapter_name, event, read_current, round_of, write_current
from .serve import BASE_NAME
from .stage import StageContext, StageResult, recorded

__all__ = ["DeployError", "Deployer", "adapter_name", "check_adapter_dir", "make_live_offline", "read_current",
           "round_of", "run"]
SMOKE_PROMPT = "Hello"
SMOKE_TOKENS = 2


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

class Deployer:
    """Adapters of one run on one vLLM server. All operations are serialized by one asyncio lock."""

    def __init__(self, run: RunLayout, vllm_url: str, headers: dict | None = None, max_rank: int = 16,
                 timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None,
                 base_model: str | Path | None = None):
        self.run = run
        self.base_model = base_model  # None: the model vLLM reports serving (asked once)
        self._base: BaseModel | None = None
        self.staging = Staging(run, max_rank)  # the checked copies vLLM loads from
        self.transport = transport  # tests: an in-process stub of the vLLM API
        self.url = vllm_url.rstrip("/")
        self.headers = dict(headers or {})
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

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout_s,
                                 transport=self.transport)

    async def loaded(self) -> list[str]:
        """Adapter names the server has loaded now."""
        async with self._client() as c:
            r = await c.get("/v1/models")
            r.raise_for_status()
            return [m["id"] for m in r.json()["data"] if m["id"] != BASE_NAME and m.get("parent")]

    async def _base_model(self, c: httpx.AsyncClient) -> BaseModel:
        if self._base is None:
            path = self.base_model
            if path is None:
                r = await c.get("/v1/models")
                r.raise_for_status()
                path = next((m.get("root") for m in r.json()["data"] if m["id"] == BASE_NAME), None)
            if not path:
                raise DeployError("cannot check adapters: no base model was given and the server names none "
                                  f"(no root for {BASE_NAME!r} in /v1/models)", 500)
            self._base = BaseModel.from_path(path)
        return self._base

    async def _stage(self, c: httpx.AsyncClient, name: str, path: str | Path) -> Path:
        """A checked private copy (in a thread: copying and checking 20 MB takes ~0.25 s, chats go on meanwhile)."""
        return await asyncio.to_thread(self.staging.stage, name, path, await self._base_model(c))

    async def _load(self, c: httpx.AsyncClient, name: str, staged: Path) -> None:
        """Load the staged copy; it is kept while ``name`` stays loaded (vLLM rereads it after evicting it)."""
        try:
            r = await c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(staged)})
            if r.status_code != 200:
                raise DeployError(f"vLLM refused {name} from {staged}: {_error_text(r)}", 502)
        except BaseException:
            self.staging.drop(staged=staged)
            raise
        self.staging.keep(name, staged)

    async def _unload(self, c: httpx.AsyncClient, name: str) -> bool:
        r = await c.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if r.status_code == 200:
            self.staging.drop(name)
        return r.status_code == 200

    async def _smoke(self, c: httpx.AsyncClient, name: str) -> None:
        try:
            r = await c.post("/v1/completions", json={"model": name, "prompt": SMOKE_PROMPT,
                                                      "max_tokens": SMOKE_TOKENS, "temperature": 0})
        except httpx.HTTPError as e:
            raise DeployError(f"smoke test of {name} failed: {type(e).__name__}: {e}", 502) from None
        if r.status_code != 200:
            raise DeployError(f"smoke test of {name} failed: {_error_text(r)}", 502)
        choices = r.json().get("choices") or [{}]
        text, finish = choices[0].get("text") or "", choices[0].get("finish_reason")
        if not text or finish not in ("stop", "length"):
            raise DeployError(f"smoke test of {name} failed: text={text!r} finish_reason={finish!r}", 502)

    def _switch(self, live: str | None, previous: str | None, event: dict) -> None:
        state = {"live": live, "previous": previous, "history": self.state["history"] + [event]}
        write_current(self.run, state)  # atomic: readers see the old file or the new one
        self.state = state

    async def _prune(self, c: httpx.AsyncClient) -> list[str]:
        keep = {self.state["live"], self.state["previous"]}
        r = await c.get("/v1/models")
        names = [m["id"] for m in r.json().get("data", [])] if r.status_code == 200 else []
        gone = [n for n in names if round_of(n) is not None and n not in keep]
        for n in gone:
            await self._unload(c, n)
        return gone

    async def _ensure_loaded(self, c: httpx.AsyncClient, name: str, path: Path | None = None) -> bool:
        """Load ``name`` (validated) unless the server has it; True when it was loaded now."""
        r = await c.get("/v1/models")
        r.raise_for_status()
        if name in {m["id"] for m in r.json()["data"]}:
            return False
        n = round_of(name)
        await self._load(c, name, await self._stage(c, name, path or self.run.round(n).adapter))
        return True

    async def deploy(self, round_n: int, path: str | Path | None = None, activate: bool = True) -> dict:
        """Validate, load as ``se-rNNN``, smoke-test, then (``activate``) switch ``current`` to it."""
        if not isinstance(round_n, int) or isinstance(round_n, bool) or round_n <= 0:
            raise DeployError(f"round must be a positive integer, got {round_n!r}")
        name = adapter_name(round_n)
        folder = Path(path if path is not None else self.run.round(round_n).adapter).resolve()
        async with self._locked():
            t0 = time.perf_counter()
            async with self._client() as c:
                staged = await self._stage(c, name, folder)  # a refusal loads nothing and changes nothing
                if activate and self.state["live"] == name:
                    self.staging.drop(staged=staged)
                    return {**self.public_state(), "status": "already live", "name": name}
                r = await c.get("/v1/models")
                r.raise_for_status()
                was_loaded = name in {m["id"] for m in r.json()["data"]}
                if was_loaded:  # the server keeps the copy it loaded before
                    self.staging.drop(staged=staged)
                else:
                    await self._load(c, name, staged)
                t1 = time.perf_counter()
                try:
                    await self._smoke(c, name)
                except BaseException:
                    if not was_loaded:
                        await self._unload(c, name)
                    raise
                t2 = time.perf_counter()
                if activate:
                    old = self.state["live"]
                    self._switch(name, old, event("deploy", round=round_n, live=name, previous=old, path=str(folder)))
                t3 = time.perf_counter()
                pruned = await self._prune(c) if activate else []
            return {**self.public_state(), "status": "live" if activate else "loaded", "name": name,
                    "path": str(folder), "staged": str(self.staging.copies.get(name)), "pruned": pruned, "timings_ms": {
                        "load": round((t1 - t0) * 1000, 1), "smoke": round((t2 - t1) * 1000, 1),
                        "switch": round((t3 - t2) * 1000, 1), "total": round((t3 - t0) * 1000, 1)}}

    async def rollback(self) -> dict:
        """Switch back to the previous adapter (or the base model when the first deploy is rolled back)."""
        async with self._locked():
            live, previous = self.state["live"], self.state["previous"]
            if live is None and previous is None:
                raise DeployError("nothing to roll back: the base model is live and there is no previous adapter", 409)
            async with self._client() as c:
                if previous is not None:
                    loaded_now = await self._ensure_loaded(c, previous)
                    try:
                        await self._smoke(c, previous)
                    except BaseException:
                        if loaded_now:
                            await self._unload(c, previous)
                        raise
                self._switch(previous, live, event("rollback", live=previous, previous=live))
            return {**self.public_state(), "status": "rolled back"}

    async def unload(self, name: str) -> dict:
        """Unload an adapter that is not live (unloading ``previous`` is allowed; rollback reloads it)."""
        async with self._locked():
            if name == self.state["live"]:
                raise DeployError(f"{name} is live: deploy another adapter or roll back first", 409)
            async with self._client() as c:
                if not await self._unload(c, name):
                    raise DeployError(f"{name} is not loaded", 404)
            return {**self.public_state(), "status": "unloaded", "name": name}

    async def restore(self) -> dict:
        """After a server (re)start: load the live and previous adapters that current.json names. A live
        adapter that no longer loads falls back to the base model (recorded in history)."""
        report = {}
        async with self._locked():
            async with self._client() as c:
                for role in ("live", "previous"):
                    name = self.state[role]
                    if name is None:
                        continue
                    try:
                        if round_of(name) is None:
                            raise DeployError(f"{name} is not a deployable adapter name")
                        await self._ensure_loaded(c, name)
                        if role == "live":
                            await self._smoke(c, name)
                        report[role] = f"{name} loaded"
                    except (DeployError, httpx.HTTPError) as e:
                        report[role] = f"{name} failed: {e}"
                        if role == "live":
                            self._switch(None, self.state["previous"],
                                         event("restore-failed", failed=name, reason=str(e)[:300], live=None))
                        else:
                            self._switch(self.state["live"], None,
                                         event("restore-failed", failed=name, reason=str(e)[:300]))
        return report

    def public_state(self) -> dict:
        return {"live": self.state["live"], "previous": self.state["previous"], "model": self.live_model}


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("detail")
        return f"HTTP {r.status_code}: {msg or body}"[:500]
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:300]}"


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
