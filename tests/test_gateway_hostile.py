"""Hostile clients against the real gateway: uvicorn on a loopback port, in front of a stand-in for vLLM's
OpenAI server that is itself a real HTTP server on loopback (so connections, not mocks, are counted).

Every request is sent over a real socket, most of them as raw bytes (non-Latin-1 headers, bodies that lie about
their length, clients that leave mid-stream). The rules checked: no 5xx and no dropped connection for any client
input; refused input reaches neither vLLM nor the store; identity is the key, never the ``user`` field; two users
racing on one conversation id cannot both get it; over-limit callers get 429 with Retry-After; after ~600 hostile
requests the gateway holds no upstream connection and still answers at once. The last test prints the totals.
"""
from __future__ import annotations

import json
import select
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from selfevolve.config import ServeConfig
from selfevolve.deploy import Deployer
from selfevolve.errors import ConfigError
from selfevolve.gateway import Keys, create_app
from selfevolve.gateway_limits import GatewayLimits, RateLimiter
from selfevolve.layout import RunLayout
from selfevolve.store import ChatStore
from selfevolve.userkeys import UserKeyError, UserKeys, issue, list_keys, revoke

from helpers import GatewayThread

CHAT, ADMIN = "hostile-chat-key", "hostile-admin-key"
USERS = ("alice", "bob", "mallory", "carol", "dave")
STATS = Counter()
SERVER_ERRORS: list[str] = []


# ---------------------------------------------------------------- the stand-in for vLLM

class StandIn:
    """vLLM's OpenAI routes as far as the gateway uses them, validating like vLLM (400 / 404), on a real port.
    Model ``slow`` streams its words 0.15 s apart (long-lived streams for the concurrency cap)."""

    MODELS = ("base", "slow")

    def __init__(self):
        self.seen: list[str] = []  # the raw bodies that reached it
        self.app = app = FastAPI()

        @app.get("/health")
        async def health():
            return Response(status_code=200)

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": m, "object": "model"} for m in self.MODELS]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            raw = await request.body()
            self.seen.append(raw.decode("utf-8"))
            body = json.loads(raw)
            if body.get("model") not in self.MODELS:
                return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist."}}, 404)
            mt = body.get("max_tokens", 16)
            if not isinstance(mt, int) or isinstance(mt, bool) or not 0 < mt <= 4096:
                return JSONResponse({"error": {"message": "max_tokens: must be an integer in [1, 4096]"}}, 400)
            content = body["messages"][-1].get("content")
            answer = f"[{body['model']}] you said: {content if isinstance(content, str) else '...'}"
            if not body.get("stream"):
                return {"object": "chat.completion", "model": body["model"], "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}
            delay = 0.15 if body["model"] == "slow" else 0.0

            async def events():
                import asyncio

                for i, word in enumerate(answer.split(" ")):
                    delta = {"content": (" " if i else "") + word}
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n"
                    await asyncio.sleep(delay)
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")


def _gateway(tmp, standin_url: str, limits: GatewayLimits):
    run = RunLayout.of(tmp / "runs", "hostile")
    run.dir.mkdir(parents=True)
    store = ChatStore(run.chats_db)
    keys = {u: issue(run.user_keys, u)[0] for u in USERS}
    app = create_app(store=store, deployer=Deployer(run, standin_url, {}, max_rank=16), vllm_url=standin_url,
                     vllm_headers={}, keys=Keys(CHAT, ADMIN), consent_default=False, limits=limits,
                     user_keys=UserKeys(run.user_keys), request_timeout_s=30.0)
    return SimpleNamespace(app=app, run=run, store=store, keys=keys, state=app.state.gateway)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    standin = StandIn()
    with GatewayThread(standin.app) as upstream:
        # the flood gateway: a 1 MiB body limit keeps the tests fast; no rate limit (the flood is one caller)
        gw = _gateway(tmp_path_factory.mktemp("gw"), upstream.url,
                      GatewayLimits(max_body_bytes=1 << 20, max_json_depth=32, rate_per_minute=0, max_concurrent=64))
        with GatewayThread(gw.app) as server:
            yield SimpleNamespace(**vars(gw), port=server.port, url=server.url, standin=standin, upstream=upstream)
        gw.store.close()


# ---------------------------------------------------------------- clients that count what they got

def _count(what: str, status: int) -> int:
    STATS["requests"] += 1
    if status == 0 or status >= 500:
        STATS["5xx"] += 1
        SERVER_ERRORS.append(f"{status} for {what}")
    return status


def raw(port: int, method: str, path: str, headers=(), body: bytes | None = b"", what: str = "",
        timeout: float = 15.0) -> tuple[int, dict, bytes]:
    """One request as bytes on a fresh socket (``Connection: close``). Header names and values may be any bytes.
    Status 0: the connection closed without a response (counted like a 5xx)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    names = set()
    for k, v in headers:
        k, v = (x.encode("utf-8") if isinstance(x, str) else x for x in (k, v))
        names.add(k.lower())
        lines.append(k + b": " + v)
    if body is not None and b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: %d" % len(body))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        except OSError:
            pass  # the server may answer (and close) before reading all of it: the answer is what counts
        data = _read_all(s)
    return _parse(data, what or f"{method} {path}")


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def _parse(data: bytes, what: str) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n")
    try:
        status = int(parts[0].split()[1])
    except (IndexError, ValueError):
        status = 0
    headers = {}
    for line in parts[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    return _count(what, status), headers, body


def auth(key) -> tuple:
    return (b"Authorization", b"Bearer " + (key.encode("utf-8") if isinstance(key, str) else key))


def chat_body(content="hi", **fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": content}], **fields}).encode()


def post_chat(env, key, body: bytes, headers=(), what="") -> tuple[int, dict, bytes]:
    return raw(env.port, "POST", "/v1/chat/completions", [auth(key), (b"Content-Type", b"application/json"),
                                                          *headers], body, what=what or body[:80].decode("latin-1"))


def ok_chat(env, key, content: str, stream=False, headers=()) -> tuple[int, dict, bytes]:
    return post_chat(env, key, chat_body(content, stream=stream), headers, what="normal chat")


# ---------------------------------------------------------------- the hostile cases (also the flood's material)

BAD_IDS = ["会话-1", "a\r\nX-Injected: 1", "café", "x" * 129, "with space", "tab\there", "\x00nul", ""]
BAD_MODELS = ["模型", "base\r\nX-Injected: 1", "café", "base\n", " base", "a" * 201, 5, [], {}, True]


def hostile_cases(env, tag: str) -> list[tuple[str, dict, set[int]]]:
    """(what, request kwargs for ``raw``, acceptable statuses). Every case must be refused before vLLM."""
    k, h = env.keys["mallory"], f"HOSTILE-{tag}"
    js = (b"Content-Type", b"application/json")
    cases = []

    def chat(what, body, headers=(), ok=frozenset({400})):
        cases.append((what, dict(method="POST", path="/v1/chat/completions", headers=[auth(k), js, *headers],
                                 body=body), set(ok)))

    for stream in (False, True):
        for bad in BAD_IDS[:-1]:
            chat(f"conversation id {bad!r} stream={stream}",
                 chat_body(h, stream=stream, metadata={"conversation_id": bad}))
        for bad in BAD_MODELS:
            chat(f"model {bad!r} stream={stream}", chat_body(h, stream=stream, model=bad))
        chat(f"UTF-8 conversation id header stream={stream}", chat_body(h, stream=stream),
             [(b"X-Conversation-Id", "会话".encode())])
    for key in ("ключ".encode(), "clé".encode("latin-1"), b"\xff\xfe", "sk-user-é".encode()):
        cases.append((f"bearer key {key!r}", dict(method="POST", path="/v1/chat/completions",
                                                   headers=[auth(key), js], body=chat_body(h)), {401}))
        cases.append((f"bearer key {key!r} on admin", dict(method="GET", path="/admin/current",
                                                            headers=[auth(key)], body=None), {401}))
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    chat("JSON nested 100,000 deep", deep)
    chat("JSON nested 40 deep", b'{"messages": [{"role": "user", "content": ' + b"[" * 36 + b"]" * 36 + b"}]}")
    chat("lone surrogate in content", json.dumps({"messages": [{"role": "user", "content": h + "\ud800"}]}).encode())
    chat("lone surrogate in user", chat_body(h, user="\udfff"))
    chat("lone surrogate in a key", json.dumps({"messages": [{"role": "user", "content": h, "\ud83d": 1}]}).encode())
    chat("lone surrogate in conversation id", chat_body(h, metadata={"conversation_id": "c\ud800"}))
    for bad in (b"{", b"", b"\xff\xfe{}", b"[1, 2]", b'"x"', b"null", b"{'a': 1}", b'{"messages": NaN}',
                chat_body(h, temperature=float("nan")), b'{"messages": [{"role": "user", "content": "x"}], "top_p": 1e999}',
                b'{"messages": [], "max_tokens": ' + b"9" * 5000 + b"}", "{\"messages\": \"é\"}".encode("latin-1")):
        chat(f"invalid JSON {bad[:40]!r}", bad)
    for field, value in [("messages", "hi"), ("messages", {}), ("messages", []), ("messages", [1]),
                         ("messages", [{"role": 1, "content": h}]), ("messages", [{"role": "user", "content": 5}]),
                         ("messages", [{"role": "wizard", "content": h}]), ("messages", None),
                         ("stream", "yes"), ("stream", 1), ("metadata", []), ("metadata", "x"),
                         ("metadata", {"conversation_id": 5}), ("metadata", {"conversation_id": ["a"]}),
                         ("user", {}), ("user", 5)]:
        body = {"messages": [{"role": "user", "content": h}], field: value}
        chat(f"{field}={value!r}", json.dumps(body).encode())
    chat("X-Consent-Train: maybe", chat_body(h), [(b"X-Consent-Train", b"maybe")])
    chat("X-Consent-Train non-ASCII", chat_body(h), [(b"X-Consent-Train", "ja-wohl-ü".encode())])
    for body in ({"conversation_id": 5, "rating": "up"}, {"conversation_id": "c\ud800", "rating": "up"},
                 {"conversation_id": "nope", "rating": 5}, {"conversation_id": "x", "rating": "up", "message_index": "1"},
                 {"conversation_id": "x", "rating": "up", "message_index": 10 ** 30}, {"rating": "up"},
                 {"conversation_id": "x", "rating": "up", "comment": 5}, [1]):
        cases.append((f"feedback {body!r}", dict(method="POST", path="/v1/feedback", headers=[auth(k), js],
                                                  body=json.dumps(body).encode()), {400, 404}))
    admin = [auth(ADMIN), js]  # (what reaches the deployer, paths and names, is tests/test_deploy.py's)
    for path, body in [("/admin/adapters/load", {"round": "1"}), ("/admin/adapters/load", {"round": 10 ** 30}),
                       ("/admin/adapters/load", {"round": 1, "path": "a\x00b"}),
                       ("/admin/adapters/load", {"round": 1, "activate": "yes"}), ("/admin/adapters/unload", {"name": 5}),
                       ("/admin/adapters/unload", {"name": "x" * 10_000}), ("/admin/adapters/unload", {"round": "x"})]:
        cases.append((f"admin {path} {str(body)[:40]}", dict(method="POST", path=path, headers=admin,
                                                            body=json.dumps(body).encode()), {400, 404, 409}))
    return cases


# ---------------------------------------------------------------- tests

def test_every_hostile_case_is_refused_without_5xx_vllm_or_store(env):
    before_seen, before_count = len(env.standin.seen), env.store.count()
    for what, req, ok in hostile_cases(env, "single"):
        status, _, body = raw(env.port, what=what, **req)
        assert status in ok, f"{what}: {status} {body[:200]!r}"
    assert not [s for s in env.standin.seen[before_seen:] if "HOSTILE" in s]  # refused before vLLM
    assert env.store.count() == before_count                                   # and nothing stored
    assert all(c["messages"][0]["content"].find("HOSTILE") < 0 for c in env.store.export_conversations(
        consented_only=False))


def test_a_model_name_vllm_does_not_serve_passes_its_refusal_through(env):
    for stream in (False, True):
        status, headers, body = post_chat(env, env.keys["bob"], chat_body("FORWARDED", model="nope", stream=stream))
        assert status == 404 and b"does not exist" in body and headers["x-served-model"] == "nope"
        status, _, body = post_chat(env, env.keys["bob"], chat_body("FORWARDED", max_tokens="many", stream=stream))
        assert status == 400 and b"max_tokens" in body


def test_huge_bodies_get_413_and_are_not_stored(env):
    before = env.store.count()
    # a 100 MB body, declared: refused from its Content-Length before a byte of it is read
    t0 = time.monotonic()
    status, _, _ = raw(env.port, "POST", "/v1/chat/completions",
                       [auth(env.keys["alice"]), (b"Content-Length", b"%d" % (100 * 1024 * 1024))], b"{" * 4096,
                       what="100 MB body")
    assert status == 413 and time.monotonic() - t0 < 5
    # 8 MB sent chunked (no length): refused once 1 MiB has arrived
    with socket.create_connection(("127.0.0.1", env.port), timeout=15) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Authorization: Bearer " + env.keys["alice"].encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b'{"messages": [{"role": "user", "content": "' + b"A" * 65536
        for _ in range(128):
            if select.select([s], [], [], 0)[0]:
                break  # the answer is there: stop sending
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                break
        status, _, _ = _parse(_read_all(s), "8 MB chunked body")
    assert status == 413
    # just under the limit is fine, and stored
    big = "B" * ((1 << 20) - 200)
    status, _, _ = ok_chat(env, env.keys["alice"], big)
    assert status == 200 and env.store.count() == before + 1


def test_non_latin1_ids_and_models_never_open_the_upstream(env):
    """The issue's leak: a streamed request whose id could not go back in a header opened the upstream, then
    failed building the response (500) and never closed it. Now it is a 400 before anything is opened."""
    before = len(env.standin.seen)
    for stream in (False, True):
        for cid in ("会话-1", "a\r\nb"):
            status, headers, _ = post_chat(env, env.keys["alice"], chat_body("x", stream=stream,
                                                                           metadata={"conversation_id": cid}))
            assert status == 400 and "x-conversation-id" not in headers
    assert len(env.standin.seen) == before


def test_identity_is_the_key_not_the_user_field(env):
    alice, mallory = env.keys["alice"], env.keys["mallory"]
    cid = f"alice-{uuid.uuid4().hex[:8]}"
    status, headers, _ = ok_chat(env, alice, "my secret plans", headers=[(b"X-Conversation-Id", cid.encode())])
    assert status == 200 and headers["x-conversation-id"] == cid
    # mallory claims to be alice, on her own key and on the shared key: alice's conversation is not theirs
    for key in (mallory, CHAT):
        status, _, _ = post_chat(env, key, chat_body("overwritten", user="alice"), [(b"X-Conversation-Id", cid.encode())])
        assert status == 403
        status, _, _ = raw(env.port, "POST", "/v1/feedback", [auth(key)],
                           json.dumps({"conversation_id": cid, "rating": "down"}).encode())
        assert status == 404
    # the same opening question under a spoofed user lands in mallory's own conversation, not alice's
    status, headers, _ = post_chat(env, mallory, chat_body("my secret plans", user="alice"))
    assert status == 200 and headers["x-conversation-id"] != cid
    conv = env.store.get(cid)
    assert [m["content"] for m in conv["messages"]] == ["my secret plans", "[base] you said: my secret plans"]
    assert len(conv["exchanges"]) == 1 and not conv["feedback"]
    # the ``user`` field is not an identity at all: with and without it, one key is one user
    _, h1, _ = post_chat(env, mallory, chat_body("hello there", user="x"))
    _, h2, _ = post_chat(env, mallory, chat_body("hello there"))
    assert env.store.get(h1["x-conversation-id"])["user_hash"] == env.store.get(h2["x-conversation-id"])["user_hash"]


def test_two_users_racing_on_one_conversation_id(env):
    outcomes = Counter()
    for i in range(12):
        cid, barrier, results = f"shared-{i}-{uuid.uuid4().hex[:6]}", threading.Barrier(2), {}

        def go(who):
            barrier.wait()
            results[who] = post_chat(env, env.keys[who], chat_body(f"{who} says {i}", stream=bool(i % 2)),
                                     [(b"X-Conversation-Id", cid.encode())])

        threads = [threading.Thread(target=go, args=(w,)) for w in ("alice", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        statuses = sorted(r[0] for r in results.values())
        assert statuses == [200, 403], statuses  # one of them, never both
        winner = next(w for w, r in results.items() if r[0] == 200)
        outcomes[winner] += 1
        conv = env.store.get(cid)
        assert conv["messages"][0]["content"] == f"{winner} says {i}" and len(conv["exchanges"]) == 1
        assert results[winner][1]["x-conversation-id"] == cid


def test_clients_that_leave_early_free_their_upstream(env):
    for when in ("before any byte", "after the headers"):
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
                body = json.dumps({"model": "slow", "stream": True, "messages": [
                    {"role": "user", "content": "DISCONNECT one two three four five six"}]}).encode()
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                          + env.keys["carol"].encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\n\r\n" + body)
                if when == "after the headers":
                    assert s.recv(64).startswith(b"HTTP/1.1 200")
            STATS["requests"] += 1
            STATS["client left"] += 1
    _wait_for_quiet(env)
    assert env.state.limiter.in_flight("user:carol") == 0


def _pool_in_use(env) -> tuple[int, int]:
    """(connections checked out of the gateway's pool to the stand-in, idle ones kept alive)."""
    conns = env.state.http._transport._pool.connections
    busy = sum(1 for c in conns if not c.is_idle())
    return busy, len(conns) - busy


def _wait_for_quiet(env, timeout: float = 10.0) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    while True:
        busy, idle = _pool_in_use(env)
        open_upstream = len(env.upstream.server.server_state.connections)
        if (busy == 0 and open_upstream <= idle) or time.monotonic() > deadline:
            return busy, idle, open_upstream
        time.sleep(0.05)


def test_flood_of_hostile_requests_leaks_nothing_and_the_gateway_stays_fast(env):
    cases = hostile_cases(env, "flood")
    n_flood = 600
    bad: list[str] = []
    before_seen = len(env.standin.seen)

    def worker(offset):
        for j in range(offset, n_flood, 8):
            what, req, ok = cases[j % len(cases)]
            status, _, _ = raw(env.port, what=what, **req)
            if status not in ok:
                bad.append(f"{what}: {status}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    flood_s = time.monotonic() - t0
    assert bad == []
    assert not [s for s in env.standin.seen[before_seen:] if "HOSTILE" in s]
    busy, idle, open_upstream = _wait_for_quiet(env)
    assert busy == 0, f"{busy} upstream connections leaked"
    assert open_upstream <= idle, f"{open_upstream} connections open at the stand-in, {idle} idle in the pool"
    # normal requests, streamed and not, answer at once (the leak made them wait 60 s for a pool slot)
    times = []
    for i in range(20):
        t = time.monotonic()
        status, _, body = ok_chat(env, env.keys["dave"], f"still there {i}?", stream=bool(i % 2))
        times.append(time.monotonic() - t)
        assert status == 200 and b"still" in body and b"[DONE]" in body if i % 2 else b"still there" in body
    assert max(times) < 5.0
    STATS["flood"] = n_flood
    STATS["flood_s"] = round(flood_s, 2)
    STATS["normal_median_ms"] = round(1000 * statistics.median(times), 1)
    STATS["normal_max_ms"] = round(1000 * max(times), 1)
    STATS["leaked"] = busy
    STATS["upstream_open_after"] = open_upstream


# ---------------------------------------------------------------- limits

@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    standin = StandIn()
    with GatewayThread(standin.app) as upstream:
        gw = _gateway(tmp_path_factory.mktemp("lim"), upstream.url,
                      GatewayLimits(rate_per_minute=30, burst=5, max_concurrent=2))
        with GatewayThread(gw.app) as server:
            yield SimpleNamespace(**vars(gw), port=server.port, standin=standin)
        gw.store.close()


def test_rate_limit_answers_429_with_retry_after(limited):
    alice = limited.keys["alice"]
    statuses = [raw(limited.port, "GET", "/v1/models", [auth(alice)], None)[0] for _ in range(5)]
    assert statuses == [200] * 5
    status, headers, body = raw(limited.port, "GET", "/v1/models", [auth(alice)], None)
    assert status == 429 and 1 <= int(headers["retry-after"]) <= 3 and b"rate limit" in body
    status, _, _ = post_chat(limited, alice, chat_body("over the limit"))
    assert status == 429                                        # nothing forwarded, nothing stored
    assert not [s for s in limited.standin.seen if "over the limit" in s]
    assert raw(limited.port, "GET", "/v1/models", [auth(limited.keys["bob"])], None)[0] == 200  # others unaffected
    assert all(raw(limited.port, "GET", "/v1/models", [auth(ADMIN)], None)[0] == 200 for _ in range(8))
    time.sleep(int(headers["retry-after"]))
    assert raw(limited.port, "GET", "/v1/models", [auth(alice)], None)[0] == 200  # after Retry-After: served


def test_concurrency_cap_counts_streams_until_they_end(limited):
    carol, results = limited.keys["carol"], []
    slow = json.dumps({"model": "slow", "stream": True, "messages": [{"role": "user", "content": "a b c d"}]}).encode()
    threads = [threading.Thread(target=lambda: results.append(post_chat(limited, carol, slow)[0])) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while limited.state.limiter.in_flight("user:carol") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    status, headers, _ = post_chat(limited, carol, chat_body("a third one"))
    assert status == 429 and headers["retry-after"] == "1"
    for t in threads:
        t.join(30)
    assert results == [200, 200]
    deadline = time.monotonic() + 5  # the server's cleanup runs just after the last byte went out
    while limited.state.limiter.in_flight("user:carol") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert limited.state.limiter.in_flight("user:carol") == 0
    assert post_chat(limited, carol, chat_body("now there is room"))[0] == 200


def test_rate_and_daily_quota_arithmetic():
    now = [1000.0]
    lim = RateLimiter(GatewayLimits(rate_per_minute=60, burst=2, daily_quota=4), clock=lambda: now[0])
    lim.admit("u")
    lim.admit("u")
    with pytest.raises(Exception) as e:
        lim.admit("u")
    assert e.value.status_code == 429 and e.value.headers["Retry-After"] == "1"
    now[0] += 1.0
    lim.admit("u")                       # one token back after a second at 60/min
    now[0] += 10.0
    lim.admit("u")                       # 4th counted request of the day
    with pytest.raises(Exception) as e:
        lim.admit("u")
    assert e.value.status_code == 429 and "daily quota" in e.value.detail
    assert 1 <= int(e.value.headers["Retry-After"]) <= 86400
    lim.admit("v")                       # per identity


def test_serve_config_limits_are_range_checked():
    ServeConfig().validate("serve")
    for bad in (dict(max_body_bytes=10), dict(max_json_depth=2), dict(max_json_depth=5000),
                dict(rate_limit_per_minute=-1), dict(rate_limit_burst=0), dict(max_concurrent_per_user=-1),
                dict(daily_request_quota=-5)):
        with pytest.raises(ConfigError):
            ServeConfig(**bad).validate("serve")


# ---------------------------------------------------------------- per-user keys

def test_user_keys_issue_revoke_and_file_safety(env, tmp_path):
    path = env.run.user_keys
    assert path.stat().st_mode & 0o777 == 0o600 and "sk-user-" not in path.read_text()  # hashes only
    key, record = issue(path, "temp")
    assert key.startswith("sk-user-") and record["user"] == "temp"
    assert raw(env.port, "GET", "/v1/models", [auth(key)], None)[0] == 200      # live without a restart
    assert raw(env.port, "GET", "/admin/current", [auth(key)], None)[0] == 403  # a user key is no admin key
    assert revoke(path, "temp") == 1 and revoke(path, "temp") == 0
    assert raw(env.port, "GET", "/v1/models", [auth(key)], None)[0] == 401
    assert "temp" not in {r["user"] for r in list_keys(path)} and "hash" not in list_keys(path)[0]
    with pytest.raises(UserKeyError):
        issue(path, "bad name\r\n")
    # a symlink planted at the path is refused (never read or written through); so is a file others may write
    target, link = tmp_path / "target.json", tmp_path / "keys.json"
    target.write_text("do not touch")
    link.symlink_to(target)
    for attempt in (lambda: UserKeys(link), lambda: issue(link, "someone"), lambda: revoke(link, "someone")):
        with pytest.raises(UserKeyError):
            attempt()
    assert target.read_text() == "do not touch" and link.is_symlink()
    link.unlink()
    issue(link, "someone")
    link.chmod(0o664)
    with pytest.raises(UserKeyError):
        UserKeys(link)


def test_keys_cli_issue_list_revoke(tmp_path):
    from typer.testing import CliRunner

    from selfevolve.cli import app

    opts = ["--set", f"run.root={tmp_path}", "--set", "run.name=k"]
    res = CliRunner().invoke(app, ["keys", "issue", "erin", *opts])
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[0]
    keys = UserKeys(RunLayout.of(tmp_path, "k").user_keys)
    assert key.startswith("sk-user-") and keys.user_for(key) == "erin" and keys.user_for(key + "x") is None
    listed = CliRunner().invoke(app, ["keys", "list", *opts])
    assert listed.exit_code == 0 and "erin" in listed.stdout and key not in listed.stdout
    assert CliRunner().invoke(app, ["keys", "issue", "no such/user", *opts]).exit_code == 2
    assert CliRunner().invoke(app, ["keys", "revoke", "erin", *opts]).exit_code == 0
    assert keys.user_for(key) is None                               # re-read: revoked
    assert CliRunner().invoke(app, ["keys", "revoke", "erin", *opts]).exit_code == 1


def test_summary_no_5xx_for_any_client_input(capsys):
    with capsys.disabled():
        print(f"\nhostile suite: {STATS['requests']} requests tried ({STATS['flood']} in the flood, "
              f"{STATS['client left']} clients left mid-way), {STATS['5xx']} answered 5xx or dropped; "
              f"flood {STATS['flood_s']} s; upstream connections leaked after it: {STATS['leaked']} "
              f"(open at the stand-in: {STATS['upstream_open_after']}); normal requests after it: median "
              f"{STATS['normal_median_ms']} ms, max {STATS['normal_max_ms']} ms")
    assert STATS["5xx"] == 0, SERVER_ERRORS[:20]
