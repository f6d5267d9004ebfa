"""What the gateway's routes share: the keys, the state every route reads (:class:`Gateway`), the two Bearer-key
checks (which also tell *who* is asking: :class:`Principal`), the JSON body and upstream-error helpers, and the
SSE reader that captures a streamed answer.

The routes themselves are in selfevolve/gateway_chat.py (chat key) and selfevolve/gateway_admin.py (admin key);
selfevolve/gateway.py builds the app from them.
"""
from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

import httpx
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from .deploy import Deployer
from .gateway_limits import GatewayLimits, RateLimiter, read_json_object
from .gateway_pool import NoUpstream, UpstreamPool
from .store import ChatStore
from .userkeys import UserKeys


@dataclass
class Keys:
    chat: str
    admin: str
    generated: tuple[str, ...] = ()
    """Which of the two were generated now (to be printed once at start)."""


@dataclass
class Gateway:
    """The state the routes share (``app.state.gateway``): set by ``create_app``, except ``restore``, which the
    app's lifespan sets."""

    store: ChatStore
    """Where every finished exchange and every feedback is captured."""
    deployer: Deployer
    """Routes ``current`` to the live adapter; the admin routes' deploy / unload / rollback."""
    keys: Keys
    consent_default: bool = False
    """Consent-to-train of an exchange without an ``X-Consent-Train`` header."""
    drop_seed: bool = True
    """Remove a per-request ``seed`` before vLLM (it kills the CPU engine)."""
    borrow_priority: int = 0
    """vLLM priority of the engine routes' requests (iterate's), behind chats' 0; 0: none sent."""
    limits: GatewayLimits = GatewayLimits()
    """Body size, JSON depth, per-identity rate / concurrency / quota (selfevolve/gateway_limits.py)."""
    user_keys: UserKeys | None = None
    """Per-user chat keys (selfevolve/userkeys.py); None: only the shared chat key and the admin key."""
    limiter: RateLimiter | None = None
    """Set from ``limits`` when None."""
    pool: UpstreamPool | None = None
    """The vLLM servers (replicas) requests go to (selfevolve/gateway_pool.py); their clients are open while
    the app runs."""
    restore: dict | None = None
    """What restoring the live / previous adapters at start did (None: nothing to restore)."""

    def __post_init__(self):
        if self.limiter is None:
            self.limiter = RateLimiter(self.limits)

    @property
    def http(self) -> httpx.AsyncClient:
        """A client to some vLLM server in service, for a one-off call (raises NoUpstream when none is):
        proxied requests go through ``pool.send``, which spreads them and retries unsent ones."""
        return self.pool.client()


@dataclass(frozen=True)
class Principal:
    """Who sent a request, from its key alone (a request's ``user`` field never changes it)."""

    name: str
    """``admin``, ``chat-key`` (everyone holding the shared chat key is one identity) or ``user:<name>``."""
    user_hash: str
    """The salted hash the store files this identity's conversations under."""
    admin: bool = False


def gateway(request: Request) -> Gateway:
    """The app's shared state, as a route sees it."""
    return request.app.state.gateway


# ---------------------------------------------------------------- keys

def _bearer(request: Request) -> str | None:
    """The Bearer key, or None. A key with any non-ASCII character is no key at all (``hmac.compare_digest``
    raises on non-ASCII text: that was a 500; Starlette hands header bytes over as Latin-1)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value and value.isascii() else None


def _unauthorized() -> HTTPException:
    return HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


def _principal(gw: Gateway, key: str | None) -> Principal | None:
    if not key:
        return None
    if hmac.compare_digest(key, gw.keys.admin):
        return Principal("admin", gw.store.hash_user(None, key), admin=True)
    if hmac.compare_digest(key, gw.keys.chat):
        return Principal("chat-key", gw.store.hash_user(None, key))
    user = gw.user_keys.user_for(key) if gw.user_keys is not None else None
    if user is not None:
        # "userkey:" keeps these hashes apart from those of a client-chosen ``user`` field in older captures
        return Principal(f"user:{user}", gw.store.hash_user(None, f"userkey:{user}"))
    return None


def chat_auth(request: Request) -> Principal:
    """Dependency of the /v1 routes: the admin key, the shared chat key or a per-user key, else 401; then the
    identity's rate limit and daily quota (429; the admin key is not limited)."""
    gw = gateway(request)
    who = _principal(gw, _bearer(request))
    if who is None:
        raise _unauthorized()
    if not who.admin:
        gw.limiter.admit(who.name)
    return who


def admin_auth(request: Request) -> Principal:
    """Dependency of the /admin routes: the admin key, else 403 for a chat key and 401 for anything else."""
    gw = gateway(request)
    who = _principal(gw, _bearer(request))
    if who is None:
        raise _unauthorized()
    if not who.admin:
        raise HTTPException(403, "the chat key cannot use admin routes")
    return who


# ---------------------------------------------------------------- bodies and upstream errors

async def json_body(request: Request) -> dict:
    """The request's JSON object within the gateway's limits, else 413 / 400."""
    return await read_json_object(request, gateway(request).limits)


def upstream_down(e: Exception) -> JSONResponse:
    """In OpenAI's error shape: 503 when no vLLM server is in service (the message says why each is not) or the
    one chosen was too busy to take the request (a timeout before it was sent): the client may retry later; 502
    when the one chosen failed."""
    if isinstance(e, NoUpstream):
        return JSONResponse({"error": {"message": str(e), "type": "upstream_unavailable", "code": 503}},
                            status_code=503, headers={"Retry-After": "5"})
    if isinstance(e, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        return JSONResponse({"error": {"message": f"model server busy: {type(e).__name__}; retry later",
                                       "type": "upstream_busy", "code": 503}},
                            status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"error": {"message": f"model server unavailable: {type(e).__name__}",
                                   "type": "upstream_error", "code": 502}}, status_code=502)


class _SSECapture:
    """Follows a chat-completions SSE stream (bytes, split anywhere) and collects choice 0's answer."""

    def __init__(self):
        self.buf = b""
        self.parts: list[str] = []
        self.finish: str | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bool:
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            choices = obj.get("choices") if isinstance(obj, dict) else None
            for ch in choices if isinstance(choices, list) else []:
                if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                    continue
                delta = ch.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str):
                    self.parts.append(content)
                if ch.get("finish_reason"):
                    self.finish = ch["finish_reason"]
        return self.done

    @property
    def answer(self) -> str:
        return "".join(self.parts)
