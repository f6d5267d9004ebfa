"""vLLM is reachable only through the gateway: its own ``--api-key`` guards /v1-style paths only, so
selfevolve/vllm_guard.py's middleware refuses every request but the few selfevolve makes, with the key.

- unit: the middleware on a small app (methods, paths, keys, root_path, websockets, no key configured);
- unit, no model: vLLM's real app, built from the arguments and environment selfevolve/serve.py starts it with,
  has no route outside ``VLLM_ROUTES`` and answers none of them without the key; without the guard it does;
- integration: one real server started as ``selfevolve serve`` starts it, every route probed without the key.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from selfevolve.deploy import Deployer
from selfevolve.layout import RunLayout
from selfevolve.serve import VLLMServer
from selfevolve.vllm_guard import ALLOWED, GUARD_HEADER, KEY_ENV, VLLM_ROUTES, RequireKey

KEY = "internal-test-key"


def _app(monkeypatch, key: str | None = KEY) -> TestClient:
    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key)

    async def ok(request):
        return PlainTextResponse("reached")

    async def ws(websocket):
        await websocket.accept()
        await websocket.send_text("reached")
        await websocket.close()

    routes = [Route(p, ok, methods=[m]) for m, p in {*ALLOWED, ("POST", "/invocations"), ("GET", "/metrics")}]
    app = Starlette(routes=routes + [WebSocketRoute("/v1/realtime", ws)])
    app.add_middleware(RequireKey)
    return TestClient(app)


def test_guard_lets_only_our_routes_with_the_key(monkeypatch):
    c = _app(monkeypatch)
    good = {"Authorization": f"Bearer {KEY}"}
    for method, path in sorted(ALLOWED):
        assert c.request(method, path, headers=good).text == "reached"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"},
                        {"Authorization": f"Bearer {KEY} "}):
            r = c.request(method, path, headers=headers)
            assert (r.status_code, r.headers.get(GUARD_HEADER)) == (401, "refused"), (method, path, headers)
    for method, path in (("POST", "/invocations"), ("GET", "/metrics"), ("GET", "/v1/models/"), ("DELETE", "/v1/models"),
                         ("GET", "/V1/models"), ("GET", "//v1/models")):
        r = c.request(method, path, headers=good)  # not ours: refused even with the key
        assert (r.status_code, r.headers.get(GUARD_HEADER)) == (404, "refused"), (method, path)
    with pytest.raises(Exception):  # websockets are closed before anything is accepted
        with c.websocket_connect("/v1/realtime", headers=good) as ws:
            ws.receive_text()


def test_guard_fails_closed_without_a_key(monkeypatch):
    for key in (None, ""):
        c = _app(monkeypatch, key)
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            assert c.get("/v1/models", headers=headers).status_code == 401


def test_guard_strips_root_path_only_as_a_prefix(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)

    async def app(scope, receive, send):
        await PlainTextResponse("reached")(scope, receive, send)

    guard = RequireKey(app)
    c = TestClient(guard, root_path="/proxy")
    assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).text == "reached"
    assert c.get("/invocations", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


# ---------------------------------------------------------------- vLLM's real app (no engine, no model)

def _vllm_app(monkeypatch, guarded: bool):
    """vLLM 0.32's FastAPI app built from the arguments and environment VLLMServer starts it with."""
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    server = VLLMServer(".cache/models/SmolLM2-135M-Instruct", port=1, api_key=KEY)
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    argv = server.command()[3:]  # after "python -m vllm.entrypoints.openai.api_server"
    if not guarded:
        argv = argv[: argv.index("--middleware")]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    return build_app(args, supported_tasks=("generate",))


def _routes(app) -> set[tuple[str, str]]:
    out = set()
    for r in app.routes:
        for m in getattr(r, "methods", None) or {"GET"}:
            if m != "HEAD":
                out.add((m, r.path))
    return out


@pytest.fixture(scope="module")
def vllm_apps():
    mp = pytest.MonkeyPatch()
    try:
        yield _vllm_app(mp, guarded=True), _vllm_app(mp, guarded=False)
    finally:
        mp.undo()


def _probe(client: TestClient, method: str, path: str, headers: dict | None = None):
    return client.request(method, path.replace("{", "").replace("}", ""), headers=headers or {},
                          json={} if method in ("POST", "PUT") else None)


def test_every_vllm_route_is_known_and_refused_without_the_key(vllm_apps):
    guarded, _ = vllm_apps
    routes = _routes(guarded)
    assert routes - set(VLLM_ROUTES) == set(), "vLLM has routes VLLM_ROUTES does not list: add them"
    assert {("POST", "/invocations"), ("POST", "/adapters"), ("DELETE", "/adapters/{adapter_name}")} <= routes
    c = TestClient(guarded, raise_server_exceptions=False)
    for method, path in sorted(routes):
        r = _probe(c, method, path)
        assert r.headers.get(GUARD_HEADER) == "refused" and r.status_code in (401, 404), (method, path, r.status_code)
        if (method, path) not in ALLOWED:
            r = _probe(c, method, path, {"Authorization": f"Bearer {KEY}"})
            assert (r.status_code, r.headers.get(GUARD_HEADER)) == (404, "refused"), (method, path)


def test_vllm_own_key_check_leaves_routes_open(vllm_apps):
    """The finding the guard answers (vLLM 0.32): with its own --api-key/VLLM_API_KEY only, these routes pass
    to their handlers without a key (no engine here, so they fail inside; over the wire they answer)."""
    _, plain = vllm_apps
    c = TestClient(plain, raise_server_exceptions=False)
    opened = [f"{m} {p}" for m, p in sorted(_routes(plain)) if _probe(c, m, p).status_code != 401]
    for route in ("POST /invocations", "POST /adapters", "DELETE /adapters/{adapter_name}", "POST /tokenize",
                  "GET /metrics", "POST /scale_elastic_ep", "POST /generative_scoring"):
        assert route in opened
    assert "GET /v1/models" not in opened and "POST /v1/load_lora_adapter" not in opened


# ---------------------------------------------------------------- live

@pytest.mark.integration
def test_live_server_answers_nothing_without_the_key(default_cfg, tmp_path):
    """One real server, started as `selfevolve serve` starts it: wait_ready already refuses to serve when a route
    answers; here every route is asked again, and the two doors of the finding are tried for real."""
    server = VLLMServer.from_config(default_cfg, log_path=tmp_path / "vllm.log")
    server.max_model_len = 1024
    with server:
        assert server.unguarded_routes() == []
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/invocations", json={"model": "base", "prompt": "Hello", "max_tokens": 2})
            assert (r.status_code, r.headers.get(GUARD_HEADER)) == (404, "refused")
            r = c.post("/adapters", json={"name": "intruder", "src": str(tmp_path)})
            assert (r.status_code, r.headers.get(GUARD_HEADER)) == (404, "refused")
            models = c.get("/v1/models", headers=server.headers)
            assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["base"]
            assert c.get("/v1/models").status_code == 401
        assert server.generate_ok()

        # through the guard, the deployer loads the checked private copy, and vLLM reads that copy
        from helpers import build_random_adapter

        run = RunLayout.of(tmp_path / "runs", "t")
        build_random_adapter(default_cfg.model.path, run.round(1).adapter, seed=1)
        dep = Deployer(run, server.url, server.headers, max_rank=default_cfg.lora_slots.max_rank)
        res = asyncio.run(dep.deploy(1))
        assert res["live"] == "se-r001" and Path(res["staged"]).parent == run.staged_adapters
        cards = httpx.get(server.url + "/v1/models", headers=server.headers).json()["data"]
        assert {m["id"]: m["root"] for m in cards}["se-r001"] == res["staged"]
        assert server.generate_ok(model="se-r001")
