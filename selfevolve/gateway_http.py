"""What the gateway's routes share: the keys, the state every route reads (:class:`Gateway`), the two Bearer-key
checks, the JSON body and upstream-error helpers, and the SSE reader that captures a streamed answer.

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
from .store import ChatStore


@dataclass
class Keys:
    chat: str
    admin: str
    generated: tuple[str, ...] = ()
    """Which of the two were generated now (to be printed once at start)."""


@dataclass
class Gateway:
    """The state the routes share (``app.state.gateway``): set by ``create_app``, except ``http`` and
    ``restore``, which the app's lifespan sets."""

    store: ChatStore
    """Where every finished exchange and every feedback is captured."""
    deployer: Deployer
    """Routes ``current`` to the live adapter; the admin routes' deploy / unload / rollback."""
    keys: Keys
    consent_default: bool = True
    """Consent-to-train of an exchange without an ``X-Consent-Train`` header."""
    drop_seed: bool = True
    """Remove a per-request ``seed`` before vLLM (it kills the CPU engine)."""
    http: httpx.AsyncClient | None = None
    """The client to vLLM, open while the app runs."""
    restore: dict | None = None
    """What restoring the live / previous adapters at start did (None: nothing to restore)."""


def gateway(request: Request) -> Gateway:
    """The app's shared state, as a route sees it."""
    return request.app.state.gateway


# ---------------------------------------------------------------- keys

def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _unauthorized() -> HTTPException:
    return HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


def chat_auth(request: Request) -> str:
    """Dependency of the /v1 routes: the chat key or the admin key, else 401. Returns the key."""
    keys = gateway(request).keys
    key = _bearer(request)
    if key and hmac.compare_digest(key, keys.admin):
        return key
    if key and hmac.compare_digest(key, keys.chat):
        return key
    raise _unauthorized()


def admin_auth(request: Request) -> str:
    """Dependency of the /admin routes: the admin key, else 403 for the chat key and 401 for anything else."""
    keys = gateway(request).keys
    key = _bearer(request)
    if key and hmac.compare_digest(key, keys.admin):
        return key
    if key and hmac.compare_digest(key, keys.chat):
        raise HTTPException(403, "the chat key cannot use admin routes")
    raise _unauthorized()


# ---------------------------------------------------------------- bodies and upstream errors

async def json_body(request: Request) -> dict:
    """The request's JSON object, else 400."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "request body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "request body must be a JSON object")
    return body


def upstream_down(e: Exception) -> JSONResponse:
    """502 in OpenAI's error shape: vLLM could not be reached."""
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
            for ch in obj.get("choices") or []:
                if ch.get("index", 0) != 0:
                    continue
                content = (ch.get("delta") or {}).get("content")
                if isinstance(content, str):
                    self.parts.append(content)
                if ch.get("finish_reason"):
                    self.finish = ch["finish_reason"]
        return self.done

    @property
    def answer(self) -> str:
        return "".join(self.parts)
