"""The key check vLLM's own ``--api-key`` lacks, loaded into the vLLM server process as an ASGI middleware
(``--middleware selfevolve.vllm_guard.RequireKey``, selfevolve/serve.py).

vLLM 0.32's ``--api-key`` guards only paths under /v1, /v2, /inference and /cohere (its own help says so). The
rest answer anyone who reaches the port: ``POST /invocations`` generates (nothing captured, no gateway limits),
``POST /adapters`` and ``DELETE /adapters/{name}`` load and unload LoRA adapters from any path (none of the
deploy checks), plus ``/tokenize``, ``/generative_scoring``, ``/scale_elastic_ep``, ``/metrics``, ``/docs``...
Any local user can reach 127.0.0.1. This middleware sits outside every vLLM route and lets through only the
requests the gateway and the deployer make (:data:`ALLOWED`), each with the internal key; everything else gets
404 (a route we do not use) or 401 (no or a wrong key), before vLLM sees it.

Imported inside the vLLM process: standard library only.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os

KEY_ENV = "VLLM_API_KEY"
"""Where the internal key is (selfevolve/serve.py sets it per start; vLLM's own check reads it too)."""
ALLOWED = frozenset({
    ("GET", "/health"),                    # readiness (serve.py, the gateway's /health)
    ("GET", "/v1/models"),                 # base + loaded adapters (gateway, deployer)
    ("POST", "/v1/chat/completions"),      # the proxied chat (captured by the gateway)
    ("POST", "/v1/completions"),           # readiness and the deployer's smoke test
    ("POST", "/v1/load_lora_adapter"),     # the deployer, with a staged and checked copy
    ("POST", "/v1/unload_lora_adapter"),   # the deployer
    ("POST", "/tokenize"),                 # log-probs for iterate through the served engine (gateway_engine.py)
})
"""The only (method, path) pairs that reach vLLM: what selfevolve itself calls."""
GUARD_HEADER = "x-selfevolve-guard"
"""Header of every answer the guard gives itself: a 401/404 without it came from vLLM, past the guard."""
_GET = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/load", "/version", "/kv_event_sources",
        "/health", "/metrics", "/v1/models", "/ping", "/v1/responses/{response_id}", "/server_info", "/is_sleeping",
        "/is_paused", "/weight_info", "/get_world_size", "/fault_tolerance/status", "/tokenizer_info")
_POST = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/tokenize", "/detokenize", "/v1/systemone", "/ping",
         "/invocations", "/v1/chat/completions", "/v1/chat/completions/batch", "/v1/responses",
         "/v1/responses/{response_id}/cancel", "/v1/completions", "/v1/messages", "/v1/messages/count_tokens",
         "/generative_scoring", "/scale_elastic_ep", "/is_scaling_elastic_ep", "/v1/chat/completions/render",
         "/v1/messages/render", "/v1/completions/render", "/v1/responses/render", "/v1/chat/completions/derender",
         "/v1/completions/derender", "/inference/v1/generate", "/inference/v1/abort_requests", "/adapters",
         "/start_profile", "/stop_profile", "/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache",
         "/collective_rpc", "/sleep", "/wake_up", "/release_kv_cache_memory", "/pause", "/resume", "/abort_requests",
         "/init_weight_transfer_engine", "/update_weights", "/start_weight_update", "/finish_weight_update")
VLLM_ROUTES = tuple(("GET", p) for p in _GET) + tuple(("POST", p) for p in _POST) + \
    (("DELETE", "/adapters/{adapter_name}"), ("GET", "/metrics/"))
"""Every HTTP route vLLM 0.32's OpenAI server registers for a generating model with runtime LoRA loading
(tests/test_vllm_routes.py checks this list against a built app), plus the dev-mode, RL and profiler routes
that options or environment variables would add: what :meth:`selfevolve.serve.VLLMServer.unguarded_routes`
asks without the key."""


class RequireKey:
    """ASGI middleware: a request must be in :data:`ALLOWED` (else 404) and carry ``Authorization: Bearer <key>``
    with the key of ``VLLM_API_KEY`` (else 401). With no key set, every request is refused (fail closed)."""

    def __init__(self, app):
        self.app = app
        key = os.environ.get(KEY_ENV, "")
        self.digest = hashlib.sha256(key.encode()).digest() if key else None

    def _authorized(self, scope) -> bool:
        value = b""
        for name, v in scope.get("headers") or ():
            if name.lower() == b"authorization":
                value = v
        scheme, _, token = value.partition(b" ")
        return self.digest is not None and scheme.lower() == b"bearer" and \
            hmac.compare_digest(hashlib.sha256(token).digest(), self.digest)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # websockets (realtime audio) and anything else: not ours
            return await send({"type": "websocket.close", "code": 1008}) if scope["type"] == "websocket" else None
        path = scope.get("path", "")
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):]
        if (scope.get("method"), path) not in ALLOWED:
            return await _answer(send, 404, "not found")
        if not self._authorized(scope):
            return await _answer(send, 401, "unauthorized")
        return await self.app(scope, receive, send)


async def _answer(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (GUARD_HEADER.encode(), b"refused")]})
    await send({"type": "http.response.body", "body": body})
