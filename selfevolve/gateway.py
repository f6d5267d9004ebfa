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
  GET  /health                no key: gateway up, each vLLM server's state (200 while one serves, else 503)
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

Replicas: requests are spread over the vLLM servers of ``deployer.pool`` (``serve.replicas`` started here, or
``serve.upstreams`` running elsewhere; selfevolve/gateway_pool.py): fewest in flight first, a stream stays on its
server, a request that could not even connect is retried once on another, no server in service → 503. Deploy,
rollback and restore run on all of them or none (selfevolve/deploy.py); capture, keys and limits are the
gateway's, whatever server answered.

This module builds the app (:func:`create_app`) and runs it with vLLM (:func:`serve`); the routes are in
selfevolve/gateway_chat.py and selfevolve/gateway_admin.py, what they share in selfevolve/gateway_http.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import secrets
import signal
import time

import httpx
import uvicorn
from fastapi import FastAPI

from . import gateway_admin, gateway_chat, gateway_engine
from .cpu_split import BIND_ENV, engine_cores, parse_cores
from .deploy import Deployer
from .gateway_http import Gateway, Keys, _SSECapture
from .gateway_limits import GatewayLimits
from .gateway_pool import UpstreamPool
from .layout import RunLayout
from .records import write_atomic, write_json
from .serve import ServerError, VLLMServer
from .store import ChatStore
from .userkeys import UserKeys

__all__ = ["CHAT_KEY_ENV", "ADMIN_KEY_ENV", "UPSTREAM_KEY_ENV", "Keys", "resolve_keys", "create_app", "serve",
           "model_servers", "upstream_pool", "start_servers", "_SSECapture"]

CHAT_KEY_ENV, ADMIN_KEY_ENV = "SELFEVOLVE_CHAT_KEY", "SELFEVOLVE_ADMIN_KEY"
UPSTREAM_KEY_ENV = "SELFEVOLVE_UPSTREAM_KEY"
"""The Bearer key of ``serve.upstreams`` (vLLM servers started elsewhere with ``--api-key``); wins over
``serve.upstream_key``."""


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


def create_app(*, store: ChatStore, deployer: Deployer, keys: Keys, vllm_url: str | None = None,
               vllm_headers: dict | None = None, consent_default: bool = False, drop_seed: bool = True,
               request_timeout_s: float = 600.0, restore_on_start: bool = True, limits: GatewayLimits | None = None,
               user_keys: UserKeys | None = None, transport: httpx.AsyncBaseTransport | None = None,
               health_interval_s: float = 5.0, borrow_priority: int = 0) -> FastAPI:
    """The gateway app. ``deployer`` routes ``current`` and holds the vLLM servers (``deployer.pool``: one, or
    the replicas), which requests are spread over; ``store`` captures. ``vllm_url`` / ``vllm_headers`` (the
    single server's, from before replicas) must name the deployer's server when given; ``transport``: tests put
    an in-process stub of the vLLM API there. ``limits``: GatewayLimits() when None; ``user_keys``: the
    per-user keys accepted besides the shared chat key; ``health_interval_s``: how often each server is checked
    (one that comes back is brought to the live adapter before it gets traffic again); ``borrow_priority``: the
    engine routes' vLLM priority (the servers must run ``--scheduling-policy priority``)."""
    pool = deployer.pool
    if vllm_url is not None and vllm_url.rstrip("/") not in {u.url.rstrip("/") for u in pool.upstreams}:
        raise ValueError(f"vllm_url {vllm_url} is not one of the deployer's model servers")
    for u in pool.upstreams:
        u.transport = u.transport or transport
    gw = Gateway(store, deployer, keys, consent_default=consent_default, drop_seed=drop_seed,
                 limits=limits or GatewayLimits(), user_keys=user_keys, pool=pool, borrow_priority=borrow_priority)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.open(request_timeout_s)
        watcher = None
        try:
            if restore_on_start and (deployer.state["live"] or deployer.state["previous"]):
                gw.restore = await deployer.restore()
            watcher = asyncio.create_task(pool.watch(health_interval_s, deployer.required, deployer.sync))
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await pool.aclose()

    app = FastAPI(title="selfevolve gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gw
    app.state.store, app.state.deployer, app.state.keys = store, deployer, keys
    app.include_router(gateway_chat.router)
    app.include_router(gateway_admin.router)
    app.include_router(gateway_engine.router)  # the engine lent to `selfevolve iterate` (admin key, not captured)
    return app


# ---------------------------------------------------------------- running it

def _announce(run, host: str, port: int, admin_key: str, servers: list[VLLMServer]) -> None:
    """Tell `selfevolve iterate` of this run where the gateway is, which cores its CPU engines compute on (a
    round beside them computes on the others) and how to deploy to it: serve.json, and the admin key in a file
    only this user can read (created 0600, never world-readable even for an instant)."""
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    cores = sorted({c for s in servers for c in parse_cores(s.env.get(BIND_ENV, ""))})
    write_atomic(run.admin_key, admin_key + "\n", mode=0o600)
    write_json(run.serve_info, {"url": f"http://{local}:{port}", "pid": os.getpid(),
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "engine_cores": cores})


def model_servers(cfg, run: RunLayout) -> list[VLLMServer]:
    """The vLLM servers ``selfevolve serve`` starts: ``serve.replicas`` of them on 127.0.0.1:``vllm_port``,
    ``vllm_port + 1``..., each with its own internal key and log; none when ``serve.upstreams`` lists servers
    that run elsewhere."""
    if cfg.serve.upstreams:
        return []
    n = cfg.serve.replicas
    servers = [VLLMServer.from_config(cfg, log_path=run.replica_log(i), port=cfg.serve.vllm_port + i)
               for i in range(n)]
    if n > 1 and "--gpu-memory-utilization" in servers[0].extra_args:
        # each would take serve.gpu_memory_utilization of the same GPUs (the memory plan counts one engine)
        raise ServerError("serve.replicas > 1 on GPUs: every replica would start on the same GPUs. Use "
                          "serve.data_parallel_size (vLLM's own replicas behind one server) on one node, or "
                          "serve.upstreams to list vLLM servers started on other GPUs / machines")
    for s, cores in zip(servers, engine_cores(n)):
        s.env[BIND_ENV] = cores  # a round beside them computes on the other cores (selfevolve/cpu_split.py)
    return servers


def upstream_pool(cfg, servers: list[VLLMServer]) -> UpstreamPool:
    """The gateway's model servers: those started (``servers``), else ``serve.upstreams`` with the key of
    $SELFEVOLVE_UPSTREAM_KEY or ``serve.upstream_key``."""
    if servers:
        return UpstreamPool.of([s.url for s in servers], [s.headers for s in servers])
    key = os.environ.get(UPSTREAM_KEY_ENV) or cfg.serve.upstream_key
    return UpstreamPool.of(list(cfg.serve.upstreams), {"Authorization": f"Bearer {key}"} if key else {})


def start_servers(servers: list[VLLMServer], timeout_s: float) -> None:
    """Start them all (they load at once), then wait for each; one that fails stops them all."""
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(timeout_s)
    except BaseException:
        for s in servers:
            s.stop()
        raise


def serve(cfg, port: int | None = None, echo=print) -> None:
    """``selfevolve serve``: the vLLM server(s) on 127.0.0.1:serve.vllm_port (+1...), or ``serve.upstreams``,
    then the gateway on serve.host:port (foreground). Ctrl-C (or SIGTERM) stops the gateway, then vLLM."""
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    run.dir.mkdir(parents=True, exist_ok=True)
    keys = resolve_keys(cfg.serve)
    user_keys = UserKeys(run.user_keys, warn=echo)  # an unsafe key file stops us before vLLM starts
    port = port or cfg.serve.port
    servers = model_servers(cfg, run)
    prev_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    store = None
    try:
        for s in servers:
            echo(f"starting vLLM ({cfg.model.path}) on 127.0.0.1:{s.port}, log {s.log_path} ...")
        start_servers(servers, cfg.serve.startup_timeout_s)
        pool = upstream_pool(cfg, servers)
        store = ChatStore(run.chats_db)
        deployer = Deployer(run, max_rank=cfg.lora_slots.max_rank, base_model=cfg.model.path, pool=pool)
        app = create_app(store=store, deployer=deployer, keys=keys, consent_default=cfg.serve.consent_default,
                         drop_seed=cfg.serve.drop_seed, request_timeout_s=cfg.serve.request_timeout_s,
                         limits=GatewayLimits.from_serve(cfg.serve), user_keys=user_keys,
                         health_interval_s=cfg.serve.health_interval_s,
                         borrow_priority=0 if cfg.serve.upstreams else cfg.serve.borrow_priority)
        for which in keys.generated:
            echo(f"generated {which} key (set {CHAT_KEY_ENV if which == 'chat' else ADMIN_KEY_ENV} to keep one): "
                 f"{keys.chat if which == 'chat' else keys.admin}")
        echo(f"gateway on http://{cfg.serve.host}:{port}  (chat page: http://{cfg.serve.host}:{port}/?key=<chat key>)"
             f"  live: {deployer.live_model}  model servers: {len(pool.upstreams)}  captures: {run.chats_db}"
             f"  per-user keys: {len(user_keys)}")
        _announce(run, cfg.serve.host, port, keys.admin, servers)
        uvicorn.Server(uvicorn.Config(app, host=cfg.serve.host, port=port, log_level="warning",
                                      access_log=False, lifespan="on")).run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, prev_term)
        run.serve_info.unlink(missing_ok=True)
        if servers:
            echo("stopping vLLM ...")
        for s in servers:
            s.stop()
        if store is not None:
            store.close()
