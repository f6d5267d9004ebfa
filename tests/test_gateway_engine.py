"""The served engine lent to iterate (selfevolve/gateway_engine.py, backends/served_backend.py): admin key only,
never captured, a borrowed adapter private (chat routes refuse it, /v1/models hides it), checked like a deploy.
On the stub vLLM of test_gateway.py; the real server is tests/test_loop_integration.py's serve → iterate test."""
import json

from selfevolve.backends.served_backend import find_server
from selfevolve.config import load_config
from selfevolve.gateway_engine import PRIVATE_PREFIX, is_private, private_name

from adapter_fixtures import tiny_adapter
from test_gateway import ADMIN, CHAT, auth, gw  # noqa: F401  (gw: the fixture)

MSGS = [{"role": "user", "content": "ping"}]


def test_engine_routes_need_the_admin_key(gw):  # noqa: F811
    c = gw.client
    body = {"model": "base", "messages": MSGS}
    assert c.post("/admin/engine/v1/chat/completions", json=body).status_code == 401
    assert c.post("/admin/engine/v1/chat/completions", json=body, headers=auth(CHAT)).status_code == 403
    r = c.post("/admin/engine/v1/chat/completions", json=body, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "[base] you said: ping"
    assert c.post("/admin/engine/v1/embeddings", json=body, headers=auth(ADMIN)).status_code == 404
    assert c.post("/admin/engine/v1/chat/completions", json={**body, "stream": True},
                  headers=auth(ADMIN)).status_code == 400


def test_engine_chats_are_never_captured(gw):  # noqa: F811
    c = gw.client
    for _ in range(3):
        assert c.post("/admin/engine/v1/chat/completions", json={"model": "base", "messages": MSGS},
                      headers=auth(ADMIN)).status_code == 200
    assert gw.store.count() == 0  # nothing stored: iterate's prompts are not chats
    assert c.post("/v1/chat/completions", json={"messages": MSGS}, headers=auth(CHAT)).status_code == 200
    assert gw.store.count() == 1  # the chat route still captures


def test_a_borrowed_adapter_is_private_checked_and_unloaded(gw, tmp_path):  # noqa: F811
    c = gw.client
    folder = tiny_adapter(gw.run.round(3).adapter)
    r = c.post("/admin/engine/adapters/load", json={"path": str(folder)}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    assert is_private(name) and name == private_name(folder) and name in gw.stub.loaded
    # the same folder again: the same name, nothing loaded twice
    assert c.post("/admin/engine/adapters/load", json={"path": str(folder)}, headers=auth(ADMIN)).json()["name"] == name
    r = c.post("/admin/engine/v1/chat/completions", json={"model": name, "messages": MSGS}, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["model"] == name
    # users can neither see nor chat with it
    ids = [m["id"] for m in c.get("/v1/models", headers=auth(CHAT)).json()["data"]]
    assert name not in ids and not any(i.startswith(PRIVATE_PREFIX) for i in ids)
    seen = len(gw.stub.requests)
    r = c.post("/v1/chat/completions", json={"model": name, "messages": MSGS}, headers=auth(CHAT))
    assert r.status_code == 404 and len(gw.stub.requests) == seen  # refused before vLLM
    assert gw.deployer.state["live"] is None  # borrowing never deploys
    assert c.post("/admin/engine/adapters/unload", json={"name": name}, headers=auth(ADMIN)).status_code == 200
    assert name not in gw.stub.loaded


def test_a_borrowed_adapter_outside_the_run_or_broken_is_refused(gw, tmp_path):  # noqa: F811
    c = gw.client
    outside = tiny_adapter(tmp_path / "elsewhere")
    r = c.post("/admin/engine/adapters/load", json={"path": str(outside)}, headers=auth(ADMIN))
    assert r.status_code == 400 and not gw.stub.loaded
    bad = tiny_adapter(gw.run.round(4).adapter)
    (bad / "adapter_model.bin").write_bytes(b"pickle")
    r = c.post("/admin/engine/adapters/load", json={"path": str(bad)}, headers=auth(ADMIN))
    assert r.status_code == 400 and not gw.stub.loaded
    assert c.post("/admin/engine/adapters/unload", json={"name": "se-r001"}, headers=auth(ADMIN)).status_code == 400


def test_find_server_needs_serve_json_a_key_and_a_live_health(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path}"])
    from selfevolve.layout import RunLayout

    run = RunLayout.of(cfg.run.root, cfg.run.name)
    assert find_server(run) is None  # no serve.json
    run.dir.mkdir(parents=True)
    run.serve_info.write_text(json.dumps({"url": "http://127.0.0.1:9"}))  # port 9: nothing listens
    run.admin_key.write_text("k\n")
    assert find_server(run, timeout_s=0.5) is None  # stale: the server is gone


def test_served_backend_through_a_real_gateway_on_loopback(tmp_path):
    """The client iterate uses, against the gateway served by uvicorn on 127.0.0.1 (vLLM is the stub): base and
    adapter answers, the adapter loaded once under its private name and unloaded at close; nothing captured."""
    import httpx

    from selfevolve.backends.base import Sampling
    from selfevolve.backends.served_backend import ServedBackend
    from selfevolve.config_data import BackendConfig
    from selfevolve.deploy import Deployer
    from selfevolve.gateway import Keys, create_app
    from selfevolve.layout import RunLayout
    from selfevolve.store import ChatStore

    from adapter_fixtures import tiny_base
    from helpers import GatewayThread
    from test_gateway import INTERNAL, StubVLLM

    stub, run = StubVLLM(), RunLayout.of(tmp_path / "runs", "t")
    run.dir.mkdir(parents=True)
    transport = httpx.ASGITransport(app=stub.app)
    headers = {"Authorization": f"Bearer {INTERNAL}"}
    store = ChatStore(run.chats_db)
    deployer = Deployer(run, "http://vllm.stub", headers, max_rank=16, transport=transport,
                        base_model=tiny_base(tmp_path))
    app = create_app(store=store, deployer=deployer, vllm_url="http://vllm.stub", vllm_headers=headers,
                     keys=Keys(CHAT, ADMIN), transport=transport)
    folder = tiny_adapter(run.round(2).adapter)
    with GatewayThread(app) as gw_thread:
        backend = ServedBackend(gw_thread.url, ADMIN, BackendConfig(concurrency=2))
        base = backend.chat(BATCH := [MSGS, [{"role": "user", "content": "pong"}]], Sampling(0.0, 1.0, 8))
        assert [g.text for g in base] == ["[base] you said: ping", "[base] you said: pong"]
        tuned = backend.chat(BATCH, Sampling(0.0, 1.0, 8), adapter=str(folder))
        name = private_name(folder)
        assert [g.text for g in tuned] == [f"[{name}] you said: ping", f"[{name}] you said: pong"]
        backend.chat(BATCH[:1], Sampling(0.0, 1.0, 8), adapter=str(folder))
        assert list(stub.loaded) == [name]  # loaded once
        backend.close()
        assert stub.loaded == {}
    assert store.count() == 0
    store.close()


def test_borrowed_requests_wait_behind_chats_and_clients_cannot_jump_the_queue(gw):  # noqa: F811
    """serve.borrow_priority: the engine routes' requests carry it (vLLM: lower is sooner; chats 0), a client's
    own ``priority`` never reaches vLLM, and `selfevolve serve`'s servers run priority scheduling when it is set
    (off by default: measured slower on CPU, docs/bench/borrow.md)."""
    from selfevolve.serve import VLLMServer

    c, state = gw.client, gw.client.app.state.gateway
    state.borrow_priority = 10
    assert c.post("/admin/engine/v1/chat/completions", json={"model": "base", "messages": MSGS},
                  headers=auth(ADMIN)).status_code == 200
    assert gw.stub.requests[-1]["priority"] == 10
    assert c.post("/v1/chat/completions", json={"messages": MSGS, "priority": -100},
                  headers=auth(CHAT)).status_code == 200
    assert "priority" not in gw.stub.requests[-1]
    state.borrow_priority = 0  # none: the engine routes send what they got, nothing added
    c.post("/admin/engine/v1/chat/completions", json={"model": "base", "messages": MSGS}, headers=auth(ADMIN))
    assert "priority" not in gw.stub.requests[-1]

    cmd = " ".join(VLLMServer.from_config(load_config(None, ["serve.borrow_priority=10"])).command())
    assert "--scheduling-policy priority" in cmd
    assert "--scheduling-policy" not in " ".join(VLLMServer.from_config(load_config(None)).command())  # default 0
