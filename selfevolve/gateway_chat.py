"""The gateway's public and chat-key routes: the chat page, /health, /v1/models, /v1/chat/completions (proxied to
vLLM, every finished exchange captured in the store) and /v1/feedback. See selfevolve/gateway.py for the API.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .gateway_http import Gateway, _SSECapture, chat_auth, gateway, json_body, upstream_down
from .store import StoreError

STATIC = Path(__file__).resolve().parent / "static"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

router = APIRouter()


# ------------------------------------------------------------ public

@router.get("/", include_in_schema=False)
async def page():
    return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"),
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


@router.get("/health")
async def health(request: Request):
    gw = gateway(request)
    try:
        r = await gw.http.get("/health", timeout=5.0)
        up = r.status_code == 200
    except httpx.HTTPError:
        up = False
    return JSONResponse({"status": "ok" if up else "degraded", "vllm": up, "model": gw.deployer.live_model},
                        status_code=200 if up else 503)


# ------------------------------------------------------------ chat key

@router.get("/v1/models")
async def models(request: Request, _key: str = Depends(chat_auth)):
    gw = gateway(request)
    try:
        r = await gw.http.get("/v1/models")
    except httpx.HTTPError as e:
        return upstream_down(e)
    if r.status_code != 200:
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))
    body = r.json()
    body.setdefault("data", []).append({"id": "current", "object": "model", "created": int(time.time()),
                                        "owned_by": "selfevolve", "root": gw.deployer.live_model, "parent": None})
    return body


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

    @property
    def headers(self) -> dict:
        return {"X-Conversation-Id": self.cid, "X-Served-Model": self.served}


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


async def _exchange(request: Request, gw: Gateway, api_key: str) -> _Exchange:
    """Validate the request and route ``current``; the body loses what vLLM must not see (``seed`` when
    ``drop_seed``, ``metadata``, ``user``); the conversation id is resolved."""
    body = await json_body(request)
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise HTTPException(400, "'messages' must be a non-empty list")
    requested = body.get("model") or "current"
    served = gw.deployer.live_model if requested == "current" else str(requested)
    body["model"] = served
    if gw.drop_seed:
        body.pop("seed", None)
    metadata = body.pop("metadata", None)
    user = body.pop("user", None)
    consent = _consent(request, gw.consent_default)
    explicit = request.headers.get("x-conversation-id") or (
        metadata.get("conversation_id") if isinstance(metadata, dict) else None)
    messages = normalize_messages(body["messages"])
    user_hash = gw.store.hash_user(str(user) if user else None, api_key)
    cid = await asyncio.to_thread(gw.store.resolve_id, user_hash, messages, explicit)
    return _Exchange(body, requested, served, consent, messages, user_hash, cid, time.time())


def _save(gw: Gateway, ex: _Exchange, answer: str, finish: str | None, stream: bool) -> int:
    """Capture the finished exchange (blocking: run it in a thread)."""
    return gw.store.record_exchange(ex.cid, ex.user_hash, ex.messages, answer, ex.served, ex.consent,
                                    requested_model=ex.requested, finish_reason=finish or "", stream=stream,
                                    started_at=ex.started)


async def _forward(gw: Gateway, ex: _Exchange) -> Response:
    """A non-streamed request: vLLM's response as it is, captured when it holds an answer."""
    try:
        r = await gw.http.post("/v1/chat/completions", json=ex.body)
    except httpx.HTTPError as e:
        return upstream_down(e)
    if r.status_code == 200:
        try:
            choice = r.json()["choices"][0]
            answer, finish = (choice.get("message") or {}).get("content") or "", choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError):
            answer, finish = None, None
        if answer is not None:
            await asyncio.to_thread(_save, gw, ex, answer, finish, False)
    return Response(r.content, r.status_code, media_type=r.headers.get("content-type"), headers=ex.headers)


async def _forward_stream(gw: Gateway, ex: _Exchange) -> Response:
    """A streamed request: vLLM's SSE passed through chunk by chunk, captured as it finishes."""
    http = gw.http
    try:
        upstream = await http.send(http.build_request("POST", "/v1/chat/completions", json=ex.body), stream=True)
    except httpx.HTTPError as e:
        return upstream_down(e)
    if upstream.status_code != 200:
        content = await upstream.aread()
        await upstream.aclose()
        return Response(content, upstream.status_code, media_type=upstream.headers.get("content-type"),
                        headers=ex.headers)

    async def relay():
        capture, saved = _SSECapture(), False
        try:
            async for chunk in upstream.aiter_bytes():
                # store before the chunk that ends the stream goes out: a client that saw [DONE] finds it stored
                if capture.feed(chunk) and not saved and capture.finish is not None:
                    await asyncio.to_thread(_save, gw, ex, capture.answer, capture.finish, True)
                    saved = True
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(relay(), media_type="text/event-stream",
                             headers={**ex.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/chat/completions")
async def chat(request: Request, api_key: str = Depends(chat_auth)):
    gw = gateway(request)
    ex = await _exchange(request, gw, api_key)
    return await (_forward_stream(gw, ex) if ex.body.get("stream") else _forward(gw, ex))


@router.post("/v1/feedback")
async def feedback(request: Request, _key: str = Depends(chat_auth)):
    gw = gateway(request)
    body = await json_body(request)
    cid, rating = body.get("conversation_id"), body.get("rating")
    index, comment = body.get("message_index"), body.get("comment") or ""
    if not isinstance(cid, str) or not cid:
        raise HTTPException(400, "'conversation_id' must be a non-empty string")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise HTTPException(400, "'message_index' must be an integer")
    if not isinstance(comment, str):
        raise HTTPException(400, "'comment' must be a string")
    try:
        return await asyncio.to_thread(gw.store.add_feedback, cid, rating, index, comment[:4000])
    except StoreError as e:
        raise HTTPException(e.status, str(e)) from None
