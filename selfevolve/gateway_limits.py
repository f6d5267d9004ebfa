"""What the gateway refuses before any work is done for a request: bodies too large (413), JSON that is not a
plain object, nests too deep, or holds what cannot be stored or forwarded (400), chat requests whose fields the
gateway reads have the wrong type or could not go back in a response header (400), and callers over their rate,
concurrency or daily quota (429 with ``Retry-After``).

Why here and not later: every byte the gateway accepts is parsed, forwarded to vLLM and stored in SQLite. A
100 MB body, JSON nested 100,000 deep (``RecursionError`` in the parser or in ``json.dumps``), ``NaN`` (httpx
refuses to encode it) or a lone surrogate (UTF-8 cannot encode it: SQLite and httpx fail) each used to become a
500 somewhere in the middle, after the upstream had been opened. Checking them all up front turns them into a
clear 4xx and keeps the rest of the code free of these cases.

Limits are per *identity* (the authenticated credential: one per-user key, or the shared chat key as a whole),
in memory: a restart forgets them. The admin key is never limited.

Also here: a request's messages as the store keeps them (:func:`normalize_messages`: text content, roles).
"""
from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect

from .store import MAX_ID_CHARS


@dataclass(frozen=True)
class GatewayLimits:
    """The limits of one gateway (from ``serve.*``, see selfevolve/config_serve.py for the defaults' reasons)."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_json_depth: int = 32
    rate_per_minute: float = 120.0
    """Sustained requests per minute per identity (token bucket); 0: no rate limit."""
    burst: int = 60
    """Requests an idle identity may send at once before the rate applies."""
    max_concurrent: int = 8
    """Chat requests of one identity in flight at once (a stream counts until it ends); 0: no limit."""
    daily_quota: int = 0
    """Chat requests per identity per UTC day; 0: no quota."""

    @classmethod
    def from_serve(cls, serve_cfg) -> "GatewayLimits":
        return cls(max_body_bytes=serve_cfg.max_body_bytes, max_json_depth=serve_cfg.max_json_depth,
                   rate_per_minute=serve_cfg.rate_limit_per_minute, burst=serve_cfg.rate_limit_burst,
                   max_concurrent=serve_cfg.max_concurrent_per_user, daily_quota=serve_cfg.daily_request_quota)


# ---------------------------------------------------------------- bodies

def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _check_tree(obj, max_depth: int) -> None:
    """Iteratively (no recursion to exhaust): containers nest at most ``max_depth`` deep, every string (keys
    too) is encodable as UTF-8 (no lone surrogates from ``\\ud800`` escapes), every number finite."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, dict | list):
            if depth > max_depth:
                raise HTTPException(400, f"JSON nested deeper than {max_depth} levels")
            if isinstance(o, dict):
                for k, v in o.items():
                    _check_text(k)
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in o)
        elif isinstance(o, str):
            _check_text(o)
        elif isinstance(o, float) and not math.isfinite(o):  # 1e999: httpx refuses to encode it again
            raise HTTPException(400, "JSON number out of range")


def _check_text(s: str) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPException(400, "JSON string holds a lone surrogate (invalid Unicode)") from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be larger than ``max_bytes`` (from
    Content-Length before reading anything, else while reading a chunked body) — never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"request body larger than {max_bytes} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(413, f"request body larger than {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to answer; not a server error to log with a traceback
        raise HTTPException(400, "the client left before sending its whole body") from None
    return b"".join(chunks)


async def read_json_object(request: Request, limits: GatewayLimits) -> dict:
    """The body as a JSON object within ``limits``, else 413 / 400 (never a 500)."""
    raw = await read_body(request, limits.max_body_bytes)
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:  # the C parser's own guard, far below a crash; our limit is checked below
        raise HTTPException(400, f"JSON nested deeper than {limits.max_json_depth} levels") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, integers of > 4300 digits
        raise HTTPException(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "request body must be a JSON object")
    _check_tree(body, limits.max_json_depth)
    return body


# ---------------------------------------------------------------- chat requests

MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
"""Served model names (``base``, ``se-r002``, ``org/model``): the name goes back in ``X-Served-Model``, so only
characters a header carries as they are (a non-Latin-1 or CRLF name made the response itself fail: a 500)."""
ID_RE = re.compile(r"[!-~]{1,%d}" % MAX_ID_CHARS)
"""Client-sent conversation ids: visible ASCII, no spaces or controls (they come back in ``X-Conversation-Id``)."""
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def check_chat_request(body: dict) -> None:
    """The fields the gateway itself reads, with their types (what vLLM alone reads, vLLM checks)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPException(400, "'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise HTTPException(400, f"messages[{i}] must be an object with a 'role' of {', '.join(ROLES)}")
        if not (m.get("content") is None or isinstance(m["content"], str | list)):
            raise HTTPException(400, f"messages[{i}].content must be a string, a list of parts or null")
    model = body.get("model")
    if model not in (None, "") and not (isinstance(model, str) and MODEL_RE.fullmatch(model)):
        raise HTTPException(400, "'model' must be a model name (letters, digits and . _ : / @ + -, at most 200)")
    body.setdefault("stream", False)
    if not isinstance(body["stream"], bool):
        raise HTTPException(400, "'stream' must be a boolean")
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise HTTPException(400, "'metadata' must be an object")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise HTTPException(400, "'user' must be a string")


def content_text(content: Any) -> str:
    """OpenAI message content (a string, None or a list of parts) as plain text: the text parts joined, other
    parts dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Request messages as ``{"role", "content"}`` with text content; ``developer`` is a system message."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        role = str(m.get("role", ""))
        out.append({"role": "system" if role == "developer" else role, "content": content_text(m.get("content"))})
    return out


def conversation_id(request: Request, metadata: dict | None) -> str | None:
    """The client's conversation id (header first), validated: it is echoed in a response header."""
    explicit = request.headers.get("x-conversation-id") or (metadata or {}).get("conversation_id")
    if explicit in (None, ""):
        return None
    if not isinstance(explicit, str) or not ID_RE.fullmatch(explicit):
        raise HTTPException(400, f"a conversation id is 1-{MAX_ID_CHARS} visible ASCII characters (no spaces)")
    return explicit


# ---------------------------------------------------------------- rate, concurrency, quota

def too_many(message: str, retry_after: float) -> HTTPException:
    return HTTPException(429, message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


@dataclass
class _Account:
    tokens: float
    stamp: float
    in_flight: int = 0
    day: int = -1
    used_today: int = 0


@dataclass
class RateLimiter:
    """Per-identity token bucket (``rate_per_minute``, ``burst``), in-flight cap and daily quota. Thread-safe
    (the routes run on the event loop, the counters are also touched from stream cleanups)."""

    limits: GatewayLimits
    clock: Callable[[], float] = time.monotonic
    _accounts: dict[str, _Account] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _account(self, identity: str, now: float) -> _Account:
        acc = self._accounts.get(identity)
        if acc is None:
            acc = self._accounts[identity] = _Account(tokens=float(self.limits.burst), stamp=now)
        return acc

    def admit(self, identity: str) -> None:
        """Count one request of ``identity``; 429 (with Retry-After) when over its rate or its daily quota."""
        lim = self.limits
        if lim.rate_per_minute <= 0 and lim.daily_quota <= 0:
            return
        with self._lock:
            now = self.clock()
            acc = self._account(identity, now)
            if lim.daily_quota > 0:
                wall = time.time()
                day = int(wall // 86400)
                if day != acc.day:
                    acc.day, acc.used_today = day, 0
                if acc.used_today >= lim.daily_quota:
                    raise too_many(f"daily quota of {lim.daily_quota} requests used up", (day + 1) * 86400 - wall)
            if lim.rate_per_minute > 0:
                per_s = lim.rate_per_minute / 60.0
                acc.tokens = min(float(lim.burst), acc.tokens + (now - acc.stamp) * per_s)
                acc.stamp = now
                if acc.tokens < 1.0:
                    raise too_many(f"rate limit of {lim.rate_per_minute:g} requests per minute exceeded",
                                   (1.0 - acc.tokens) / per_s)
                acc.tokens -= 1.0
            acc.used_today += 1

    def enter(self, identity: str) -> "Slot":
        """Hold one of ``identity``'s in-flight places until ``Slot.release``; 429 when all are taken."""
        with self._lock:
            acc = self._account(identity, self.clock())
            if self.limits.max_concurrent > 0 and acc.in_flight >= self.limits.max_concurrent:
                raise too_many(f"more than {self.limits.max_concurrent} requests in flight", 1)
            acc.in_flight += 1
        return Slot(self, identity)

    def in_flight(self, identity: str) -> int:
        with self._lock:
            acc = self._accounts.get(identity)
            return acc.in_flight if acc else 0

    def _leave(self, identity: str) -> None:
        with self._lock:
            self._accounts[identity].in_flight -= 1


class Slot:
    """One in-flight place; ``release`` is idempotent (the stream's cleanup and the route may both call it)."""

    def __init__(self, limiter: RateLimiter | None, identity: str):
        self._limiter, self._identity, self._held = limiter, identity, limiter is not None

    @classmethod
    def unlimited(cls) -> "Slot":
        """A place outside any limit (the admin key's)."""
        return cls(None, "")

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter._leave(self._identity)

