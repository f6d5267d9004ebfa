"""The vLLM servers behind the gateway (its *replicas*): a client to each, which of them are in service, and which
one a request goes to.

A replica is in one of three states:
  ``up``    in service: it gets requests and deploys;
  ``down``  unreachable (a connection failed, or ``/health`` did not answer 200);
  ``out``   reachable, but not (known to be) on the live adapter: a deploy could not be undone on it, it lost the
            live adapter or a round's lent candidate (a restarted server), or it has not been brought to it yet.
Only ``up`` replicas get traffic. A replica that is not up comes back only through the deployer's ``sync``
(selfevolve/deploy.py): the live, lent (and previous) adapters loaded, the live one smoke-tested, stale ones
unloaded: a replica is never put back serving another version than the others.

Choice: the up replica with the fewest requests in flight (a stream counts until it ends), ties to the one that
served fewest. A request whose connection could not be opened (nothing was sent: ``ConnectError``,
``ConnectTimeout``, ``PoolTimeout``), or whose connection was lost before any response from a server that is
gone or going (a kept-alive connection to a killed server; its ``/health`` no longer answers 200), marks its
replica down and is retried once on another; a
request that reached a live replica stays there (a stream is never moved). No replica up → :class:`NoUpstream`
(503).
A watcher (:meth:`UpstreamPool.watch`) checks every replica every ``serve.health_interval_s``: ``GET /health``, and
for an up replica that the live adapter and any lent to a round are still in its ``/v1/models``.
A timeout (connect, pool, health probe) is a busy server, not a gone one: it takes a replica out only while another
is in service. The last one stays in (out of service it could only answer 503s); the request that timed out gets
a 503 with ``Retry-After`` (scripts/bench_borrow.py saw a round on a 2-core machine take its only server out).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

log = logging.getLogger("selfevolve.gateway")

UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Errors raised before any byte of the request reached the replica: safe to retry on another."""
DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
"""A connection lost before any response: retried on another replica only when its server is gone (a new
connection to it fails: a keep-alive connection to a killed server ends so), since one that lives may have
taken the request."""
UP, DOWN, OUT = "up", "down", "out"
KEEPALIVE_S = 2.0
"""How long a pooled connection to a replica may stay idle before the gateway drops it. vLLM's server closes idle
connections after 5 s (``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``), httpx's default is also 5 s: a request sent on a
connection the server is closing at that instant fails with a ReadError (a 502 seen once in CI during a hot swap).
Dropping it first leaves the server's timer 3 s of margin, since ours starts after the response is read."""


class NoUpstream(RuntimeError):
    """No replica is in service (the message says why each is not)."""


@dataclass(eq=False)
class Upstream:
    """One vLLM server the gateway may use."""

    name: str
    """``vllm-0``, ``vllm-1``...: what logs, errors and ``/health`` call it (its address stays internal)."""
    url: str
    headers: dict = field(default_factory=dict)
    """The internal key of this server (each started server has its own)."""
    transport: httpx.AsyncBaseTransport | None = None
    """Tests: an in-process stub of the vLLM API."""
    state: str = UP
    error: str | None = None
    """Why it is not up (None while up)."""
    in_flight: int = 0
    served: int = 0
    """Requests sent to it (chat, models) since the gateway started."""
    client: httpx.AsyncClient | None = None
    """The pooled client of proxied requests, open while the app runs."""

    @property
    def in_service(self) -> bool:
        return self.state == UP

    def new_client(self, timeout: float | httpx.Timeout, **kw) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url.rstrip("/"), headers=self.headers, timeout=timeout,
                                 transport=self.transport, **kw)

    def status(self) -> dict:
        return {"name": self.name, "state": self.state, "in_flight": self.in_flight, "requests": self.served,
                **({"error": self.error} if self.error else {})}


class UpstreamPool:
    """The replicas of one gateway (one for a single server)."""

    def __init__(self, upstreams: list[Upstream]):
        if not upstreams:
            raise ValueError("an upstream pool needs at least one vLLM server")
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must differ: {names}")
        self.upstreams = list(upstreams)

    @classmethod
    def of(cls, urls: list[str], headers: list[dict] | dict | None = None,
           transports: list | httpx.AsyncBaseTransport | None = None) -> "UpstreamPool":
        """``vllm-0``... for ``urls``; ``headers`` / ``transports``: one for all, or one each."""
        n = len(urls)
        hs = headers if isinstance(headers, list) else [dict(headers or {})] * n
        ts = transports if isinstance(transports, list) else [transports] * n
        if len(hs) != n or len(ts) != n:
            raise ValueError("give one header dict and one transport per upstream url")
        return cls([Upstream(f"vllm-{i}", u, h, t) for i, (u, h, t) in enumerate(zip(urls, hs, ts))])

    # ------------------------------------------------------------ clients

    async def open(self, request_timeout_s: float = 600.0) -> None:
        for u in self.upstreams:
            u.client = u.new_client(httpx.Timeout(request_timeout_s, connect=10.0, pool=60.0),
                                    limits=httpx.Limits(max_connections=512, max_keepalive_connections=64,
                                                        keepalive_expiry=KEEPALIVE_S))

    async def aclose(self) -> None:
        for u in self.upstreams:
            if u.client is not None:
                await u.client.aclose()
                u.client = None

    def client(self) -> httpx.AsyncClient:
        """A client to some replica in service (for one-off calls that need no retry); raises NoUpstream."""
        u = self.pick()
        if u.client is None:
            raise NoUpstream("the gateway is not running (its upstream clients are closed)")
        return u.client

    # ------------------------------------------------------------ choice

    def in_service(self) -> list[Upstream]:
        return [u for u in self.upstreams if u.in_service]

    def why_none(self) -> str:
        return "; ".join(f"{u.name} {u.state}" + (f" ({u.error})" if u.error else "") for u in self.upstreams)

    def pick(self, exclude: tuple | list = ()) -> Upstream:
        ready = [u for u in self.in_service() if u not in exclude]
        if not ready:
            raise NoUpstream(f"no model server in service: {self.why_none()}")
        return min(ready, key=lambda u: (u.in_flight, u.served))

    def acquire(self, exclude: tuple | list = ()) -> Upstream:
        u = self.pick(exclude)
        u.in_flight += 1
        u.served += 1
        return u

    @staticmethod
    def release(u: Upstream) -> None:
        u.in_flight = max(0, u.in_flight - 1)

    async def send(self, call: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
                   ) -> tuple[Upstream, httpx.Response]:
        """``call`` on a chosen replica's client; once more on another after an error before anything was sent,
        or a lost connection to a server that is gone. The replica stays acquired: :meth:`release` it when its
        response is done."""
        tried: list[Upstream] = []
        while True:
            u = self.acquire(exclude=tried)  # NoUpstream when none (else) is up
            try:
                return u, await call(u.client)
            except (*UNSENT, *DROPPED) as e:
                self.release(u)
                if isinstance(e, DROPPED) and not await self._gone(u):
                    raise  # it lives: it may have taken the request, which must not run twice
                if self._only_slow(u, e):
                    raise  # this request fails (503, retry later); the server stays in service
                self.take_out(u, f"unreachable: {type(e).__name__}: {e}", DOWN)
                tried.append(u)
                if len(tried) > 1:
                    raise
            except BaseException:
                self.release(u)
                raise

    def _only_slow(self, u: Upstream, e: Exception) -> bool:
        """A timeout (a connection or a pool slot that took too long: a busy machine) on the only replica in
        service. Out of service it could only answer 503s, so it stays in; with another in service it is taken out
        as an unreachable one is, and the request goes there."""
        if isinstance(e, httpx.TimeoutException) and self.in_service() == [u]:
            log.warning("model server %s is slow (%s); kept in service: it is the only one", u.name,
                        type(e).__name__)
            return True
        return False

    @staticmethod
    async def _gone(u: Upstream, timeout: float = 2.0) -> bool:
        """Whether ``u``'s server is gone or going: a new connection to it cannot be opened, is dropped too, or
        ``/health`` does not answer 200. A server killed with its process group dies one process at a time: its
        engine may be gone while its HTTP server still accepts for a moment (a 502 seen once in CI), and such a
        server cannot have run the request. Only a healthy answer, or a timeout (a busy server), means it lives."""
        async with u.new_client(timeout) as c:
            try:
                return (await c.get("/health")).status_code != 200
            except (*UNSENT, *DROPPED):
                return True
            except httpx.HTTPError:
                return False

    # ------------------------------------------------------------ states

    def take_out(self, u: Upstream, reason: str, state: str = OUT) -> None:
        """Stop sending requests to ``u`` (requests already on it finish); logged once per change."""
        if u.state != state or u.error != reason:
            log.error("model server %s taken out of service (%s): %s", u.name, state, reason)
        u.state, u.error = state, reason

    def mark_up(self, u: Upstream) -> None:
        if u.state != UP:
            log.warning("model server %s back in service", u.name)
        u.state, u.error = UP, None

    def status(self) -> list[dict]:
        return [u.status() for u in self.upstreams]

    async def report(self, timeout: float = 5.0) -> list[dict]:
        """Each replica's :meth:`Upstream.status`, and ``answers``: whether its ``/health`` answers 200 now."""
        async def answers(u: Upstream) -> bool:
            try:
                return (await u.client.get("/health", timeout=timeout)).status_code == 200
            except (httpx.HTTPError, AttributeError):  # AttributeError: no client (the app is not running)
                return False

        up = await asyncio.gather(*(answers(u) for u in self.upstreams))
        return [{**u.status(), "answers": ok} for u, ok in zip(self.upstreams, up)]

    # ------------------------------------------------------------ health

    async def probe(self, u: Upstream, need: list[str], timeout: float = 5.0) -> tuple[str, str] | None:
        """(state, why) when ``u`` should not be up now; None: healthy (and, when ``u`` is up, the adapters
        ``need`` names, the live one and any lent to a round, are loaded on it)."""
        client = u.client or u.new_client(timeout)
        try:
            r = await client.get("/health", timeout=timeout)
            if r.status_code != 200:
                return DOWN, f"/health answered {r.status_code}"
            if u.in_service and need:
                m = await client.get("/v1/models", timeout=timeout)
                have = {d.get("id") for d in m.json().get("data", [])} if m.status_code == 200 else set()
                if missing := [n for n in need if n not in have]:
                    return OUT, f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not loaded on it " \
                                "(a restarted server?)"
            return None
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            if self._only_slow(u, e):
                return None
            return DOWN, f"unreachable: {type(e).__name__}: {e}"
        finally:
            if client is not u.client:
                await client.aclose()

    async def check(self, need: list[str], sync: Callable[[Upstream], Awaitable[bool]]) -> None:
        """One health round: take out what fails or lacks an adapter of ``need``, bring back (through ``sync``)
        what answers again."""
        async def one(u: Upstream) -> None:
            bad = await self.probe(u, need)
            if bad is not None:
                self.take_out(u, bad[1], bad[0])
            elif not u.in_service:
                await sync(u)

        await asyncio.gather(*(one(u) for u in self.upstreams))

    async def watch(self, interval_s: float, need: Callable[[], list[str]],
                    sync: Callable[[Upstream], Awaitable[bool]]) -> None:
        """:meth:`check` every ``interval_s`` until cancelled; a failing round is logged, never fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check(need(), sync)
            except Exception as e:  # noqa: BLE001 - the watcher must outlive any one bad round
                log.warning("health check round failed: %s: %s", type(e).__name__, e)
