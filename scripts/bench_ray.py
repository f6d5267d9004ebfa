"""Throughput of ``backend.kind: ray`` (N engine workers on a local Ray cluster) vs one in-process vLLM engine.

    flock /tmp/selfevolve-model.lock python scripts/bench_ray.py [--engines 2] [--prompts 80] [--chats 24]

Both sides answer the same requests with the same sampling, one side after the other (never two engines' worth
of memory at once): ``chat``, the MT-bench first questions (shipped in selfevolve/data, tuned on by nothing
here) in one ``chat`` call, and ``revise``, ``run_revise`` over every assistant turn of the first ``--chats``
sample chats (its calls go out in waves: new turns and retries). Start-up (cluster + engines ready) is timed
apart from the work. A third side, one engine with its threads unpinned over every core (``--unpinned``), shows
how much of the difference is vLLM's CPU thread binding: by default ("auto") an engine keeps one core for its
scheduler process and computes on the others (on 2 cores: one). Writes bench_out/bench_ray.{json,md};
docs/bench/ray.md keeps the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def side(cfg, prompts, chats, sampling) -> dict:
    from selfevolve.backends import make_backend
    from selfevolve.revise import run_revise

    t0 = time.time()
    backend = make_backend(cfg)
    out = {"start_s": time.time() - t0}
    try:
        t0 = time.time()
        gens = backend.chat(prompts, sampling)
        out["chat_s"] = time.time() - t0
        out["chat_tokens"] = sum(g.output_tokens for g in gens)
        with tempfile.TemporaryDirectory() as tmp:
            rcfg = replace(cfg.revise, turns="all")
            s = run_revise(chats, backend, rcfg, Path(tmp) / "r.jsonl", Path(tmp) / "j.jsonl", show_progress=False)
        out.update(revise_s=s.seconds, revise_turns=s.turns, revise_tokens=s.output_tokens, revise_failed=s.failed)
        out["served"] = backend.served() if hasattr(backend, "served") else None
    finally:
        backend.close()
    return out


def table(res: dict, engines: int) -> str:
    one, two, free = res["vllm"], res["ray"], res.get("vllm_unpinned")

    def rate(r, k):
        return r[f"{k}_tokens"] / r[f"{k}_s"]

    head = ["one engine (`backend.kind: vllm`)", f"Ray, {engines} engine workers", "ratio Ray / one"]
    if free:
        head += ["one engine, threads unpinned", "ratio Ray / unpinned"]
    rows = ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]

    def row(what, f, ratio=True):
        cells = [f(one), f(two), f"{f(two) / f(one):.2f}" if ratio else ""]
        if free:
            cells += [f(free), f"{f(two) / f(free):.2f}" if ratio else ""]
        rows.append(f"| {what} | " + " | ".join(c if isinstance(c, str) else f"{c:.1f}" for c in cells) + " |")

    row("start-up (s)", lambda r: r["start_s"])
    for k, what in (("chat", f"chat, {res['prompts']} prompts"), ("revise", f"revise, {one['revise_turns']} turns")):
        row(f"{what}: seconds", lambda r: r[f"{k}_s"])
        row(f"{what}: output tok/s", lambda r: rate(r, k))
    row("requests per engine worker", lambda r: str(r["served"] or "-"), ratio=False)
    return "\n".join(rows)


def main() -> None:
    from selfevolve.backends import Sampling
    from selfevolve.config import PACKAGE_DATA, load_config
    from selfevolve.records import read_jsonl

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--kvcache-gb", type=int, default=1, help="KV cache per engine, both sides (GiB)")
    ap.add_argument("--prompts", type=int, default=80)
    ap.add_argument("--chats", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--unpinned", action="store_true", help="also one engine with unpinned threads on every core")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()

    cfg = load_config(args.config, args.overrides + [f"backend.cpu_kvcache_gb={args.kvcache_gb}"])
    questions = [json.loads(line) for line in (PACKAGE_DATA / "mt_bench_questions.jsonl").read_text().splitlines()]
    prompts = [[{"role": "user", "content": q["turns"][0] if "turns" in q else q["question"]}]
               for q in questions[: args.prompts]]
    chats = read_jsonl(PACKAGE_DATA / "sample_chats.jsonl")[: args.chats]
    sampling = Sampling(0.7, 0.95, args.max_tokens)
    res = {"prompts": len(prompts), "chats": len(chats), "cores": os.cpu_count(), "kvcache_gb": args.kvcache_gb,
           "max_tokens": args.max_tokens}
    res["vllm"] = side(replace(cfg, backend=replace(cfg.backend, kind="vllm")), prompts, chats, sampling)
    print("one engine:", res["vllm"], flush=True)
    ray_cfg = replace(cfg, backend=replace(cfg.backend, kind="ray"), ray=replace(cfg.ray, num_engines=args.engines))
    res["ray"] = side(ray_cfg, prompts, chats, sampling)
    print("ray:", res["ray"], flush=True)
    if args.unpinned:  # last: the variables stay set in this process (and in its engine's subprocess)
        os.environ.update(VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(os.cpu_count()))
        res["vllm_unpinned"] = side(replace(cfg, backend=replace(cfg.backend, kind="vllm")), prompts, chats, sampling)
        print("one engine, unpinned:", res["vllm_unpinned"], flush=True)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "bench_ray.json").write_text(json.dumps(res, indent=2))
    md = table(res, args.engines)
    (out / "bench_ray.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
