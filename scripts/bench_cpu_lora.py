"""vLLM's own CPU LoRA ops vs selfevolve's plugin (selfevolve/vllm_cpu_lora.py), side by side on the same engine
settings, prompts and adapter.

    python scripts/bench_cpu_lora.py [--config configs/default.yaml] [-n 24] [--max-tokens 192]

Two engines, one after the other, each in its own process (vLLM reads VLLM_PLUGINS once): ``stock``
(VLLM_PLUGINS="", vLLM's ops) and ``plugin`` (VLLM_PLUGINS=selfevolve_cpu_lora). Each, through selfevolve's
vLLM backend (the loop's engine settings):
  * greedy answers to n MT-Bench first turns, base model and then a LoRA adapter (a fresh PEFT adapter with
    train.lora's rank and modules, default init: it answers as the base does, so both sides write the same
    lengths) — output tokens/s;
  * prompt log-probs of those prompts + base answers, the curate perplexity filter's call: the stock ops score
    one request at a time (batched they crash), the plugin scores the batch.
Writes bench_out/bench_cpu_lora.{json,md}; ratios are plugin / stock.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_adapter(cfg, path: Path) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    lora = cfg.train.lora
    get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules))
                   ).save_pretrained(str(path))
    return str(path)


def worker(args) -> None:
    """One engine: time base and adapter answers, then prompt log-probs; print one JSON line."""
    from selfevolve.backends import Sampling, make_backend
    from selfevolve.config import load_config, resolve_input
    from selfevolve.compare_prompts import mt_bench_prompts

    cfg = load_config(args.config, args.overrides)
    msgs = [p["messages"] for p in mt_bench_prompts(resolve_input(cfg.compare.prompts), args.n)]
    t0 = time.perf_counter()
    backend = make_backend(cfg)
    out = {"engine_start_s": round(time.perf_counter() - t0, 1), "batched_logprobs": backend.batched_logprobs}
    greedy = Sampling(0.0, 1.0, args.max_tokens)
    backend.chat(msgs[:2], Sampling(0.0, 1.0, 8))  # warm-up: first-call costs belong to neither side
    answers = {}
    for side, adapter in (("base", None), ("adapter", args.adapter)):
        t0 = time.perf_counter()
        gens = backend.chat(msgs, greedy, adapter=adapter)
        dt = time.perf_counter() - t0
        tokens = sum(g.output_tokens for g in gens)
        out[side] = {"seconds": round(dt, 2), "output_tokens": tokens, "tok_s": round(tokens / dt, 1)}
        answers[side] = [g.text for g in gens]
    t0 = time.perf_counter()
    lps = backend.logprobs(msgs, answers["base"])
    out["logprobs"] = {"seconds": round(time.perf_counter() - t0, 2), "requests": len(msgs),
                       "tokens": sum(len(r) for r in lps)}
    out["same_answers_adapter_vs_base"] = sum(a == b for a, b in zip(answers["base"], answers["adapter"]))
    backend.close()
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("-n", type=int, default=24, help="MT-Bench prompts")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from selfevolve.config import load_config

    cfg = load_config(args.config, args.overrides)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(cfg, Path(tmp) / "adapter")
        for mode, plugins in (("stock", ""), ("plugin", "selfevolve_cpu_lora")):
            cmd = [sys.executable, __file__, "--worker", "--adapter", adapter, "--config", args.config,
                   "-n", str(args.n), "--max-tokens", str(args.max_tokens)] + [
                   x for o in args.overrides for x in ("--set", o)]
            print(f"{mode}: starting an engine (VLLM_PLUGINS={plugins!r}) ...", flush=True)
            proc = subprocess.run(cmd, env={**os.environ, "VLLM_PLUGINS": plugins}, cwd=ROOT,
                                  capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{mode} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(line[len("RESULT "):])
            print(f"{mode}: {results[mode]}", flush=True)

    s, p = results["stock"], results["plugin"]
    ratios = {"adapter_tok_s": round(p["adapter"]["tok_s"] / s["adapter"]["tok_s"], 2),
              "base_tok_s": round(p["base"]["tok_s"] / s["base"]["tok_s"], 2),
              "logprobs_speedup": round(s["logprobs"]["seconds"] / p["logprobs"]["seconds"], 2)}
    result = {"n": args.n, "max_tokens": args.max_tokens, "cpu_count": os.cpu_count(), **results, "ratios": ratios}
    out = ROOT / args.out
    out.mkdir(exist_ok=True)
    (out / "bench_cpu_lora.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# CPU LoRA ops: vLLM's vs selfevolve's plugin ({args.n} MT-Bench prompts, {args.max_tokens} tokens, "
             f"{os.cpu_count()} cores)", "",
             "| | stock | plugin | plugin / stock |", "|---|---|---|---|",
             f"| base answers, tok/s | {s['base']['tok_s']} | {p['base']['tok_s']} | {ratios['base_tok_s']} |",
             f"| adapter answers, tok/s | {s['adapter']['tok_s']} | {p['adapter']['tok_s']} | "
             f"{ratios['adapter_tok_s']} |",
             f"| adapter / base speed | {s['adapter']['tok_s'] / s['base']['tok_s']:.2f} | "
             f"{p['adapter']['tok_s'] / p['base']['tok_s']:.2f} | |",
             f"| prompt log-probs of {args.n} answers, s | {s['logprobs']['seconds']} (one at a time) | "
             f"{p['logprobs']['seconds']} (one batch) | {ratios['logprobs_speedup']}x faster |",
             f"| engine start, s | {s['engine_start_s']} | {p['engine_start_s']} | |"]
    (out / "bench_cpu_lora.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
