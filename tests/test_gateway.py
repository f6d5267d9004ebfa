"""The capture gateway: auth, capture into SQLite, export, routing of ``current``, deploy through the admin API.

Unit tests talk to the gateway in-process (FastAPI TestClient) with an in-process stub of the vLLM API behind
it (auth / SQLite / routing logic only). Integration tests run the real vLLM server on loopback with the real
model and real PEFT adapters: one server for the module, always stopped.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.testclient import TestClient

from selfevolve.deploy import Deployer
from selfevolve.gateway import Keys, _SSECapture, create_app
from selfevolve.layout import RunLayout
from selfevolve.store import ChatStore
from selfevolve.userkeys import UserKeys, issue

from adapter_fixtures import tiny_adapter, tiny_base
from helpers import GatewayThread, build_random_adapter

CHAT, ADMIN, INTERNAL = "chat-key-1", "admin-key-1", "internal-key"


# ---------------------------------------------------------------- the vLLM stub (test_deploy.py uses it too)

class StubVLLM:
    """The few vLLM routes the gateway and the deployer use, in-process. Answers name the model that answered."""

    def __init__(self):
        self.loaded: dict[str, str] = {}
        self.requests: list[dict] = []
        self.refuse_load: set[str] = set()
        self.refuse_unload: set[str] = set()
        self.smoke_text = " hi"
        self.healthy = True  # False: /health answers 500, as vLLM's does once its engine is gone
        self.app = FastAPI()
        app = self.app

        @app.middleware("http")
        async def internal_key(request: Request, call_next):
            if request.url.path.startswith("/v1") and request.headers.get("authorization") != f"Bearer {INTERNAL}":
                return JSONResponse({"error": "unauthorized"}, 401)
            return await call_next(request)

        @app.get("/health")
        async def health():
            return Response(status_code=200 if self.healthy else 500)

        @app.get("/v1/models")
        async def models():
            data = [{"id": "base", "object": "model", "parent": None}]
            data += [{"id": n, "object": "model", "parent": "base", "root": p} for n, p in self.loaded.items()]
            return {"object": "list", "data": data}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request):
            body = await request.json()
            if body["lora_name"] in self.loaded:
                return JSONResponse({"error": {"message": "already loaded"}}, 400)
            if body["lora_name"] in self.refuse_load:
                return JSONResponse({"error": {"message": "Worker failed with error 'bad adapter'"}}, 500)
            self.loaded[body["lora_name"]] = body["lora_path"]
            return Response("Success", 200)

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request):
            body = await request.json()
            if body["lora_name"] in self.refuse_unload:
                return JSONResponse({"error": {"message": "Worker failed with error 'stuck'"}}, 500)
            if self.loaded.pop(body["lora_name"], None) is None:
                return JSONResponse({"error": {"message": "not found"}}, 404)
            return Response("Success", 200)

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            return {"choices": [{"index": 0, "text": self.smoke_text, "finish_reason": "length"}], "model": body["model"]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            model = body["model"]
            if model != "base" and model not in self.loaded:
                return JSONResponse({"error": {"message": f"The model `{model}` does not exist."}}, 404)
            last = body["messages"][-1]["content"]
            answer = f"[{model}] you said: {last}"
            if not body.get("stream"):
                return {"id": "x", "object": "chat.completion", "model": model, "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}

            async def events():
                head = {"id": "x", "object": "chat.completion.chunk", "model": model}
                yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': ''}}]})}\n\n"
                for word in answer.split(" "):
                    piece = word if word == answer.split(" ")[0] else " " + word
                    yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
                yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def gw(tmp_path):
    stub = StubVLLM()
    run = RunLayout.of(tmp_path / "runs", "t")
    run.dir.mkdir(parents=True)
    transport = httpx.ASGITransport(app=stub.app)
    store = ChatStore(run.chats_db)
    deployer = Deployer(run, "http://vllm.stub", {"Authorization": f"Bearer {INTERNAL}"}, max_rank=16,
                        transport=transport, base_model=tiny_base(tmp_path))
    user_keys = {u: issue(run.user_keys, u)[0] for u in ("alice", "bob", "carol", "dave", "eve")}
    app = create_app(store=store, deployer=deployer, vllm_url="http://vllm.stub",
                     vllm_headers={"Authorization": f"Bearer {INTERNAL}"}, keys=Keys(CHAT, ADMIN),
                     consent_default=True, user_keys=UserKeys(run.user_keys), transport=transport)
    with TestClient(app) as client:
        yield SimpleNamespace(client=client, stub=stub, run=run, store=store, deployer=deployer, keys=user_keys)
    store.close()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def sse_text(resp) -> str:
    cap = _SSECapture()
    cap.feed(resp.content if hasattr(resp, "content") else resp)
    assert cap.done
    return cap.answer


# ---------------------------------------------------------------- unit: auth

ADMIN_ROUTES = [("post", "/admin/adapters/load", {"round": 1}), ("post", "/admin/adapters/unload", {"round": 1}),
                ("get", "/admin/current", None), ("post", "/admin/current", None), ("post", "/admin/rollback", None)]
CHAT_ROUTES = [("get", "/v1/models", None),
               ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
               ("post", "/v1/feedback", {"conversation_id": "x", "rating": "up"})]


@pytest.mark.parametrize("method,path,body", ADMIN_ROUTES)
def test_admin_routes_refuse_chat_key_and_missing_key(gw, method, path, body):
    call = getattr(gw.client, method)
    kw = {"json": body} if body is not None else {}
    assert call(path, headers=auth(CHAT), **kw).status_code == 403
    assert call(path, **kw).status_code == 401
    assert call(path, headers=auth("wrong"), **kw).status_code == 401
    assert call(path, headers={"Authorization": ADMIN}, **kw).status_code == 401  # no Bearer scheme


@pytest.mark.parametrize("method,path,body", CHAT_ROUTES)
def test_chat_routes_need_a_key(gw, method, path, body):
    call = getattr(gw.client, method)
    kw = {"json": body} if body is not None else {}
    r = call(path, **kw)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert call(path, headers=auth("wrong"), **kw).status_code == 401
    assert gw.stub.requests == []  # nothing reached the model


def test_keys_that_work(gw):
    assert gw.client.get("/v1/models", headers=auth(CHAT)).status_code == 200
    assert gw.client.get("/v1/models", headers=auth(ADMIN)).status_code == 200  # admin may do what chat may
    cur = gw.client.get("/admin/current", headers=auth(ADMIN))
    assert cur.status_code == 200 and cur.json()["live"] is None and cur.json()["model"] == "base"
    page = gw.client.get("/")  # the page itself is public: the key is typed into it
    assert page.status_code == 200 and "/v1/chat/completions" in page.text and "/v1/feedback" in page.text


def test_resolve_keys(monkeypatch):
    from selfevolve.config import ServeConfig
    from selfevolve.gateway import resolve_keys

    monkeypatch.delenv("SELFEVOLVE_CHAT_KEY", raising=False)
    monkeypatch.delenv("SELFEVOLVE_ADMIN_KEY", raising=False)
    k = resolve_keys(ServeConfig())
    assert k.chat and k.admin and k.chat != k.admin and set(k.generated) == {"chat", "admin"}
    k = resolve_keys(ServeConfig(chat_key="c", admin_key="a"))
    assert (k.chat, k.admin, k.generated) == ("c", "a", ())
    monkeypatch.setenv("SELFEVOLVE_ADMIN_KEY", "from-env")
    assert resolve_keys(ServeConfig(chat_key="c", admin_key="a")).admin == "from-env"
    with pytest.raises(ValueError):
        resolve_keys(ServeConfig(chat_key="from-env"))


# ---------------------------------------------------------------- unit: capture

def test_two_turn_conversation_is_captured_once(gw):
    c, alice = gw.client, gw.keys["alice"]
    turn1 = [{"role": "user", "content": "What is the capital of France?"}]
    r1 = c.post("/v1/chat/completions", headers=auth(alice),
                json={"model": "current", "messages": turn1, "user": "alice", "seed": 7, "max_tokens": 8})
    assert r1.status_code == 200
    cid = r1.headers["x-conversation-id"]
    answer1 = r1.json()["choices"][0]["message"]["content"]
    assert r1.headers["x-served-model"] == "base" and answer1.startswith("[base]")
    forwarded = gw.stub.requests[-1]
    assert "seed" not in forwarded and "user" not in forwarded and forwarded["model"] == "base"

    # an adapter goes live between the turns: turn 2 (streamed) is answered by it
    dep = c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 1, "path": str(
        tiny_adapter(gw.run.round(1).adapter))})
    assert dep.status_code == 200, dep.text
    turn2 = turn1 + [{"role": "assistant", "content": answer1}, {"role": "user", "content": "And of Italy?"}]
    r2 = c.post("/v1/chat/completions", headers={**auth(alice), "X-Consent-Train": "false"},
                json={"messages": turn2, "user": "mallory", "stream": True})  # the label changes nothing
    assert r2.status_code == 200 and r2.headers["content-type"].startswith("text/event-stream")
    assert r2.headers["x-conversation-id"] == cid and r2.headers["x-served-model"] == "se-r001"
    answer2 = sse_text(r2)
    assert answer2 == "[se-r001] you said: And of Italy?"

    assert gw.store.count() == 1
    conv = gw.store.get(cid)
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][3]["content"] == answer2
    assert [(e["message_index"], e["adapter"], e["stream"]) for e in conv["exchanges"]] == [
        (1, "base", False), (3, "se-r001", True)]
    assert [e["consent"] for e in conv["exchanges"]] == [True, False]
    assert conv["consent"] is False  # one exchange without consent: the conversation is not trained on
    # the identity is alice's key, whatever the request's ``user`` said
    assert conv["user_hash"] == gw.store.hash_user(None, "userkey:alice") and "alice" not in conv["user_hash"]
    assert len(conv["user_hash"]) == 64

    fb = c.post("/v1/feedback", headers=auth(alice), json={"conversation_id": cid, "rating": "down", "comment": "wrong"})
    assert fb.status_code == 200 and fb.json()["message_index"] == 3
    for other in (CHAT, gw.keys["bob"]):  # only the owner rates a conversation; to others it does not exist
        assert c.post("/v1/feedback", headers=auth(other), json={"conversation_id": cid, "rating": "up"}).status_code == 404
    fb = c.post("/v1/feedback", headers=auth(alice), json={"conversation_id": cid, "message_index": 1, "rating": "up"})
    assert fb.status_code == 200
    conv = gw.store.get(cid)
    assert [(f["message_index"], f["rating"], f["comment"]) for f in conv["feedback"]] == [(3, "down", "wrong"), (1, "up", "")]


def test_feedback_is_validated(gw):
    c = gw.client
    r = c.post("/v1/chat/completions", headers=auth(CHAT), json={"messages": [{"role": "user", "content": "hi"}]})
    cid = r.headers["x-conversation-id"]
    assert c.post("/v1/feedback", headers=auth(CHAT), json={"conversation_id": "nope", "rating": "up"}).status_code == 404
    assert c.post("/v1/feedback", headers=auth(CHAT), json={"conversation_id": cid, "rating": "meh"}).status_code == 400
    assert c.post("/v1/feedback", headers=auth(CHAT),
                  json={"conversation_id": cid, "rating": "up", "message_index": 0}).status_code == 400  # a user message
    assert c.post("/v1/feedback", headers=auth(CHAT), json={"rating": "up"}).status_code == 400


def test_conversation_ids_explicit_derived_and_branches(gw):
    c = gw.client

    def ask(who, messages, headers=None, status=200, **body):
        r = c.post("/v1/chat/completions", headers={**auth(gw.keys[who]), **(headers or {})},
                   json={"messages": messages, **body})
        assert r.status_code == status, r.text
        return (r.headers["x-conversation-id"], r.json()["choices"][0]["message"]["content"]) if status == 200 else r

    q = [{"role": "user", "content": "Tell me a joke"}]
    a, ans = ask("bob", q)
    b, _ = ask("carol", q, user="bob")              # same question, another user (claiming to be bob): another conversation
    assert a != b
    a2, _ = ask("bob", q + [{"role": "assistant", "content": ans}, {"role": "user", "content": "another"}])
    assert a2 == a                                  # grows the same conversation
    a3, _ = ask("bob", q + [{"role": "assistant", "content": "a different answer"}, {"role": "user", "content": "x"}])
    assert a3 not in (a, b)                         # same opening, other history: a branch, nothing overwritten
    assert len(gw.store.get(a)["messages"]) == 4

    e1, _ = ask("dave", q, headers={"X-Conversation-Id": "chat-42"})
    assert e1 == "chat-42"
    e2, _ = ask("dave", [{"role": "user", "content": "other"}], metadata={"conversation_id": "chat-43"})
    assert e2 == "chat-43" and "metadata" not in gw.stub.requests[-1]
    n = len(gw.stub.requests)
    r = ask("eve", q, headers={"X-Conversation-Id": "chat-42"}, status=403, user="dave")  # someone else's id
    assert "another user" in r.json()["detail"] and len(gw.stub.requests) == n  # refused before vLLM
    assert gw.store.get("chat-42")["user_hash"] == gw.store.hash_user(None, "userkey:dave")
    assert len(gw.store.get("chat-42")["messages"]) == 2


def test_export_honours_consent_and_since(gw):
    c = gw.client

    def ask(text, consent=None):
        h = auth(CHAT) if consent is None else {**auth(CHAT), "X-Consent-Train": consent}
        r = c.post("/v1/chat/completions", headers=h, json={"messages": [{"role": "user", "content": text}]})
        assert r.status_code == 200
        return r.headers["x-conversation-id"]

    first = ask("one")                       # no header: the default (this app is made with consent_default=True)
    no = ask("two", "false")
    yes = ask("three", "true")
    assert c.post("/v1/chat/completions", headers={**auth(CHAT), "X-Consent-Train": "maybe"},
                  json={"messages": [{"role": "user", "content": "x"}]}).status_code == 400

    exported = gw.store.export_conversations()
    assert [r["id"] for r in exported] == [first, yes]
    rec = exported[0]
    assert set(rec) == {"id", "messages", "source", "meta"} and rec["source"] == "gateway"
    assert rec["messages"] == [{"role": "user", "content": "one"}, {"role": "assistant", "content": "[base] you said: one"}]
    assert rec["meta"]["adapters"] == {"1": "base"} and rec["meta"]["consent"] is True
    assert [r["id"] for r in gw.store.export_conversations(consented_only=False)] == [first, no, yes]

    since = exported[0]["meta"]["seq"]
    assert [r["id"] for r in gw.store.export_conversations(since_id=since)] == [yes]
    cut = gw.store.get(no)["updated_at"]
    assert [r["id"] for r in gw.store.export_conversations(since_time=cut)] == [yes]
    # feedback changes a conversation: it is exported again after the cursor, with the feedback
    last = gw.store.export_conversations()[-1]["meta"]["seq"]
    c.post("/v1/feedback", headers=auth(CHAT), json={"conversation_id": first, "rating": "up"})
    again = gw.store.export_conversations(since_id=last)
    assert [r["id"] for r in again] == [first] and again[0]["meta"]["feedback"][0]["rating"] == "up"


def test_store_survives_reopen_and_keeps_salt(tmp_path):
    from selfevolve.store import export_conversations

    assert export_conversations(tmp_path / "c.sqlite") == []
    s = ChatStore(tmp_path / "c.sqlite")
    h = s.hash_user("u", None)
    cid = s.resolve_id(h, [{"role": "user", "content": "q"}])
    s.record_exchange(cid, h, [{"role": "user", "content": "q"}], "a", "base", True)
    s.close()
    s = ChatStore(tmp_path / "c.sqlite")
    assert s.hash_user("u", None) == h and s.get(cid)["messages"][-1] == {"role": "assistant", "content": "a"}
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r["id"] for r in export_conversations(tmp_path / "c.sqlite")] == [cid]  # while the writer is open
    s.close()


def test_routing_models_and_passthrough(gw):
    c = gw.client
    tiny_adapter(gw.run.round(2).adapter)
    assert c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 2, "activate": False}).status_code == 200
    ids = [m["id"] for m in c.get("/v1/models", headers=auth(CHAT)).json()["data"]]
    assert ids == ["base", "se-r002", "current"]
    # loaded but not live: `current` still answers with the base model, an explicit name passes through
    r = c.post("/v1/chat/completions", headers=auth(CHAT), json={"model": "", "messages": [{"role": "user", "content": "a"}]})
    assert r.headers["x-served-model"] == "base"
    r = c.post("/v1/chat/completions", headers=auth(CHAT), json={"model": "se-r002", "messages": [{"role": "user", "content": "b"}]})
    assert r.json()["model"] == "se-r002"
    r = c.post("/v1/chat/completions", headers=auth(CHAT), json={"model": "nope", "messages": [{"role": "user", "content": "c"}]})
    assert r.status_code == 404  # vLLM's answer is passed through; nothing is captured
    assert gw.store.count() == 2
    assert c.post("/v1/chat/completions", headers=auth(CHAT), json={"messages": []}).status_code == 400


def test_sse_capture_handles_split_chunks():
    events = (b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
              b'data: {"choices":[{"index":0,"delta":{"content":"lo"}},{"index":1,"delta":{"content":"X"}}]}\n\n'
              b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n')
    cap = _SSECapture()
    for i in range(0, len(events), 7):
        cap.feed(events[i:i + 7])
    assert cap.done and cap.answer == "Hello" and cap.finish == "length"


# ---------------------------------------------------------------- unit: the server process wrapper

def _fake_server(tmp_path, script: str):
    import sys

    from selfevolve.serve import VLLMServer, free_port

    class Fake(VLLMServer):
        def command(self):
            return [sys.executable, "-c", script]

    return Fake("unused", port=free_port(), log_path=tmp_path / "vllm.log", stop_timeout_s=1.0)


def test_server_that_dies_at_startup_surfaces_its_log(tmp_path):
    from selfevolve.serve import ServerError

    srv = _fake_server(tmp_path, "import sys; print('CUDA out of cheese', file=sys.stderr); sys.exit(3)")
    srv.start()
    with pytest.raises(ServerError, match="(?s)code 3.*CUDA out of cheese"):
        srv.wait_ready(timeout=30, poll_s=0.1)
    srv.stop()


def test_server_wait_times_out_and_stop_kills_the_group(tmp_path):
    import os

    from selfevolve.serve import ServerError

    # a child that ignores SIGTERM and has a grandchild: stop() must still end the whole group
    srv = _fake_server(tmp_path, "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "subprocess.Popen(['sleep', '300']); print('up', flush=True); time.sleep(300)")
    srv.start()
    pgid = srv.proc.pid
    with pytest.raises(ServerError, match="not ready after"):
        srv.wait_ready(timeout=1.5, poll_s=0.2)  # wait_ready stops it on timeout
    assert srv.proc is None
    t = time.monotonic()
    while time.monotonic() - t < 10:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("process group still alive after stop()")


# ---------------------------------------------------------------- integration: real vLLM, real adapters

@pytest.fixture(scope="module")
def live(default_cfg, tmp_path_factory):
    """One real vLLM server + the gateway (uvicorn, loopback) for the module; both always stopped."""
    from selfevolve.serve import VLLMServer, free_port

    root = tmp_path_factory.mktemp("serve")
    run = RunLayout.of(root / "runs", "it")
    run.dir.mkdir(parents=True)
    for n in (1, 2, 3):
        build_random_adapter(default_cfg.model.path, run.round(n).adapter, seed=n)
    server = VLLMServer(default_cfg.model.path, port=free_port(), max_lora_rank=16, max_loras=4,
                        kvcache_gb=default_cfg.backend.cpu_kvcache_gb, log_path=run.vllm_log)
    store = gateway = None
    try:
        server.start()
        server.wait_ready(timeout=300)
        store = ChatStore(run.chats_db)
        deployer = Deployer(run, server.url, server.headers, max_rank=16)
        app = create_app(store=store, deployer=deployer, vllm_url=server.url, vllm_headers=server.headers,
                         keys=Keys(CHAT, ADMIN))
        gateway = GatewayThread(app).start()
        yield SimpleNamespace(url=gateway.url, run=run, store=store, deployer=deployer, server=server)
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
        if store is not None:
            store.close()


def _client(live):
    from openai import OpenAI

    return OpenAI(base_url=live.url + "/v1", api_key=CHAT, timeout=120, max_retries=0)


def _admin(live, route, payload=None, method="post"):
    return getattr(httpx, method)(live.url + route, headers=auth(ADMIN), timeout=120,
                                  **({"json": payload} if method == "post" else {}))


def _ensure_live(live, n):
    if live.deployer.state["live"] != f"se-r{n:03d}":
        r = _admin(live, "/admin/adapters/load", {"round": n})
        assert r.status_code == 200, r.text


@pytest.mark.integration
def test_vllm_is_internal_only(live):
    # loopback only, and the internal key is required: without it vLLM's /v1 answers 401
    assert live.server.url.startswith("http://127.0.0.1:")
    assert httpx.get(live.server.url + "/v1/models", timeout=10).status_code == 401


@pytest.mark.integration
def test_openai_client_chats_are_captured_with_adapter(live):
    client = _client(live)
    q = [{"role": "user", "content": "Name one colour of the rainbow."}]
    consent = {"X-Consent-Train": "true"}  # serve.consent_default is false: exported only when the client says so
    raw = client.chat.completions.with_raw_response.create(model="current", messages=q, max_tokens=12, temperature=0,
                                                           user="it-user", extra_headers=consent)
    resp = raw.parse()
    cid = raw.headers["x-conversation-id"]
    answer = resp.choices[0].message.content
    assert answer and resp.choices[0].finish_reason in ("stop", "length")
    served = live.deployer.live_model
    assert resp.model == served

    follow = q + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And another one?"}]
    stream = client.chat.completions.create(model="current", messages=follow, max_tokens=12, temperature=0,
                                            stream=True, user="it-user", extra_headers=consent)
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text
    conv = live.store.get(cid)
    assert conv is not None and len(conv["messages"]) == 4 and conv["messages"][3]["content"] == text
    assert [e["adapter"] for e in conv["exchanges"]] == [served, served]
    assert conv["user_hash"] == live.store.hash_user(None, CHAT)  # the key's identity, whatever ``user`` said
    exported = {r["id"]: r for r in live.store.export_conversations()}
    assert exported[cid]["meta"]["adapters"] == {"1": served, "3": served}


@pytest.mark.integration
def test_deploy_real_adapter_then_current_answers_through_it(live):
    client = _client(live)
    q = [{"role": "user", "content": "Write one sentence about the sea."}]
    base = client.chat.completions.create(model="base", messages=q, max_tokens=16, temperature=0).choices[0].message.content

    if live.deployer.state["live"] == "se-r001":  # a rerun within the module: start from the base model
        _admin(live, "/admin/rollback")
    r = _admin(live, "/admin/adapters/load", {"round": 1})
    assert r.status_code == 200, r.text
    assert r.json()["live"] == "se-r001"
    assert json.loads(live.run.current.read_text())["live"] == "se-r001"
    ids = [m.id for m in client.models.list().data]
    assert "se-r001" in ids and "current" in ids

    out = client.chat.completions.create(model="current", messages=q, max_tokens=16, temperature=0)
    assert out.model == "se-r001"
    assert out.choices[0].message.content != base  # a real adapter, answering without any restart


def _wait_for(cond, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.integration
def test_hot_swap_while_streaming_loses_no_request(live):
    _ensure_live(live, 1)
    client = _client(live)
    streams, errors, stop = [], [], threading.Event()

    def chat(i):
        # Streams back to back until the deploy has returned, so some are in flight whatever the deploy's length
        # (a fixed number of streams raced it: they could all end before a slow deploy began its switch).
        while not stop.is_set():
            began = time.monotonic()
            try:
                stream = client.chat.completions.create(
                    model="current", stream=True, max_tokens=48, temperature=0.7,
                    messages=[{"role": "user", "content": f"Count from {i} to {i + 100}, one number per line."}])
                text, finish, model = "", None, None
                for ch in stream:
                    model = ch.model
                    if ch.choices:
                        text += ch.choices[0].delta.content or ""
                        finish = ch.choices[0].finish_reason or finish
                streams.append((began, time.monotonic(), model, text, finish))
            except Exception as e:  # noqa: BLE001 - any failure is the test's failure
                errors.append(repr(e))
                return

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    _wait_for(lambda: len(streams) >= 2 or errors)
    deploy_began = time.monotonic()
    r = _admin(live, "/admin/adapters/load", {"round": 2})
    switched = time.monotonic()
    _wait_for(lambda: sum(began > switched for began, *_ in streams) >= 2 or errors)
    stop.set()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert r.status_code == 200, r.text
    assert errors == []
    assert all(text and finish in ("stop", "length") for *_, text, finish in streams)
    before = {model for began, ended, model, *_ in streams if ended < deploy_began}
    during = [s for s in streams if s[0] < switched and s[1] > deploy_began]
    after = {model for began, ended, model, *_ in streams if began > switched}
    assert before == {"se-r001"} and after == {"se-r002"}, (before, after)
    assert during and {s[2] for s in during} <= {"se-r001", "se-r002"}  # streams in flight across the swap finished
    state = json.loads(live.run.current.read_text())
    assert (state["live"], state["previous"]) == ("se-r002", "se-r001")
    answer = _client(live).chat.completions.create(model="current", max_tokens=4,
                                                   messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "se-r002"


@pytest.mark.integration
def test_broken_or_foreign_adapters_are_refused_and_live_is_unchanged(live, tmp_path):
    _ensure_live(live, 2)
    before = live.run.current.read_bytes()

    corrupt = live.run.round(7).adapter
    shutil.copytree(live.run.round(1).adapter, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 500)
    r = _admin(live, "/admin/adapters/load", {"round": 7})
    assert r.status_code == 400 and "corrupt" in r.json()["detail"]

    outside = shutil.copytree(live.run.round(1).adapter, tmp_path / "elsewhere")
    r = _admin(live, "/admin/adapters/load", {"round": 8, "path": str(outside)})
    assert r.status_code == 400 and "outside the run" in r.json()["detail"]

    # well-formed file with a module this model does not have: refused by the checks (before vLLM sees it)
    from safetensors.numpy import load_file, save_file

    odd = shutil.copytree(live.run.round(1).adapter, live.run.round(9).adapter)
    tensors = load_file(str(odd / "adapter_model.safetensors"))
    save_file({k.replace("q_proj", "zz_proj"): v for k, v in tensors.items()}, str(odd / "adapter_model.safetensors"))
    r = _admin(live, "/admin/adapters/load", {"round": 9})
    assert r.status_code == 400 and "zz_proj" in r.json()["detail"], r.text

    assert live.run.current.read_bytes() == before
    names = _admin(live, "/admin/current", method="get").json()["loaded"]
    assert not {"se-r007", "se-r008", "se-r009"} & set(names)
    out = _client(live).chat.completions.create(model="current", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert out.model == "se-r002"


@pytest.mark.integration
def test_rollback_switches_back(live):
    _ensure_live(live, 1)
    _ensure_live(live, 3)
    assert (live.deployer.state["live"], live.deployer.state["previous"]) == ("se-r003", "se-r001")
    r = _admin(live, "/admin/rollback")
    assert r.status_code == 200, r.text
    state = json.loads(live.run.current.read_text())
    assert (state["live"], state["previous"]) == ("se-r001", "se-r003")
    assert [h["event"] for h in state["history"]][-1] == "rollback"
    out = _client(live).chat.completions.create(model="current", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert out.model == "se-r001"
    # older adapters were unloaded when they stopped being live or previous
    loaded = _admin(live, "/admin/current", method="get").json()["loaded"]
    assert set(n for n in loaded if n.startswith("se-r")) == {"se-r001", "se-r003"}


CHROMIUM = Path("/usr/bin/chromium")
# Debian's chromium driven by Playwright (no bundled browser is downloaded). No sandbox (CI runs as root); no
# background networking, or it floods a closed network with refused connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _why_no_browser() -> str:
    """Why the chat page cannot be driven in headless Chromium here; "" when it can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (Debian package `chromium`; .ci/run installs it when it can)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python playwright is not installed (`pip install -e '.[test]'`)"
    return ""


@pytest.mark.integration
@pytest.mark.skipif(bool(_why_no_browser()), reason=_why_no_browser() or "browser available")
def test_chat_page_in_headless_chromium(live):
    """A person opens the page with ?key=, types a question, presses Send, sees the answer, gives a thumbs up:
    the exchange and the feedback land in the SQLite store."""
    import re

    from playwright.sync_api import expect, sync_playwright

    question = "Name one color of the sky."
    page_errors, console_errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{live.url}/?key={CHAT}")
            assert CHAT not in page.url and "key=" not in page.url, page.url  # the page strips the key
            expect(page.locator("#key")).to_have_value(CHAT)

            page.fill("#box", question)
            page.click("#send")
            # the assistant bubble is marked done once the stream ended; a failed request shows in #status instead
            # (a locator, not wait_for_function: the page's CSP forbids the eval that would need)
            page.locator("#log .msg.assistant[data-state=done], #status:not(:empty)").first.wait_for(
                timeout=180_000)  # SmolLM2-135M on a small CPU, up to the page's 512 tokens
            assert page.text_content("#status") == "", (page.text_content("#status"), console_errors)
            expect(page.locator("#log .msg.user .body")).to_have_text(question)
            bubble = page.locator("#log .msg.assistant").last
            answer = bubble.locator(".body").text_content()
            assert answer and answer.strip(), "the page shows an empty answer"

            up = bubble.locator("button[data-rating=up]")
            up.click()
            expect(up).to_have_class(re.compile(r"\bsent\b"))  # set only after /v1/feedback answered 200
            assert page.text_content("#status") == ""
            assert page_errors == [], page_errors
        finally:
            browser.close()

    convs = [c for c in live.store.export_conversations() if c["messages"][0]["content"] == question]
    assert len(convs) == 1, convs
    conv = convs[0]
    assert conv["id"].startswith("web-")  # the page's own conversation id was kept
    assert conv["messages"] == [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    assert conv["meta"]["consent"] is True  # the page's consent box is checked by default
    assert conv["meta"]["feedback"] == [{"message_index": 1, "rating": "up", "comment": ""}]
    assert [e["stream"] for e in live.store.get(conv["id"])["exchanges"]] == [True]
