"""The gateway's public and chat-key routes: the chat page, /health, /v1/models, /v1/chat/completions (proxied to
vLLM, every finished exchange captured in the store) and /v1/feedback. See selfevolve/gateway.py for the API.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .gateway_http import Gateway, Principal, _SSECapture, chat_auth, gateway, json_body, upstream_down
from .gateway_engine import is_private
from .gateway_limits import Slot, check_chat_request, conversation_id, normalize_messages
from .gateway_pool import NoUpstream, Upstream
from .store import StoreError

STATIC = Path(__file__).resolve().parent / "static"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

router = APIRouter()
log = logging.getLogger("selfevolve.gateway")


# ------------------------------------------------------------ public

@router.get("/", include_in_schema=False)
async def page():
    return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"),
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


@router.get("/health")
async def health(request: Request):
    """No key. Each vLLM server (by name: addresses stay internal): its state and whether it answers now; 200
    while at least one is in service and answers ("degraded" when not all are), else 503."""
    gw = gateway(request)
    replicas = await gw.pool.report()
    serving = sum(1 for r in replicas if r["answers"] and r["state"] == "up")
    status = "ok" if serving == len(replicas) else "degraded" if serving else "down"
    return JSONResponse({"status": status, "vllm": serving > 0, "model": gw.deployer.live_model,
                         "replicas": replicas}, status_code=200 if serving else 503)


# ------------------------------------------------------------ chat key

@router.get("/v1/models")
async def models(request: Request, _who: Principal = Depends(chat_auth)):
    gw = gateway(request)
    try:
        u, r = await gw.pool.send(lambda c: c.get("/v1/models"))
    except (httpx.HTTPError, NoUpstream) as e:
        return upstream_down(e)
    gw.pool.release(u)
    if r.status_code != 200:
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))
    try:
        body = r.json()
        body["data"] = [m for m in body.get("data") or [] if not is_private(m.get("id"))]
        body["data"].append({"id": "current", "object": "model", "created": int(time.time()),
                                            "owned_by": "selfevolve", "root": gw.deployer.live_model, "parent": None})
    except (ValueError, AttributeError) as e:
        return upstream_down(e)
    return body


@dataclass
class _Exchange:
    """One chat request, validated: the body forwarded to vLLM, and what is captured with the answer."""

    body: dict
    requested: str
    served: str
    consent: bool
    messages: list[dict]
    user_hash: str
    cid: str
    started: float
    saved: bool = False

    @property
    def headers(self) -> dict:
        return {"X-Conversation-Id": _header_safe(self.cid), "X-Served-Model": _header_safe(self.served)}


def _consent(request: Request, default: bool) -> bool:
    """``X-Consent-Train`` (true / false), else the configured default; anything else is a 400."""
    consent_h = request.headers.get("x-consent-train")
    if consent_h is None:
        return default
    if consent_h.strip().lower() in TRUE:
        return True
    if consent_h.strip().lower() in FALSE:
        return False
    raise HTTPException(400, "X-Consent-Train must be true or false")


async def _exchange(request: Request, gw: Gateway, who: Principal) -> _Exchange:
    """Validate the request and route ``current``; the body loses what vLLM must not see (``seed`` when
    ``drop_seed``, ``metadata``, ``user``, ``priority``); the conversation id is resolved under the caller's
    identity. All of this happens before the upstream is opened: a refused request costs vLLM nothing and leaks
    nothing."""
    body = await json_body(request)
    check_chat_request(body)
    requested = body.get("model") or "current"
    served = gw.deployer.live_model if requested == "current" else requested
    if is_private(served):  # a borrowed candidate the gate has not passed: no user may chat with it
        raise HTTPException(404, f"The model `{served}` does not exist.")
    body["model"] = served
    if gw.drop_seed:
        body.pop("seed", None)
    body.pop("priority", None)  # vLLM's scheduling priority is the operator's (serve.borrow_priority), not a client's
    metadata = body.pop("metadata", None)
    body.pop("user", None)  # the identity is the key's; a client-chosen label names nobody
    consent = _consent(request, gw.consent_default)
    explicit = conversation_id(request, metadata)
    messages = normalize_messages(body["messages"])
    try:
        cid = await asyncio.to_thread(gw.store.resolve_id, who.user_hash, messages, explicit)
    except StoreError as e:
        raise _store_refusal(e) from None
    return _Exchange(body, requested, served, consent, messages, who.user_hash, cid, time.time())


def _store_refusal(e: StoreError) -> HTTPException:
    """A store refusal (someone else's conversation id: 403 / 409 ...) is the client's error: never a 5xx."""
    return HTTPException(e.status if 400 <= e.status < 500 else 400, str(e))


def _header_safe(value: str) -> str:
    """A value for a response header: ids and model names are checked ASCII already; percent-escape anything
    else all the same, so that building the response can never fail after the upstream was opened."""
    return value if value.isascii() and value.isprintable() else quote(value, safe="")


def _save(gw: Gateway, ex: _Exchange, answer: str, finish: str | None, stream: bool) -> int:
    """Capture the finished exchange (blocking: run it in a thread)."""
    index = gw.store.record_exchange(ex.cid, ex.user_hash, ex.messages, answer, ex.served, ex.consent,
                                     requested_model=ex.requested, finish_reason=finish or "", stream=stream,
                                     started_at=ex.started)
    ex.saved = True
    return index


async def _unreserve(gw: Gateway, ex: _Exchange | None) -> None:
    """An exchange that ends unrecorded (vLLM refused or failed, the client left) gives back the id the store
    reserved for it; even while the request is being cancelled."""
    if ex is None or ex.saved:
        return
    with anyio.CancelScope(shield=True):
        try:
            await asyncio.to_thread(gw.store.release, ex.cid, ex.user_hash)
        except Exception as e:  # noqa: BLE001 - the reservation expires by itself; the response must not fail
            log.warning("could not release conversation id %s: %s", ex.cid, e)


async def _forward(gw: Gateway, ex: _Exchange) -> Response:
    """A non-streamed request: vLLM's response as it is, captured when it holds an answer. The response is built
    before the capture: a response that could not be sent is never stored (a client retry would store it twice)."""
    try:
        u, r = await gw.pool.send(lambda c: c.post("/v1/chat/completions", json=ex.body))
    except (httpx.HTTPError, NoUpstream) as e:
        return upstream_down(e)
    gw.pool.release(u)
    response = Response(r.content, r.status_code, media_type=r.headers.get("content-type"), headers=ex.headers)
    if r.status_code == 200:
        try:
            choice = r.json()["choices"][0]
            answer, finish = (choice.get("message") or {}).get("content") or "", choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            answer, finish = None, None
        if isinstance(answer, str):
            try:
                await asyncio.to_thread(_save, gw, ex, answer, finish, False)
            except StoreError as e:
                raise _store_refusal(e) from None
    return response


class _Relay(StreamingResponse):
    """vLLM's SSE passed through chunk by chunk, captured as it finishes. However the response ends — finished,
    client gone, cancelled at shutdown, or failed before its first chunk — the upstream response is closed, the
    caller's in-flight place given back and an unrecorded id released: here rather than in the generator's
    ``finally``, which never runs for a generator that was never started."""

    def __init__(self, gw: Gateway, ex: _Exchange, upstream: httpx.Response, slot: Slot, replica: Upstream):
        self.gw, self.ex, self.upstream, self.slot, self.replica = gw, ex, upstream, slot, replica
        super().__init__(self._relay(gw, ex), media_type="text/event-stream",
                         headers={**ex.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _relay(self, gw: Gateway, ex: _Exchange):
        capture, saved = _SSECapture(), False
        async for chunk in self.upstream.aiter_bytes():
            # store before the chunk that ends the stream goes out: a client that saw [DONE] finds it stored
            if capture.feed(chunk) and not saved and capture.finish is not None:
                saved = True
                try:
                    await asyncio.to_thread(_save, gw, ex, capture.answer, capture.finish, True)
                except StoreError as e:  # the answer still reaches the client; the refusal is logged
                    log.warning("streamed exchange %s not stored: %s", ex.cid, e)
            yield chunk

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.body_iterator.aclose()
            finally:
                self.slot.release()
                self.gw.pool.release(self.replica)  # the stream stayed on its replica until now
                await self.upstream.aclose()
                await _unreserve(self.gw, self.ex)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.close()


async def _forward_stream(gw: Gateway, ex: _Exchange, slot: Slot) -> Response:
    """A streamed request; a :class:`_Relay` returned owns ``slot``, the upstream response and its replica."""
    def open_stream(http: httpx.AsyncClient):
        return http.send(http.build_request("POST", "/v1/chat/completions", json=ex.body), stream=True)

    try:
        replica, upstream = await gw.pool.send(open_stream)
    except (httpx.HTTPError, NoUpstream) as e:
        return upstream_down(e)
    relay = None
    try:
        if upstream.status_code == 200:
            relay = _Relay(gw, ex, upstream, slot, replica)
            return relay
        content = await upstream.aread()
        return Response(content, upstream.status_code, media_type=upstream.headers.get("content-type"),
                        headers=ex.headers)
    finally:
        if relay is None:
            gw.pool.release(replica)
            with anyio.CancelScope(shield=True):
                await upstream.aclose()


@router.post("/v1/chat/completions")
async def chat(request: Request, who: Principal = Depends(chat_auth)):
    gw = gateway(request)
    slot = Slot.unlimited() if who.admin else gw.limiter.enter(who.name)
    ex = response = None
    try:
        ex = await _exchange(request, gw, who)
        response = await (_forward_stream(gw, ex, slot) if ex.body["stream"] else _forward(gw, ex))
        return response
    finally:
        if not isinstance(response, _Relay):  # a relay cleans up when its stream ends
            slot.release()
            await _unreserve(gw, ex)


@router.post("/v1/feedback")
async def feedback(request: Request, who: Principal = Depends(chat_auth)):
    gw = gateway(request)
    body = await json_body(request)
    cid, rating = body.get("conversation_id"), body.get("rating")
    index, comment = body.get("message_index"), body.get("comment") or ""
    if not isinstance(cid, str) or not cid:
        raise HTTPException(400, "'conversation_id' must be a non-empty string")
    if not await asyncio.to_thread(_owns, gw, who, cid):  # 404, not 403: another user's ids stay unknown
        raise HTTPException(404, f"unknown conversation {cid!r}")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise HTTPException(400, "'message_index' must be an integer")
    if not isinstance(comment, str):
        raise HTTPException(400, "'comment' must be a string")
    try:
        return await asyncio.to_thread(gw.store.add_feedback, cid, rating, index, comment[:4000])
    except StoreError as e:
        raise _store_refusal(e) from None


def _owns(gw: Gateway, who: Principal, cid: str) -> bool:
    """Whether ``who`` may rate conversation ``cid`` (its owner; the admin key any)."""
    conv = gw.store.get(cid)
    return conv is not None and (who.admin or conv["user_hash"] == who.user_hash)
