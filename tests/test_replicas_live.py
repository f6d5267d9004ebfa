"""Two real CPU vLLM replicas behind one gateway, started as ``selfevolve serve`` starts them with
``serve.replicas: 2`` (selfevolve/gateway.py: model_servers, start_servers, upstream_pool), the gateway on
loopback: chats spread over both and captured, a real adapter deployed while streams run (every stream ends, both
replicas then serve it), and a killed replica: traffic goes to the other and a deploy is refused.
tests/test_replicas.py covers the same logic, and the failure paths, with stubs."""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from selfevolve.deploy import Deployer
from selfevolve.gateway import Keys, create_app, model_servers, start_servers, upstream_pool
from selfevolve.layout import RunLayout
from selfevolve.serve import free_port
from selfevolve.store import ChatStore

from helpers import GatewayThread, build_random_adapter
from test_gateway import ADMIN, CHAT, auth

pytestmark = pytest.mark.integration


def two_free_ports() -> int:
    """A port p with p + 1 free too (the replicas take consecutive ports)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def fleet(default_cfg, tmp_path_factory):
    cfg = copy.deepcopy(default_cfg)
    root = tmp_path_factory.mktemp("replicas")
    cfg.run.root, cfg.run.name = str(root / "runs"), "it"
    # two engines on this 2-core, shared box: a small KV cache and context each
    cfg.serve.replicas, cfg.serve.vllm_port = 2, two_free_ports()
    cfg.backend.cpu_kvcache_gb, cfg.model.max_model_len = 1, 1024
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    run.dir.mkdir(parents=True)
    build_random_adapter(cfg.model.path, run.round(1).adapter, seed=1)  # round 2's deploy is refused before staging
    servers = model_servers(cfg, run)
    store = gateway = None
    try:
        start_servers(servers, 300)
        store = ChatStore(run.chats_db)
        deployer = Deployer(run, max_rank=cfg.lora_slots.max_rank, base_model=cfg.model.path,
                            pool=upstream_pool(cfg, servers))
        app = create_app(store=store, deployer=deployer, keys=Keys(CHAT, ADMIN), consent_default=True,
                         health_interval_s=0.5)
        gateway = GatewayThread(app).start()
        yield SimpleNamespace(url=gateway.url, run=run, store=store, deployer=deployer, servers=servers)
    finally:
        if gateway is not None:
            gateway.stop()
        for s in servers:
            s.stop()
        if store is not None:
            store.close()


def _chat(url, text, **body):
    return httpx.post(url + "/v1/chat/completions", headers=auth(CHAT), timeout=120, json={
        "model": "current", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": text}],
        **body})


def _stream(url, i, out, errors):
    try:
        started, text, finish, models = time.monotonic(), "", None, set()
        with httpx.stream("POST", url + "/v1/chat/completions", headers=auth(CHAT), timeout=300, json={
                "model": "current", "stream": True, "max_tokens": 48, "temperature": 0.7,
                "messages": [{"role": "user", "content": f"Count from {i} to {i + 100}, one number per line."}]}) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    ch = json.loads(line[6:])
                    models.add(ch["model"])
                    for c in ch["choices"]:
                        text += c["delta"].get("content") or ""
                        finish = c.get("finish_reason") or finish
        out.append((models, text, finish, started, time.monotonic()))
    except Exception as e:  # noqa: BLE001 - any failure is the test's failure
        errors.append(repr(e))


def _requests_per_replica(url) -> list[int]:
    return [r["requests"] for r in httpx.get(url + "/health", timeout=10).json()["replicas"]]


def test_two_replicas_spread_swap_under_streams_and_lose_one(fleet):
    url = fleet.url
    # 1. chats spread over both replicas, each captured once in the one store
    threads = [threading.Thread(target=lambda i=i: _chat(url, f"Say a colour, {i}.")) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(n >= 2 for n in _requests_per_replica(url)), _requests_per_replica(url)
    assert len(fleet.store.export_conversations()) == 6

    # 2. deploy a real adapter while streams run on both replicas: new streams keep starting every 0.5 s until
    # the deploy returned, so some run across the switch (how long a deploy takes here varies with the load)
    before = _requests_per_replica(url)
    out, errors, streams, done = [], [], [], {}

    def deploy():
        done["response"] = httpx.post(url + "/admin/adapters/load", headers=auth(ADMIN), json={"round": 1},
                                      timeout=300)
        done["at"] = time.monotonic()

    deployer = threading.Thread(target=deploy)
    for i in range(4):
        streams.append(threading.Thread(target=_stream, args=(url, i, out, errors)))
        streams[-1].start()
    deployer.start()
    while deployer.is_alive():
        time.sleep(0.5)
        if sum(t.is_alive() for t in streams) < 6:  # under serve.max_concurrent_per_user (8) with the chats below
            streams.append(threading.Thread(target=_stream, args=(url, len(streams), out, errors)))
            streams[-1].start()
    for t in streams:
        t.join(300)
    r, switched = done["response"], done["at"]
    assert r.status_code == 200, r.text
    assert r.json()["live"] == "se-r001" and r.json()["replicas"] == ["vllm-0", "vllm-1"]
    print("deploy on 2 replicas under", len(streams), "streams:", r.json()["timings_ms"])
    assert errors == [] and len(out) == len(streams)
    assert all(text and finish in ("stop", "length") for _, text, finish, _, _ in out)
    assert any(start < switched < end for *_, start, end in out)  # the swap happened while streams ran
    assert all(b - a >= 2 for a, b in zip(before, _requests_per_replica(url)))  # streams on both replicas

    # both replicas now serve se-r001, the same adapter: the same greedy answer on each, not the base model's
    q = {"messages": [{"role": "user", "content": "Write one sentence about the sea."}], "max_tokens": 12,
         "temperature": 0}
    answers = {}
    for s in fleet.servers:
        for model in ("se-r001", "base"):
            a = httpx.post(s.url + "/v1/chat/completions", headers=s.headers, json={**q, "model": model}, timeout=120)
            assert a.status_code == 200, a.text
            answers[(s.port, model)] = a.json()["choices"][0]["message"]["content"]
    p0, p1 = (s.port for s in fleet.servers)
    assert answers[(p0, "se-r001")] == answers[(p1, "se-r001")] != answers[(p0, "base")]
    served = {_chat(url, f"hello {i}").headers["x-served-model"] for i in range(4)}
    assert served == {"se-r001"}
    assert len(fleet.store.export_conversations()) == 6 + len(streams) + 4

    # 3. one replica dies: the gateway routes to the other and refuses a deploy, live unchanged
    os.killpg(fleet.servers[1].proc.pid, signal.SIGKILL)
    live_before = fleet.run.current.read_bytes()
    for i in range(3):
        r = _chat(url, f"still there {i}?")
        assert r.status_code == 200 and r.headers["x-served-model"] == "se-r001", r.text
    health = httpx.get(url + "/health", timeout=10).json()
    assert health["status"] == "degraded" and [x["state"] for x in health["replicas"]] == ["up", "down"]
    r = httpx.post(url + "/admin/adapters/load", headers=auth(ADMIN), json={"round": 2}, timeout=120)
    assert r.status_code == 503 and "vllm-1 is down" in r.json()["detail"], r.text
    assert fleet.run.current.read_bytes() == live_before
