"""The capture gateway: the one way in to the served model (FastAPI + uvicorn, proxying to vLLM with httpx).

Routes (Bearer keys: the *chat key* may use the /v1 routes, the *admin key* everything):
  POST /v1/chat/completions   OpenAI-compatible, streaming (SSE passthrough) or not. ``model`` ``current`` or
                              empty → the live adapter of current.json (the base model when none); any other
                              served name (``base``, ``se-r002``) passes through. Every finished exchange is
                              stored (selfevolve/store.py); the response carries ``X-Conversation-Id`` and
                              ``X-Served-Model``. Headers: ``X-Conversation-Id`` (else ``metadata.conversation_id``,
                              else derived), ``X-Consent-Train: true|false`` (else ``serve.consent_default``).
  GET  /v1/models             vLLM's list (``base`` + loaded adapters) plus ``current``.
  POST /v1/feedback           {"conversation_id", "message_index"?, "rating": "up"|"down", "comment"?}
  POST /admin/adapters/load   {"round": N, "activate"?: true, "path"?: folder inside the run} → deploy
  POST /admin/adapters/unload {"round": N} | {"name": "se-r002"}
  GET|POST /admin/current     current.json + adapters loaded now
  POST /admin/rollback        live ↔ previous
  GET  /                      the chat page (selfevolve/static/chat.html; key from its field or ?key=)
  GET  /health                no key: gateway up, vLLM health
No key or a wrong key: 401; the chat key on /admin: 403. A per-request ``seed`` is dropped before vLLM
(``serve.drop_seed``: it kills the CPU engine); ``user`` and ``metadata`` are kept out of vLLM (the user is
stored only hashed).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .deploy import DeployError, Deployer, adapter_name
from .records import write_atomic, write_json
from .store import ChatStore, StoreError, normalize_messages

STATIC = Path(__file__).resolve().parent / "static"
CHAT_KEY_ENV, ADMIN_KEY_ENV = "SELFEVOLVE_CHAT_KEY", "SELFEVOLVE_ADMIN_KEY"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass
class Keys:
    chat: str
    admin: str
    generated: tuple[str, ...] = ()
    """Which of the two were generated now (to be printed once at start)."""


def resolve_keys(serve_cfg) -> Keys:
    """Environment (SELFEVOLVE_CHAT_KEY / SELFEVOLVE_ADMIN_KEY) wins over ``serve.chat_key`` / ``serve.admin_key``;
    a key set nowhere is generated."""
    generated = []
    chat = os.environ.get(CHAT_KEY_ENV) or serve_cfg.chat_key
    admin = os.environ.get(ADMIN_KEY_ENV) or serve_cfg.admin_key
    if not chat:
        chat, generated = "sk-chat-" + secrets.token_urlsafe(24), generated + ["chat"]
    if not admin:
        admin, generated = "sk-admin-" + secrets.token_urlsafe(24), generated + ["admin"]
    if hmac.compare_digest(chat, admin):
        raise ValueError("the chat key and the admin key must differ")
    return Keys(chat, admin, tuple(generated))


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


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


def create_app(*, store: ChatStore, deployer: Deployer, vllm_url: str, vllm_headers: dict, keys: Keys,
               consent_default: bool = True, drop_seed: bool = True, request_timeout_s: float = 600.0,
               restore_on_start: bool = True, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The gateway app. ``deployer`` routes ``current``; ``store`` captures; vLLM is reached at ``vllm_url``
    (``transport``: tests put an in-process stub of the vLLM API there)."""
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["http"] = httpx.AsyncClient(
            base_url=vllm_url.rstrip("/"), headers=vllm_headers,
            timeout=httpx.Timeout(request_timeout_s, connect=10.0, pool=60.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64), transport=transport)
        try:
            if restore_on_start and (deployer.state["live"] or deployer.state["previous"]):
                state["restore"] = await deployer.restore()
            yield
        finally:
            await state["http"].aclose()

    app = FastAPI(title="selfevolve gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.deployer, app.state.keys = store, deployer, keys

    def chat_auth(request: Request) -> str:
        key = _bearer(request)
        if key and hmac.compare_digest(key, keys.admin):
            return key
        if key and hmac.compare_digest(key, keys.chat):
            return key
        raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})

    def admin_auth(request: Request) -> str:
        key = _bearer(request)
        if key and hmac.compare_digest(key, keys.admin):
            return key
        if key and hmac.compare_digest(key, keys.chat):
            raise HTTPException(403, "the chat key cannot use admin routes")
        raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})

    async def json_body(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "request body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "request body must be a JSON object")
        return body

    def upstream_down(e: Exception) -> JSONResponse:
        return JSONResponse({"error": {"message": f"model server unavailable: {type(e).__name__}",
                                       "type": "upstream_error", "code": 502}}, status_code=502)

    # ------------------------------------------------------------ public

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    @app.get("/health")
    async def health():
        try:
            r = await state["http"].get("/health", timeout=5.0)
            up = r.status_code == 200
        except httpx.HTTPError:
            up = False
        return JSONResponse({"status": "ok" if up else "degraded", "vllm": up, "model": deployer.live_model},
                            status_code=200 if up else 503)

    # ------------------------------------------------------------ chat key

    @app.get("/v1/models")
    async def models(_key: str = Depends(chat_auth)):
        try:
            r = await state["http"].get("/v1/models")
        except httpx.HTTPError as e:
            return upstream_down(e)
        if r.status_code != 200:
            return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))
        body = r.json()
        body.setdefault("data", []).append({"id": "current", "object": "model", "created": int(time.time()),
                                            "owned_by": "selfevolve", "root": deployer.live_model, "parent": None})
        return body

    @app.post("/v1/chat/completions")
    async def chat(request: Request, api_key: str = Depends(chat_auth)):
        body = await json_body(request)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise HTTPException(400, "'messages' must be a non-empty list")
        requested = body.get("model") or "current"
        served = deployer.live_model if requested == "current" else str(requested)
        body["model"] = served
        if drop_seed:
            body.pop("seed", None)
        metadata = body.pop("metadata", None)
        user = body.pop("user", None)
        consent_h = request.headers.get("x-consent-train")
        if consent_h is None:
            consent = consent_default
        elif consent_h.strip().lower() in TRUE:
            consent = True
        elif consent_h.strip().lower() in FALSE:
            consent = False
        else:
            raise HTTPException(400, "X-Consent-Train must be true or false")
        explicit = request.headers.get("x-conversation-id") or (
            metadata.get("conversation_id") if isinstance(metadata, dict) else None)
        messages = normalize_messages(body["messages"])
        user_hash = store.hash_user(str(user) if user else None, api_key)
        cid = await asyncio.to_thread(store.resolve_id, user_hash, messages, explicit)
        out_headers = {"X-Conversation-Id": cid, "X-Served-Model": served}
        started = time.time()

        def save(answer: str, finish: str | None, stream: bool) -> int:
            return store.record_exchange(cid, user_hash, messages, answer, served, consent, requested_model=requested,
                                         finish_reason=finish or "", stream=stream, started_at=started)

        http: httpx.AsyncClient = state["http"]
        if not body.get("stream"):
            try:
                r = await http.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as e:
                return upstream_down(e)
            if r.status_code == 200:
                try:
                    choice = r.json()["choices"][0]
                    answer, finish = (choice.get("message") or {}).get("content") or "", choice.get("finish_reason")
                except (ValueError, KeyError, IndexError, TypeError):
                    answer, finish = None, None
                if answer is not None:
                    await asyncio.to_thread(save, answer, finish, False)
            return Response(r.content, r.status_code, media_type=r.headers.get("content-type"), headers=out_headers)

        try:
            upstream = await http.send(http.build_request("POST", "/v1/chat/completions", json=body), stream=True)
        except httpx.HTTPError as e:
            return upstream_down(e)
        if upstream.status_code != 200:
            content = await upstream.aread()
            await upstream.aclose()
            return Response(content, upstream.status_code, media_type=upstream.headers.get("content-type"),
                            headers=out_headers)

        async def relay():
            capture, saved = _SSECapture(), False
            try:
                async for chunk in upstream.aiter_bytes():
                    # store before the chunk that ends the stream goes out: a client that saw [DONE] finds it stored
                    if capture.feed(chunk) and not saved and capture.finish is not None:
                        await asyncio.to_thread(save, capture.answer, capture.finish, True)
                        saved = True
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream",
                                 headers={**out_headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/feedback")
    async def feedback(request: Request, _key: str = Depends(chat_auth)):
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
            return await asyncio.to_thread(store.add_feedback, cid, rating, index, comment[:4000])
        except StoreError as e:
            raise HTTPException(e.status, str(e)) from None

    # ------------------------------------------------------------ admin key

    async def admin_op(coro):
        try:
            return await coro
        except DeployError as e:
            raise HTTPException(e.status, str(e)) from None
        except httpx.HTTPError as e:
            raise HTTPException(502, f"model server error: {type(e).__name__}: {e}") from None

    @app.post("/admin/adapters/load")
    async def load(request: Request, _key: str = Depends(admin_auth)):
        body = await json_body(request)
        rnd, activate, path = body.get("round"), body.get("activate", True), body.get("path")
        if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd <= 0:
            raise HTTPException(400, "'round' must be a positive integer")
        if not isinstance(activate, bool) or (path is not None and not isinstance(path, str)):
            raise HTTPException(400, "'activate' must be a boolean and 'path' a string")
        return await admin_op(deployer.deploy(rnd, path=path, activate=activate))

    @app.post("/admin/adapters/unload")
    async def unload(request: Request, _key: str = Depends(admin_auth)):
        body = await json_body(request)
        name = body.get("name")
        if name is None and isinstance(body.get("round"), int) and not isinstance(body.get("round"), bool):
            name = adapter_name(body["round"])
        if not isinstance(name, str) or not name:
            raise HTTPException(400, "give 'round' (int) or 'name' (str)")
        return await admin_op(deployer.unload(name))

    @app.api_route("/admin/current", methods=["GET", "POST"])
    async def current(_key: str = Depends(admin_auth)):
        loaded = await admin_op(deployer.loaded())
        return {**deployer.public_state(), "history": deployer.state["history"], "loaded": loaded,
                "restore": state.get("restore")}

    @app.post("/admin/rollback")
    async def rollback(_key: str = Depends(admin_auth)):
        return await admin_op(deployer.rollback())

    return app


# ---------------------------------------------------------------- running it

def _announce(run, host: str, port: int, admin_key: str) -> None:
    """Tell `selfevolve iterate` of this run where the gateway is and how to deploy to it: serve.json, and the
    admin key in a file only this user can read (created 0600, never world-readable even for an instant)."""
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    write_atomic(run.admin_key, admin_key + "\n", mode=0o600)
    write_json(run.serve_info, {"url": f"http://{local}:{port}", "pid": os.getpid(),
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def serve(cfg, port: int | None = None, echo=print) -> None:
    """``selfevolve serve``: vLLM on 127.0.0.1:serve.vllm_port, then the gateway on serve.host:port (foreground).
    Ctrl-C (or SIGTERM) stops the gateway, then vLLM."""
    import signal

    import uvicorn

    from .layout import RunLayout
    from .serve import VLLMServer

    run = RunLayout.of(cfg.run.root, cfg.run.name)
    run.dir.mkdir(parents=True, exist_ok=True)
    keys = resolve_keys(cfg.serve)
    port = port or cfg.serve.port
    vllm = VLLMServer.from_config(cfg, log_path=run.vllm_log)
    prev_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    store = None
    try:
        echo(f"starting vLLM ({cfg.model.path}) on 127.0.0.1:{vllm.port}, log {run.vllm_log} ...")
        vllm.start()
        vllm.wait_ready(cfg.serve.startup_timeout_s)
        store = ChatStore(run.chats_db)
        deployer = Deployer(run, vllm.url, vllm.headers, max_rank=cfg.lora_slots.max_rank)
        app = create_app(store=store, deployer=deployer, vllm_url=vllm.url, vllm_headers=vllm.headers, keys=keys,
                         consent_default=cfg.serve.consent_default, drop_seed=cfg.serve.drop_seed,
                         request_timeout_s=cfg.serve.request_timeout_s)
        for which in keys.generated:
            echo(f"generated {which} key (set {CHAT_KEY_ENV if which == 'chat' else ADMIN_KEY_ENV} to keep one): "
                 f"{keys.chat if which == 'chat' else keys.admin}")
        echo(f"gateway on http://{cfg.serve.host}:{port}  (chat page: http://{cfg.serve.host}:{port}/?key=<chat key>)"
             f"  live: {deployer.live_model}  captures: {run.chats_db}")
        _announce(run, cfg.serve.host, port, keys.admin)
        uvicorn.Server(uvicorn.Config(app, host=cfg.serve.host, port=port, log_level="warning",
                                      access_log=False, lifespan="on")).run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, prev_term)
        run.serve_info.unlink(missing_ok=True)
        echo("stopping vLLM ...")
        vllm.stop()
        if store is not None:
            store.close()
