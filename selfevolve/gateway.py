"""The capture gateway: the one way in to the served model (FastAPI + uvicorn, proxying to vLLM with httpx).

Routes (Bearer keys: the shared *chat key* and the *per-user keys* of selfevolve/userkeys.py may use the /v1
routes, the *admin key* everything):
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
No key, a wrong, revoked or non-ASCII key: 401; a chat key on /admin: 403. A per-request ``seed`` is dropped
before vLLM (``serve.drop_seed``: it kills the CPU engine); ``user`` and ``metadata`` are kept out of vLLM.

Identity is the key, never the request: each per-user key is its user (``selfevolve keys issue <user>`` prints
one, ``keys revoke <user>`` ends it; the running gateway re-reads the key file), the shared chat key is one
identity for all who hold it (give each user a key of their own on a public deployment). Conversations are
stored under the identity's salted hash; a client's ``user`` field is dropped (it used to choose the identity:
anyone could write into anyone's conversations). A conversation id that belongs to another identity is refused
(403, before vLLM is called); feedback on one is a 404.

Hostile input never costs an upstream connection nor gets a 5xx (selfevolve/gateway_limits.py, checked before
vLLM is called): a body over ``serve.max_body_bytes`` → 413; bad JSON, JSON deeper than ``serve.max_json_depth``,
NaN, lone surrogates, wrong field types, a ``model`` or conversation id that cannot go back in a header → 400;
over the identity's rate (``serve.rate_limit_per_minute`` / ``rate_limit_burst``), in-flight cap
(``serve.max_concurrent_per_user``) or daily quota (``serve.daily_request_quota``) → 429 with ``Retry-After``.
Every path closes the upstream response (a stream's too, however it ends).

This module builds the app (:func:`create_app`) and runs it with vLLM (:func:`serve`); the routes are in
selfevolve/gateway_chat.py and selfevolve/gateway_admin.py, what they share in selfevolve/gateway_http.py.
"""
from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import signal
import time

import httpx
import uvicorn
from fastapi import FastAPI

from . import gateway_admin, gateway_chat
from .deploy import Deployer
from .gateway_http import Gateway, Keys, _SSECapture
from .gateway_limits import GatewayLimits
from .layout import RunLayout
from .records import write_atomic, write_json
from .serve import VLLMServer
from .store import ChatStore
from .userkeys import UserKeys

__all__ = ["CHAT_KEY_ENV", "ADMIN_KEY_ENV", "Keys", "resolve_keys", "create_app", "serve", "_SSECapture"]

CHAT_KEY_ENV, ADMIN_KEY_ENV = "SELFEVOLVE_CHAT_KEY", "SELFEVOLVE_ADMIN_KEY"


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


def create_app(*, store: ChatStore, deployer: Deployer, vllm_url: str, vllm_headers: dict, keys: Keys,
               consent_default: bool = False, drop_seed: bool = True, request_timeout_s: float = 600.0,
               restore_on_start: bool = True, limits: GatewayLimits | None = None,
               user_keys: UserKeys | None = None, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The gateway app. ``deployer`` routes ``current``; ``store`` captures; vLLM is reached at ``vllm_url``
    (``transport``: tests put an in-process stub of the vLLM API there); ``limits``: GatewayLimits() when None;
    ``user_keys``: the per-user keys accepted besides the shared chat key."""
    gw = Gateway(store, deployer, keys, consent_default=consent_default, drop_seed=drop_seed,
                 limits=limits or GatewayLimits(), user_keys=user_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        gw.http = httpx.AsyncClient(
            base_url=vllm_url.rstrip("/"), headers=vllm_headers,
            timeout=httpx.Timeout(request_timeout_s, connect=10.0, pool=60.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64), transport=transport)
        try:
            if restore_on_start and (deployer.state["live"] or deployer.state["previous"]):
                gw.restore = await deployer.restore()
            yield
        finally:
            await gw.http.aclose()

    app = FastAPI(title="selfevolve gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gw
    app.state.store, app.state.deployer, app.state.keys = store, deployer, keys
    app.include_router(gateway_chat.router)
    app.include_router(gateway_admin.router)
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
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    run.dir.mkdir(parents=True, exist_ok=True)
    keys = resolve_keys(cfg.serve)
    user_keys = UserKeys(run.user_keys, warn=echo)  # an unsafe key file stops us before vLLM starts
    port = port or cfg.serve.port
    vllm = VLLMServer.from_config(cfg, log_path=run.vllm_log)
    prev_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    store = None
    try:
        echo(f"starting vLLM ({cfg.model.path}) on 127.0.0.1:{vllm.port}, log {run.vllm_log} ...")
        vllm.start()
        vllm.wait_ready(cfg.serve.startup_timeout_s)
        store = ChatStore(run.chats_db)
        deployer = Deployer(run, vllm.url, vllm.headers, max_rank=cfg.lora_slots.max_rank, base_model=cfg.model.path)
        app = create_app(store=store, deployer=deployer, vllm_url=vllm.url, vllm_headers=vllm.headers, keys=keys,
                         consent_default=cfg.serve.consent_default, drop_seed=cfg.serve.drop_seed,
                         request_timeout_s=cfg.serve.request_timeout_s, limits=GatewayLimits.from_serve(cfg.serve),
                         user_keys=user_keys)
        for which in keys.generated:
            echo(f"generated {which} key (set {CHAT_KEY_ENV if which == 'chat' else ADMIN_KEY_ENV} to keep one): "
                 f"{keys.chat if which == 'chat' else keys.admin}")
        echo(f"gateway on http://{cfg.serve.host}:{port}  (chat page: http://{cfg.serve.host}:{port}/?key=<chat key>)"
             f"  live: {deployer.live_model}  captures: {run.chats_db}  per-user keys: {len(user_keys)}")
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
