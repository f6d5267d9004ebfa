"""Serving replicas without a model: two in-process vLLM stubs (test_gateway.py's) behind one gateway, each
behind a transport that can refuse connections like a dead server. Spreading, retry of unsent requests, health
marking, all-or-none deploy / rollback, a failed undo taking its replica out, and a replica that comes back
being brought to the live adapter before it gets traffic again. tests/test_replicas_live.py does it with two
real vLLM servers."""
from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

from selfevolve.config import load_config
from selfevolve.deploy import Deployer
from selfevolve.errors import ConfigError
from selfevolve.cpu_split import engine_cores
from selfevolve.gateway import Keys, create_app, model_servers, upstream_pool
from selfevolve.gateway_pool import DOWN, OUT, UP, NoUpstream, Upstream, UpstreamPool
from selfevolve.layout import RunLayout
from selfevolve.store import ChatStore

from adapter_fixtures import tiny_adapter, tiny_base
from test_gateway import ADMIN, CHAT, INTERNAL, StubVLLM, auth, sse_text


class Switchable(httpx.AsyncBaseTransport):
    """An in-process stub that can be "killed": while ``down``, connecting fails as to a closed port; ``drop``:
    the next chat request's connection is lost before any response (then, with ``die``, the server is gone);
    ``dying``: every connection is dropped (a server whose processes are being killed)."""

    def __init__(self, app):
        self.inner = httpx.ASGITransport(app=app)
        self.down = self.drop = self.die = self.slow = self.dying = False

    async def handle_async_request(self, request):
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.dying:
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
        if self.slow:  # alive, but too busy to take a connection in time
            raise httpx.ConnectTimeout("timed out", request=request)
        if self.drop and request.url.path == "/v1/chat/completions":
            self.drop, self.down = False, self.die
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
        return await self.inner.handle_async_request(request)


@pytest.fixture
def pair(tmp_path):
    stubs = [StubVLLM(), StubVLLM()]
    wires = [Switchable(s.app) for s in stubs]
    run = RunLayout.of(tmp_path / "runs", "t")
    run.dir.mkdir(parents=True)
    for n in (1, 2, 3):
        tiny_adapter(run.round(n).adapter)
    pool = UpstreamPool.of(["http://vllm-a", "http://vllm-b"], {"Authorization": f"Bearer {INTERNAL}"}, wires)
    store = ChatStore(run.chats_db)
    deployer = Deployer(run, max_rank=16, base_model=tiny_base(tmp_path), pool=pool)
    app = create_app(store=store, deployer=deployer, keys=Keys(CHAT, ADMIN), consent_default=True,
                     health_interval_s=3600)  # the tests run health rounds themselves (check)
    with TestClient(app) as client:
        def check():  # one health round, on the app's own event loop
            client.portal.call(pool.check, deployer.required(), deployer.sync)

        yield SimpleNamespace(client=client, stubs=stubs, wires=wires, pool=pool, run=run, store=store,
                              deployer=deployer, check=check)
    store.close()


def chat(p, text="hi", status=200, **body):
    r = p.client.post("/v1/chat/completions", headers=auth(CHAT),
                      json={"model": "current", "messages": [{"role": "user", "content": text}], **body})
    assert r.status_code == status, r.text
    return r


def deploy(p, rnd, status=200):
    r = p.client.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": rnd})
    assert r.status_code == status, r.text
    return r.json()


def live_on_disk(p):
    return json.loads(p.run.current.read_text())["live"] if p.run.current.exists() else None


# ---------------------------------------------------------------- spreading and health

def test_chats_spread_over_both_replicas_and_are_all_captured(pair):
    for i in range(6):
        chat(pair, f"question {i}", stream=bool(i % 2))
    assert [len(s.requests) for s in pair.stubs] == [3, 3]
    assert len(pair.store.export_conversations()) == 6  # one store, whichever replica answered
    h = pair.client.get("/health").json()
    assert h["status"] == "ok" and [r["requests"] for r in h["replicas"]] == [3, 3]
    assert "url" not in json.dumps(h)  # the replicas' internal addresses stay internal


def test_fewest_in_flight_wins():
    pool = UpstreamPool.of(["http://a", "http://b", "http://c"])
    a, b, c = pool.upstreams
    a.in_flight, b.in_flight = 2, 1
    assert pool.pick() is c
    c.in_flight = 3
    assert pool.pick() is b
    pool.take_out(b, "test", DOWN)
    assert pool.pick() is a and pool.pick(exclude=[a]) is c
    for u in pool.upstreams:
        pool.take_out(u, "gone", DOWN)
    with pytest.raises(NoUpstream, match="vllm-0 down \\(gone\\)"):
        pool.pick()


def test_dead_replica_is_skipped_and_unsent_requests_retried(pair):
    pair.wires[1].down = True  # vllm-1 killed: nothing has noticed yet
    for i in range(4):
        r = chat(pair, f"q{i}", stream=bool(i % 2))  # none is lost: retried on vllm-0
        assert "you said" in (sse_text(r) if i % 2 else r.text)
    assert len(pair.stubs[0].requests) == 4 and pair.stubs[1].requests == []
    assert pair.pool.upstreams[1].state == DOWN and "ConnectError" in pair.pool.upstreams[1].error
    h = pair.client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "degraded"
    assert [r["state"] for r in h.json()["replicas"]] == [UP, DOWN]

    pair.wires[0].down = True
    r = chat(pair, "anyone?", status=503)
    assert "no model server in service" in r.json()["error"]["message"] and "vllm-1 down" in r.text
    assert pair.client.get("/health").status_code == 503
    assert len(pair.store.export_conversations()) == 4


def test_a_slow_server_is_taken_out_only_while_another_is_in_service(pair):
    pair.wires[1].slow = True  # connections to vllm-1 time out: a busy machine, not a dead server
    for i in range(3):
        chat(pair, f"q{i}")  # none lost: the one that timed out went to vllm-0
    assert pair.pool.upstreams[1].state == DOWN and "ConnectTimeout" in pair.pool.upstreams[1].error
    pair.wires[1].slow = False
    pair.check()
    assert pair.pool.upstreams[1].state == UP

    pair.wires[0].down = True  # vllm-0 gone: vllm-1 is the only one in service
    pair.check()
    pair.wires[1].slow = True
    pair.check()  # its /health times out: kept, out of service it could only answer 503s
    assert pair.pool.upstreams[1].state == UP
    r = chat(pair, "busy?", status=503)  # this request timed out: retry later, not a 502
    assert r.headers["retry-after"] == "5" and "busy" in r.json()["error"]["message"]
    assert pair.pool.upstreams[1].state == UP
    pair.wires[1].slow = False
    assert "you said" in chat(pair, "later").text


def test_lost_connection_is_retried_only_when_the_server_is_gone(pair):
    chat(pair)  # to vllm-0: the next one goes to vllm-1
    pair.wires[1].drop = pair.wires[1].die = True  # killed with a kept-alive connection open
    assert chat(pair, "after the kill").headers["x-served-model"] == "base"
    assert len(pair.stubs[0].requests) == 2 and pair.pool.upstreams[1].state == DOWN

    pair.wires[1].down = pair.wires[1].die = False
    pair.check()
    chat(pair)  # vllm-1 again (fewest served), then vllm-0
    chat(pair)
    pair.wires[1].drop = True  # a lost connection to a server that lives: it may have run the request
    r = chat(pair, "not twice", status=502)
    assert "ReadError" in r.text and len(pair.stubs[0].requests) == 3
    assert pair.pool.upstreams[1].state == UP


@pytest.mark.parametrize("how", ["drops", "unhealthy"])
def test_lost_connection_to_a_dying_server_is_retried(pair, how):
    """Killed with its process group, a vLLM server dies one process at a time: for a moment a new connection may
    still open, then be dropped, or /health answer 500 (its engine gone). It cannot have run the request."""
    chat(pair)  # to vllm-0: the next one goes to vllm-1
    if how == "drops":
        pair.wires[1].dying = True
    else:
        pair.wires[1].drop, pair.stubs[1].healthy = True, False
    assert chat(pair, "after the kill").headers["x-served-model"] == "base"
    assert len(pair.stubs[0].requests) == 2 and pair.pool.upstreams[1].state == DOWN


def test_health_round_takes_out_and_brings_back(pair):
    deploy(pair, 1)
    assert all("se-r001" in s.loaded for s in pair.stubs)
    pair.wires[1].down = True
    pair.check()
    assert pair.pool.upstreams[1].state == DOWN

    # it comes back restarted: no adapter loaded. It must get se-r001 before any request reaches it.
    pair.stubs[1].loaded.clear()
    pair.wires[1].down = False
    pair.check()
    assert pair.pool.upstreams[1].state == UP and "se-r001" in pair.stubs[1].loaded
    for i in range(4):
        assert chat(pair, f"q{i}").headers["x-served-model"] == "se-r001"
    assert all(r["model"] == "se-r001" for r in pair.stubs[1].requests) and pair.stubs[1].requests


def test_replica_that_lost_the_live_adapter_is_taken_out_then_synced(pair):
    deploy(pair, 1)
    pair.stubs[0].loaded.clear()  # a restart between two health rounds
    pair.check()
    a = pair.pool.upstreams[0]
    assert a.state == OUT and "se-r001 is not loaded" in a.error
    chat(pair)
    assert len(pair.stubs[0].requests) == 0  # no traffic while out
    pair.check()
    assert a.state == UP and "se-r001" in pair.stubs[0].loaded


def test_a_replica_back_from_a_restart_gets_the_lent_candidate_too(pair):
    """A round's candidate lent under a private name (selfevolve/gateway_engine.py) is on every replica in service:
    one restarted without it is taken out, then brought back with it (it stayed up without it, and the round's
    requests that reached it failed). Once unloaded, it is no longer given to a replica that comes back."""
    lend = pair.client.post("/admin/engine/adapters/load", headers=auth(ADMIN),
                            json={"path": str(tiny_adapter(pair.run.round(4).adapter))})
    name = lend.json()["name"]
    assert all(name in s.loaded for s in pair.stubs)
    pair.stubs[1].loaded.clear()  # a restart between two health rounds; the base model is live
    pair.check()
    b = pair.pool.upstreams[1]
    assert b.state == OUT and f"{name} is not loaded" in b.error
    pair.check()
    assert b.state == UP and name in pair.stubs[1].loaded
    for _ in range(4):  # the round's requests, on either replica
        r = pair.client.post("/admin/engine/v1/chat/completions", headers=auth(ADMIN),
                             json={"model": name, "messages": [{"role": "user", "content": "q"}]})
        assert r.status_code == 200, r.text
    assert all(s.requests for s in pair.stubs)
    assert pair.client.post("/admin/engine/adapters/unload", headers=auth(ADMIN), json={"name": name}).status_code == 200
    pair.stubs[0].loaded.clear()
    pair.check()
    assert pair.pool.upstreams[0].state == UP and name not in pair.stubs[0].loaded


def test_replica_that_cannot_take_the_live_adapter_stays_out(pair):
    deploy(pair, 1)
    pair.wires[1].down = True
    pair.check()
    pair.stubs[1].loaded.clear()
    pair.stubs[1].refuse_load.add("se-r001")
    pair.wires[1].down = False
    pair.check()
    b = pair.pool.upstreams[1]
    assert b.state == OUT and "cannot be brought to the live adapter se-r001" in b.error
    for _ in range(3):
        chat(pair)
    assert pair.stubs[1].requests == []


# ---------------------------------------------------------------- all or none

def test_deploy_is_all_or_none(pair):
    deploy(pair, 1)
    pair.stubs[1].refuse_load.add("se-r002")
    r = deploy(pair, 2, status=502)
    assert "on none" in r["detail"] and "vllm-1" in r["detail"] and "bad adapter" in r["detail"]
    assert [sorted(s.loaded) for s in pair.stubs] == [["se-r001"], ["se-r001"]]  # unloaded again from vllm-0
    assert live_on_disk(pair) == "se-r001" and pair.deployer.live_model == "se-r001"
    assert "se-r002" not in pair.deployer.staging.copies
    assert not [p for p in pair.run.staged_adapters.iterdir() if "se-r002" in p.name]

    pair.stubs[1].refuse_load.clear()
    pair.stubs[0].smoke_text = ""  # loads everywhere, answers nothing on vllm-0
    r = deploy(pair, 2, status=502)
    assert "vllm-0: smoke test of se-r002 failed" in r["detail"]
    assert [sorted(s.loaded) for s in pair.stubs] == [["se-r001"], ["se-r001"]]
    assert live_on_disk(pair) == "se-r001"

    pair.stubs[0].smoke_text = " hi"
    out = deploy(pair, 2)
    assert out["live"] == "se-r002" and out["replicas"] == ["vllm-0", "vllm-1"]
    assert [sorted(s.loaded) for s in pair.stubs] == [["se-r001", "se-r002"]] * 2


def test_deploy_refused_while_a_replica_is_out(pair):
    deploy(pair, 1)
    pair.wires[1].down = True
    chat(pair)
    chat(pair)  # the second goes to vllm-1: the gateway notices, the request is answered by vllm-0
    before = pair.run.current.read_bytes()
    r = deploy(pair, 2, status=503)
    assert "must reach every model server" in r["detail"] and "vllm-1 is down" in r["detail"]
    assert pair.run.current.read_bytes() == before and "se-r002" not in pair.stubs[0].loaded

    pair.wires[1].down = False
    pair.check()
    pair.wires[0].down = True  # dies with no traffic to notice it: the deploy itself does
    r = deploy(pair, 2, status=503)
    assert "vllm-0: ConnectError" in r["detail"] and "nothing was changed" in r["detail"]
    assert pair.pool.upstreams[0].state == DOWN
    assert pair.run.current.read_bytes() == before and "se-r002" not in pair.stubs[1].loaded
    assert not [p for p in pair.run.staged_adapters.iterdir() if "se-r002" in p.name]  # its checked copy too


def test_failed_undo_takes_the_replica_out(pair):
    deploy(pair, 1)
    pair.stubs[1].refuse_load.add("se-r002")
    pair.stubs[0].refuse_unload.add("se-r002")  # vllm-0 loads it, then cannot unload it
    r = deploy(pair, 2, status=502)
    assert "vllm-1" in r["detail"]
    a = pair.pool.upstreams[0]
    assert a.state == OUT and "se-r002 could not be unloaded after a failed load" in a.error
    assert live_on_disk(pair) == "se-r001"
    for _ in range(3):
        assert chat(pair).headers["x-served-model"] == "se-r001"
    assert pair.stubs[0].requests == []  # never serves while unsure
    pair.stubs[0].refuse_unload.clear()
    pair.check()  # back: stale se-r002 unloaded, se-r001 checked
    assert a.state == UP and sorted(pair.stubs[0].loaded) == ["se-r001"]


def test_rollback_on_every_replica_or_none(pair):
    deploy(pair, 1)
    deploy(pair, 2)
    pair.stubs[1].loaded.pop("se-r001")  # lost on one replica: rollback loads it there first
    pair.stubs[1].refuse_load.add("se-r001")
    r = pair.client.post("/admin/rollback", headers=auth(ADMIN))
    assert r.status_code == 502 and "vllm-1" in r.text
    assert live_on_disk(pair) == "se-r002" and "se-r001" in pair.stubs[0].loaded  # vllm-0 had it before: kept

    pair.stubs[1].refuse_load.clear()
    r = pair.client.post("/admin/rollback", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["live"] == "se-r001"
    assert all("se-r001" in s.loaded for s in pair.stubs)
    cur = pair.client.get("/admin/current", headers=auth(ADMIN)).json()
    assert [sorted(x["loaded"]) for x in cur["replicas"]] == [["se-r001", "se-r002"]] * 2


def test_rollback_while_a_replica_is_down_reaches_it_when_it_is_back(pair):
    deploy(pair, 1)
    deploy(pair, 2)
    pair.wires[1].down = True
    pair.check()
    r = pair.client.post("/admin/rollback", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["live"] == "se-r001"
    pair.stubs[1].loaded.clear()
    pair.wires[1].down = False
    pair.check()
    assert pair.pool.upstreams[1].state == UP and "se-r001" in pair.stubs[1].loaded


def test_restore_at_start_goes_on_without_an_unreachable_replica(pair):
    deploy(pair, 1)
    for stub in pair.stubs:  # both servers restarted, and vllm-1 does not answer yet
        stub.loaded.clear()
    pair.wires[1].down = True
    report = pair.client.portal.call(pair.deployer.restore)
    assert report["live"] == "se-r001 loaded" and live_on_disk(pair) == "se-r001"
    assert "se-r001" in pair.stubs[0].loaded and pair.pool.upstreams[1].state == DOWN
    pair.wires[0].down = True  # none answers: current.json is left as it is
    report = pair.client.portal.call(pair.deployer.restore)
    assert "not restored yet" in report["live"] and live_on_disk(pair) == "se-r001"
    pair.wires[0].down = pair.wires[1].down = False
    pair.check()
    assert [u.state for u in pair.pool.upstreams] == [UP, UP] and "se-r001" in pair.stubs[1].loaded


# ---------------------------------------------------------------- configuration

def test_replicas_and_upstreams_config(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert engine_cores(1) == ["3,4"] and engine_cores(2) == ["0,1", "2,3"] and engine_cores(6) == ["nobind"] * 6
    cfg = load_config("configs/default.yaml")
    cfg.serve.replicas, cfg.serve.vllm_port = 2, 9100
    run = RunLayout.of(tmp_path, "r")
    servers = model_servers(cfg, run)
    assert [s.port for s in servers] == [9100, 9101] and servers[0].api_key != servers[1].api_key
    assert [s.log_path.name for s in servers] == ["vllm.log", "vllm-1.log"]
    assert [s.environment()["VLLM_CPU_OMP_THREADS_BIND"] for s in servers] == ["0,1", "2,3"]  # own cores each
    for s in servers:
        s.stop()  # removes the empty folder environment() made
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")  # the operator's choice wins
    assert engine_cores(2) == ["auto", "auto"]
    pool = upstream_pool(cfg, servers)
    assert [u.headers for u in pool.upstreams] == [s.headers for s in servers]

    cfg.serve.replicas, cfg.serve.upstreams, cfg.serve.upstream_key = 1, ["http://10.0.0.7:8011"], "k"
    assert model_servers(cfg, run) == []
    pool = upstream_pool(cfg, [])
    assert [(u.name, u.url, u.headers) for u in pool.upstreams] == [
        ("vllm-0", "http://10.0.0.7:8011", {"Authorization": "Bearer k"})]

    for bad, match in (({"replicas": 0}, "replicas"), ({"replicas": 2, "upstreams": ["http://a:1"]}, "not both"),
                       ({"upstreams": ["http://a:1/v1"]}, "not a vLLM server address"),
                       ({"upstreams": ["http://a"]}, "not a vLLM server address"),
                       ({"upstreams": ["http://a:1", "http://a:1/"]}, "twice"),
                       ({"replicas": 3, "vllm_port": 65534}, "past 65535"), ({"health_interval_s": 0}, "positive")):
        s = copy.deepcopy(load_config("configs/default.yaml").serve)
        for k, v in bad.items():
            setattr(s, k, v)
        with pytest.raises(ConfigError, match=match):
            s.validate("serve")


def test_upstream_names_must_differ():
    with pytest.raises(ValueError, match="differ"):
        UpstreamPool([Upstream("x", "http://a"), Upstream("x", "http://b")])
