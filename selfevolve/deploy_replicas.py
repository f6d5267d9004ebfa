"""The vLLM adapter routes the deployer calls on each model server, and :class:`Replicas`: one step run on every
server in service at once, telling which succeeded and which failed (selfevolve/deploy.py builds its
all-or-none operations from these).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from .adapters import BaseModel, DeployError, Staging
from .gateway_pool import DOWN, UNSENT, Upstream, UpstreamPool
from .layout import RunLayout
from .live import is_private, round_of
from .serve import BASE_NAME

SMOKE_PROMPT = "Hello"
SMOKE_TOKENS = 2


# ---------------------------------------------------------------- one server

async def model_ids(c: httpx.AsyncClient) -> list[str]:
    """The served names (``base`` and the loaded adapters), in the server's order."""
    r = await c.get("/v1/models")
    r.raise_for_status()
    return [m["id"] for m in r.json()["data"]]


async def load(c: httpx.AsyncClient, name: str, staged: Path) -> None:
    r = await c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(staged)})
    if r.status_code != 200:
        raise DeployError(f"vLLM refused {name} from {staged}: {error_text(r)}", 502)


async def unload(c: httpx.AsyncClient, name: str, must: bool = True) -> bool:
    """True when unloaded; not loaded (or any refusal) raises when ``must``, else False."""
    r = await c.post("/v1/unload_lora_adapter", json={"lora_name": name})
    if r.status_code != 200 and must:
        raise DeployError(f"vLLM did not unload {name}: {error_text(r)}", 502)
    return r.status_code == 200


async def smoke(c: httpx.AsyncClient, name: str) -> None:
    """One short generation through ``name``: non-empty text that finished (``stop`` / ``length``)."""
    try:
        r = await c.post("/v1/completions", json={"model": name, "prompt": SMOKE_PROMPT,
                                                  "max_tokens": SMOKE_TOKENS, "temperature": 0})
    except httpx.HTTPError as e:
        raise DeployError(f"smoke test of {name} failed: {type(e).__name__}: {e}", 502) from None
    if r.status_code != 200:
        raise DeployError(f"smoke test of {name} failed: {error_text(r)}", 502)
    choices = r.json().get("choices") or [{}]
    text, finish = choices[0].get("text") or "", choices[0].get("finish_reason")
    if not text or finish not in ("stop", "length"):
        raise DeployError(f"smoke test of {name} failed: text={text!r} finish_reason={finish!r}", 502)


def error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("detail")
        return f"HTTP {r.status_code}: {msg or body}"[:500]
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:300]}"


def adapters_of(ids: list[str]) -> list[str]:
    return [i for i in ids if i != BASE_NAME]


# ---------------------------------------------------------------- every server in service

Member = tuple[Upstream, httpx.AsyncClient]


def describe(failed: list[tuple[Upstream, BaseException]]) -> str:
    return "; ".join(f"{u.name}: {e if isinstance(e, DeployError) else f'{type(e).__name__}: {e}'}"
                     for u, e in failed)


class Replicas:
    """A client to each model server in service, for one deployer operation (``async with``). ``require_all``:
    refuse (503) when any server is not in service: what is deployed must reach every one of them."""

    def __init__(self, pool: UpstreamPool, timeout_s: float, op: str, require_all: bool = False):
        self.pool, self.timeout_s, self.op, self.require_all = pool, timeout_s, op, require_all
        self.members: list[Member] = []

    async def __aenter__(self) -> "Replicas":
        out = [u for u in self.pool.upstreams if not u.in_service]
        if self.require_all and out:
            raise DeployError(f"{self.op} refused: it must reach every model server, and "
                              + "; ".join(f"{u.name} is {u.state} ({u.error})" for u in out)
                              + ": nothing was changed", 503)
        if not self.pool.in_service():
            raise DeployError(f"{self.op} refused: no model server in service: {self.pool.why_none()}", 503)
        self.members = [(u, u.new_client(self.timeout_s)) for u in self.pool.in_service()]
        return self

    async def __aexit__(self, *exc) -> None:
        for _, c in self.members:
            await c.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        return self.members[0][1]

    async def run(self, step: Callable[[httpx.AsyncClient], Awaitable], members: list[Member] | None = None
                  ) -> tuple[list[Member], list[tuple[Upstream, BaseException]]]:
        """``step`` on each member at once: (the members it succeeded on, [(server, error)] of the others)."""
        members = self.members if members is None else members
        results = await asyncio.gather(*(step(c) for _, c in members), return_exceptions=True)
        ok = [m for m, r in zip(members, results) if not isinstance(r, BaseException)]
        failed = [(m[0], r) for m, r in zip(members, results) if isinstance(r, BaseException)]
        for _, r in failed:
            if isinstance(r, asyncio.CancelledError):  # the operation itself was cancelled: not a server's fault
                raise r
        return ok, failed

    async def names(self) -> dict[Upstream, list[str]]:
        """The adapters each member has loaded now; a server that does not answer fails the operation."""
        results = await asyncio.gather(*(model_ids(c) for _, c in self.members), return_exceptions=True)
        failed = [(u, r) for (u, _), r in zip(self.members, results) if isinstance(r, BaseException)]
        for u, e in failed:
            if isinstance(e, UNSENT):  # a dead server: out of service now, not at the next health round
                self.pool.take_out(u, f"unreachable: {type(e).__name__}: {e}", DOWN)
        if failed:
            unreachable = all(isinstance(e, UNSENT) for _, e in failed)
            raise DeployError(f"{self.op} refused (nothing was changed): could not list the adapters of "
                              f"{describe(failed)}", 503 if unreachable else 502)
        return {u: adapters_of(ids) for (u, _), ids in zip(self.members, results)}


class AllOrNone:
    """The deployer's steps over every server in service at once, each all or none (selfevolve/deploy.py's
    :class:`~selfevolve.deploy.Deployer` is built on them; it sets ``run``, ``pool``, ``staging``, ``base_model``,
    ``_base``, ``state`` and ``live_model``)."""

    run: RunLayout
    pool: UpstreamPool
    staging: Staging
    base_model: str | Path | None
    _base: BaseModel | None
    state: dict
    live_model: str

    def required(self) -> list[str]:
        """The adapters every server in service must hold: the live one and those lent to a round under a private
        name (selfevolve/gateway_engine.py); a server restarted without them would fail the requests it gets."""
        lent = sorted(n for n, p in self.staging.copies.items() if is_private(n) and p.exists())
        return [n for n in (self.state["live"], *lent) if n is not None]

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

    async def _source(self, c: httpx.AsyncClient, name: str, staged: Path | None = None) -> tuple[Path, bool]:
        """Where servers load ``name`` from: the copy others loaded it from (vLLM rereads it), else ``staged``
        or a new checked copy of its round's adapter; (path, True when that copy is new)."""
        kept = self.staging.copies.get(name)
        if kept is not None and kept.exists():
            if staged is not None:
                self.staging.drop(staged=staged)
            return kept, False
        return staged or await self._stage(c, name, self.run.round(round_of(name)).adapter), True

    async def _undo(self, rs: Replicas, members: list, name: str, why: str) -> None:
        """Unload ``name`` from ``members`` again; a server where that fails is taken out of service (it must not
        serve with an adapter the others lack)."""
        _, failed = await rs.run(lambda c: unload(c, name), members)
        for u, e in failed:
            self.pool.take_out(u, f"{name} could not be unloaded after a failed {why} ({e}): out of service "
                                  f"until it is brought back to {self.live_model}")

    async def _load_everywhere(self, rs: Replicas, name: str, staged: Path | None = None) -> list:
        """``name`` loaded on every server of ``rs``, or on none (those that loaded it unload it again, then
        DeployError); the members that loaded it now."""
        try:
            have = await rs.names()
        except BaseException:
            if staged is not None:
                self.staging.drop(staged=staged)
            raise
        need = [(u, c) for u, c in rs.members if name not in have[u]]
        if not need:
            if staged is not None:
                self.staging.drop(staged=staged)
            return []
        src, fresh = await self._source(rs.client, name, staged)
        try:
            ok, failed = await rs.run(lambda c: load(c, name, src), need)
        except BaseException:
            if fresh:
                self.staging.drop(staged=src)
            raise
        if failed:
            await self._undo(rs, ok, name, "load")
            if fresh:
                self.staging.drop(staged=src)
            raise DeployError(f"{name} did not load on every model server, so on none: {describe(failed)}", 502)
        if fresh:
            self.staging.keep(name, src)
        return ok

    async def _smoke_everywhere(self, rs: Replicas, name: str, loaded_now: list) -> None:
        _, failed = await rs.run(lambda c: smoke(c, name))
        if failed:
            await self._undo(rs, loaded_now, name, "smoke test")
            if len(loaded_now) == len(rs.members):  # loaded nowhere before
                self.staging.drop(name)
            raise DeployError(describe(failed), 502)

    async def _prune(self, rs: Replicas) -> list[str]:
        """Unload the ``se-r*`` adapters that are neither live nor previous (requests on them finish)."""
        keep = {self.state["live"], self.state["previous"]}
        have = await rs.names()
        gone = sorted({n for names in have.values() for n in names if round_of(n) is not None and n not in keep})
        for n in gone:
            holders = [(u, c) for u, c in rs.members if n in have[u]]
            _, failed = await rs.run(lambda c, n=n: unload(c, n), holders)
            if not failed:
                self.staging.drop(n)
        return gone
