"""Deploy latency (adapter saved → first token from it through the gateway) and gateway overhead vs vLLM direct.

    python scripts/bench_deploy.py [--config configs/default.yaml] [--deploys 5] [-n 20] [--max-tokens 4]

Starts one vLLM server (127.0.0.1, free port) and the gateway in this process (uvicorn thread), in a temporary
run folder. Then:
  * deploy: for each of ``--deploys`` fresh PEFT LoRA adapters (r=8, q/v, random init so they differ from the
    base), the clock starts when ``save_pretrained`` has returned and stops at the first streamed content token
    of ``model=current`` through the gateway: POST /admin/adapters/load (validate + load + smoke generation +
    atomic switch of current.json) + a streamed chat. Goal: <= 1 s on CPU for the 135M model.
  * overhead: N short non-streamed chat requests (max_tokens small, temperature 0, model ``base``) straight to
    vLLM and the same through the gateway (auth, routing, capture into SQLite), interleaved pairwise with the
    same prompt, one keep-alive client per side; and N streamed requests each way for the time to first token.
Writes bench_out/bench_deploy.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/helpers.py: GatewayThread, build_random_adapter (test helpers)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "p90_ms": round(pct(ms, 0.9), 1),
            "min_ms": round(min(ms), 1), "max_ms": round(max(ms), 1)}


def first_token_ms(client, url: str, headers: dict, model: str, prompt: str, max_tokens: int, t0: float) -> tuple[float, str]:
    """Stream a chat request; ms from ``t0`` to the first non-empty content delta, and the model that answered."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    first, served = None, ""
    with client.stream("POST", url, json=body, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            obj = json.loads(line[5:])
            served = obj.get("model", served)
            delta = (obj.get("choices") or [{}])[0].get("delta") or {}
            if first is None and delta.get("content"):
                first = (time.perf_counter() - t0) * 1000
    if first is None:
        raise RuntimeError(f"no content token from {model}")
    return first, served


def main() -> None:
    import httpx

    from selfevolve.config import load_config
    from helpers import GatewayThread, build_random_adapter
    from selfevolve.deploy import Deployer
    from selfevolve.gateway import Keys, create_app
    from selfevolve.layout import RunLayout
    from selfevolve.serve import VLLMServer, free_port
    from selfevolve.store import ChatStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--deploys", type=int, default=5, help="adapters deployed one after another")
    ap.add_argument("-n", type=int, default=20, help="requests per side for the overhead comparison")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()

    cfg = load_config(ROOT / args.config if not Path(args.config).is_absolute() else args.config, args.overrides)
    model_path = str((ROOT / cfg.model.path) if not Path(cfg.model.path).is_absolute() else cfg.model.path)
    tmp = Path(tempfile.mkdtemp(prefix="bench_deploy-"))
    run = RunLayout.of(tmp / "runs", "bench")
    run.dir.mkdir(parents=True)
    keys = Keys("bench-chat", "bench-admin")
    server = VLLMServer(model_path, port=free_port(), max_lora_rank=cfg.lora_slots.max_rank,
                        max_loras=cfg.lora_slots.serve, max_model_len=cfg.model.max_model_len,
                        kvcache_gb=cfg.backend.cpu_kvcache_gb, seed=cfg.backend.seed, log_path=run.vllm_log)
    store = gateway = None
    result: dict = {"model": cfg.model.path, "max_tokens": args.max_tokens}
    try:
        t = time.perf_counter()
        server.start().wait_ready(cfg.serve.startup_timeout_s)
        result["vllm_startup_s"] = round(time.perf_counter() - t, 1)
        store = ChatStore(run.chats_db)
        deployer = Deployer(run, server.url, server.headers, max_rank=cfg.lora_slots.max_rank)
        app = create_app(store=store, deployer=deployer, vllm_url=server.url, vllm_headers=server.headers, keys=keys)
        gateway = GatewayThread(app).start()
        chat_h = {"Authorization": f"Bearer {keys.chat}"}
        admin_h = {"Authorization": f"Bearer {keys.admin}"}
        gw_chat = gateway.url + "/v1/chat/completions"
        direct_chat = server.url + "/v1/chat/completions"

        with httpx.Client(timeout=120) as gw_c, httpx.Client(timeout=120) as vl_c:
            for i in range(3):  # warm both paths (connections, prefix cache of the chat template)
                gw_c.post(gw_chat, headers=chat_h, json={"model": "base", "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": f"warm {i}"}]})
                vl_c.post(direct_chat, headers=server.headers, json={"model": "base", "max_tokens": 2,
                                                                    "messages": [{"role": "user", "content": f"warm {i}"}]})

            # ---------------- deploy: adapter saved → first token from it through the gateway
            deploys = []
            for n in range(1, args.deploys + 1):
                build_random_adapter(model_path, run.round(n).adapter, seed=n)
                t0 = time.perf_counter()  # the adapter is saved
                r = gw_c.post(gateway.url + "/admin/adapters/load", headers=admin_h, json={"round": n})
                r.raise_for_status()
                t_admin = (time.perf_counter() - t0) * 1000
                t1 = time.perf_counter()
                ftok, served = first_token_ms(gw_c, gw_chat, chat_h, "current", f"Say something about number {n}.",
                                              8, t1)
                total = t_admin + ftok
                assert served == f"se-r{n:03d}", served
                tm = r.json()["timings_ms"]  # measured inside the deployer
                deploys.append({"round": n, "adapter": served, "total_ms": round(total, 1),
                                "admin_call_ms": round(t_admin, 1), "load_ms": tm["load"], "smoke_ms": tm["smoke"],
                                "switch_ms": tm["switch"], "first_token_ms": round(ftok, 1)})
                print(f"deploy se-r{n:03d}: {total:7.1f} ms  (admin call {t_admin:.1f}: {r.json()['timings_ms']}; "
                      f"first token {ftok:.1f})", flush=True)
            result["deploy"] = deploys
            totals = [d["total_ms"] for d in deploys]
            result["deploy_summary"] = {**summary(totals), "goal_ms": 1000,
                                        "within_goal": sum(t <= 1000 for t in totals)}

            # ---------------- gateway overhead, non-streamed, interleaved pairs
            direct, via = [], []
            for i in range(args.n):
                body = {"model": "base", "max_tokens": args.max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Give me a word that starts with {chr(65 + i % 26)}."}]}
                order = [("direct", vl_c, direct_chat, server.headers), ("gateway", gw_c, gw_chat, chat_h)]
                if i % 2:
                    order.reverse()
                for side, client, url, h in order:
                    t = time.perf_counter()
                    client.post(url, headers=h, json=body).raise_for_status()
                    (direct if side == "direct" else via).append((time.perf_counter() - t) * 1000)
            diffs = [g - d for g, d in zip(via, direct)]
            result["overhead_nonstream"] = {"direct": summary(direct), "gateway": summary(via),
                                            "paired_diff_median_ms": round(statistics.median(diffs), 1)}

            # ---------------- time to first token, streamed
            d_ft, g_ft = [], []
            for i in range(args.n):
                prompt = f"Name an animal that starts with {chr(65 + i % 26)}."
                order = [("direct", direct_chat, server.headers), ("gateway", gw_chat, chat_h)]
                if i % 2:
                    order.reverse()
                for side, url, h in order:
                    client = vl_c if side == "direct" else gw_c
                    ms, _ = first_token_ms(client, url, h, "base", prompt, args.max_tokens, time.perf_counter())
                    (d_ft if side == "direct" else g_ft).append(ms)
            result["overhead_stream_ttft"] = {"direct": summary(d_ft), "gateway": summary(g_ft),
                                              "paired_diff_median_ms": round(statistics.median(
                                                  [g - d for g, d in zip(g_ft, d_ft)]), 1)}
        result["captured_conversations"] = store.count()
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
        if store is not None:
            store.close()

    import shutil

    shutil.rmtree(tmp, ignore_errors=True)  # adapters, captures and the vLLM log (kept when the run failed)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_deploy.json").write_text(json.dumps(result, indent=2) + "\n")
    ds = result["deploy_summary"]
    lines = ["# bench_deploy", "", f"model {result['model']}, vLLM CPU; vLLM startup {result['vllm_startup_s']} s", "",
             "## adapter saved → first token through the gateway (goal ≤ 1000 ms)", "",
             "| adapter | total ms | load | smoke | switch | admin call | first token |", "|---|---|---|---|---|---|---|"]
    for d in result["deploy"]:
        lines.append(f"| {d['adapter']} | {d['total_ms']} | {d['load_ms']} | {d['smoke_ms']} | {d['switch_ms']} | "
                     f"{d['admin_call_ms']} | {d['first_token_ms']} |")
    lines += ["", f"median {ds['median_ms']} ms, p90 {ds['p90_ms']} ms; {ds['within_goal']}/{ds['n']} within 1 s", "",
              f"## gateway overhead (N={args.n} per side, max_tokens={args.max_tokens}, model base)", "",
              "| | direct median | direct p90 | gateway median | gateway p90 | paired diff median |", "|---|---|---|---|---|---|"]
    for key, label in (("overhead_nonstream", "non-streamed total"), ("overhead_stream_ttft", "streamed first token")):
        o = result[key]
        lines.append(f"| {label} | {o['direct']['median_ms']} | {o['direct']['p90_ms']} | {o['gateway']['median_ms']} | "
                     f"{o['gateway']['p90_ms']} | {o['paired_diff_median_ms']} |")
    (out / "bench_deploy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
