"""Throughput of the gateway with 1 vs N vLLM replicas (``serve.replicas``) on this machine.

    flock /tmp/selfevolve-model.lock python scripts/bench_replicas.py [--config configs/default.yaml]
        [--replicas 1 2] [-n 48] [--concurrency 8] [--max-tokens 64] [--out docs/bench/replicas.md]

For each replica count: starts the vLLM servers as ``selfevolve serve`` does (selfevolve/gateway.py
model_servers / start_servers / upstream_pool), the gateway in this process (uvicorn thread), then sends ``-n``
non-streamed chats ``--concurrency`` at a time (user prompts of the shipped sample chats, held in the order of
the file, ``temperature`` 0, ``ignore_eos`` so every request generates exactly ``--max-tokens`` tokens: the load
is the same for each replica count). Reports completion tokens/s, request latency and how the gateway spread
the requests; also the engines' start-up time. Writes ``--out`` (markdown) and the JSON beside it.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/helpers.py: GatewayThread


def prompts(n: int) -> list[str]:
    from selfevolve.config import PACKAGE_DATA
    from selfevolve.records import read_jsonl

    users = [m["content"] for c in read_jsonl(PACKAGE_DATA / "sample_chats.jsonl") for m in c["messages"]
             if m["role"] == "user"]
    return [users[i % len(users)] for i in range(n)]


def free_ports(n: int) -> int:
    """A port p with p..p+n-1 free now (the replicas take consecutive ports)."""
    import socket

    from selfevolve.serve import free_port

    for _ in range(100):
        p, socks = free_port(), []
        try:
            for i in range(1, n):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def measure(cfg, replicas: int, qs: list[str], concurrency: int, max_tokens: int) -> dict:
    import httpx

    from helpers import GatewayThread
    from selfevolve.deploy import Deployer
    from selfevolve.gateway import Keys, create_app, model_servers, start_servers, upstream_pool
    from selfevolve.layout import RunLayout
    from selfevolve.store import ChatStore

    cfg = copy.deepcopy(cfg)
    tmp = tempfile.mkdtemp(prefix="bench-replicas-")
    cfg.run.root, cfg.run.name = tmp, f"r{replicas}"
    cfg.serve.replicas, cfg.serve.vllm_port = replicas, free_ports(replicas)
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    run.dir.mkdir(parents=True)
    servers = model_servers(cfg, run)
    t0 = time.perf_counter()
    start_servers(servers, 600)
    startup_s = time.perf_counter() - t0
    store = ChatStore(run.chats_db)
    keys = Keys("bench-chat", "bench-admin")
    app = create_app(store=store, deployer=Deployer(run, base_model=cfg.model.path, pool=upstream_pool(cfg, servers)),
                     keys=keys, consent_default=False)
    gw = GatewayThread(app).start()
    try:
        headers = {"Authorization": f"Bearer {keys.chat}"}
        lock, tokens, lat = threading.Lock(), [], []

        def one(q: str) -> None:
            t = time.perf_counter()
            r = httpx.post(gw.url + "/v1/chat/completions", headers=headers, timeout=600, json={
                "model": "base", "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True})
            r.raise_for_status()
            with lock:
                tokens.append(r.json()["usage"]["completion_tokens"])
                lat.append(time.perf_counter() - t)

        for q in qs[:2]:  # warm-up (first requests compile / allocate)
            one(q)
        tokens.clear(), lat.clear()
        t = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(one, qs))
        wall = time.perf_counter() - t
        spread = [r["requests"] for r in httpx.get(gw.url + "/health", timeout=10).json()["replicas"]]
    finally:
        gw.stop()
        for s in servers:
            s.stop()
        store.close()
    return {"replicas": replicas, "requests": len(qs), "completion_tokens": sum(tokens), "wall_s": round(wall, 2),
            "tokens_per_s": round(sum(tokens) / wall, 1), "median_latency_s": round(statistics.median(lat), 2),
            "max_latency_s": round(max(lat), 2), "requests_per_replica": spread, "startup_s": round(startup_s, 1)}


def main() -> None:
    from selfevolve.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "docs/bench/replicas.md"))
    a = ap.parse_args()
    cfg = load_config(a.config)
    cfg.model.path = str((ROOT / cfg.model.path) if not os.path.isabs(cfg.model.path) else cfg.model.path)
    qs = prompts(a.n)
    rows = [measure(cfg, n, qs, a.concurrency, a.max_tokens) for n in a.replicas]
    for row in rows:
        print(json.dumps(row))
    base = rows[0]["tokens_per_s"]
    lines = ["# Serving replicas: throughput 1 vs N vLLM servers behind the gateway", "",
             f"`python scripts/bench_replicas.py --replicas {' '.join(map(str, a.replicas))} -n {a.n} "
             f"--concurrency {a.concurrency} --max-tokens {a.max_tokens}` on {os.cpu_count()} CPU cores, "
             f"{Path(cfg.model.path).name}, `backend.cpu_kvcache_gb: {cfg.backend.cpu_kvcache_gb}` per server, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Non-streamed chats of the sample chats' user "
             "turns, temperature 0, `ignore_eos` (every request generates max-tokens tokens).", "",
             "| replicas | tokens/s | ratio | median latency s | max latency s "
             "| requests per replica (incl. 2 warm-up) | start-up s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['replicas']} | {r['tokens_per_s']} | {r['tokens_per_s'] / base:.2f}x | "
                     f"{r['median_latency_s']} | {r['max_latency_s']} | {r['requests_per_replica']} | "
                     f"{r['startup_s']} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
