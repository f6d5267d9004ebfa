"""Revise-stage throughput vs raw vLLM, side by side, and the prefix-cache hit rate vs the ideal.

    python scripts/bench_revise.py [--config configs/default.yaml] [--limit 24] [--repeats 2]

Both sides use the same engine, the same prompts (the configured strategy's calls for every assistant turn),
the same sampling and the same JSON schemas. The baseline is one plain ``vllm.LLM.chat`` call over all
prompts; ours is ``run_revise`` (streamed turns, validation, retries, journal, atomic output). The prefix cache is
reset before every timed run. The ideal hit rate is what a perfect token-level cache would reach on the
prompt layout: 1 - (distinct prompt-token prefixes) / (prompt tokens), counted with a trie.
Writes bench_out/bench_revise.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def ideal_hit_rate(token_lists: list[list[int]]) -> float:
    trie: dict = {}
    nodes = total = 0
    for ids in token_lists:
        node = trie
        for t in ids:
            total += 1
            if t not in node:
                node[t] = {}
                nodes += 1
            node = node[t]
    return 1 - nodes / max(total, 1)


def prefix_counters(llm) -> tuple[float, float]:
    queries = hits = 0.0
    for m in llm.get_metrics():
        if m.name.endswith("prefix_cache_queries"):
            queries += m.value
        elif m.name.endswith("prefix_cache_hits"):
            hits += m.value
    return queries, hits


def main() -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from selfevolve.backends import make_backend
    from selfevolve.config import load_config, resolve_input
    from selfevolve.formats import load_conversations
    from selfevolve.prompts import get_strategy
    from selfevolve.records import assistant_turns
    from selfevolve.revise import run_revise

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--limit", type=int, default=0, help="first N conversations (0: all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()

    cfg = load_config(args.config, args.overrides + ["backend.kind=vllm"])
    convs, _, _ = load_conversations([resolve_input(s) for s in cfg.data.inputs], cfg.data.format)
    if args.limit:
        convs = convs[: args.limit]
    backend = make_backend(cfg)
    llm = backend.llm
    strategy = get_strategy(cfg.revise.strategy)
    rc = cfg.revise

    prompts, params = [], []
    for conv in convs:
        for t in assistant_turns(conv):
            for name, msgs in strategy.calls(conv, t).items():
                schema = strategy.schemas[name]
                prompts.append(msgs)
                params.append(SamplingParams(
                    temperature=rc.temperature, top_p=rc.top_p,
                    max_tokens=rc.critique_max_tokens if name == "critique" else rc.max_tokens,
                    structured_outputs=StructuredOutputsParams(json=schema) if schema else None))

    def raw() -> tuple[int, float]:
        t0 = time.perf_counter()
        outs = llm.chat(prompts, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs), time.perf_counter() - t0

    def ours() -> tuple[int, float, float]:
        with tempfile.TemporaryDirectory() as d:
            q0, h0 = prefix_counters(llm)
            t0 = time.perf_counter()
            s = run_revise(convs, backend, rc, Path(d) / "r.jsonl", Path(d) / "j.jsonl", show_progress=False)
            dt = time.perf_counter() - t0
            q1, h1 = prefix_counters(llm)
        return s.output_tokens, dt, (h1 - h0) / max(q1 - q0, 1)

    raw_tps, our_tps, hit = [], [], []
    backend.chat([[{"role": "user", "content": "warm up"}]], __import__("selfevolve.backends", fromlist=["Sampling"]).Sampling(0, 1, 8))
    for rep in range(args.repeats):
        for side in (("raw", "ours") if rep % 2 == 0 else ("ours", "raw")):
            llm.reset_prefix_cache()
            if side == "raw":
                n, dt = raw()
                raw_tps.append(n / dt)
                print(f"raw  LLM.chat : {n} tokens in {dt:.1f}s = {n / dt:.1f} tok/s")
            else:
                n, dt, h = ours()
                our_tps.append(n / dt)
                hit.append(h)
                print(f"ours run_revise: {n} tokens in {dt:.1f}s = {n / dt:.1f} tok/s, prefix hit {h:.1%}")
    ideal = ideal_hit_rate([backend.render(p) for p in prompts])
    result = {
        "conversations": len(convs), "prompts": len(prompts), "strategy": rc.strategy,
        "raw_tok_s": [round(x, 1) for x in raw_tps], "ours_tok_s": [round(x, 1) for x in our_tps],
        "ratio": round(statistics.median(our_tps) / statistics.median(raw_tps), 3),
        "prefix_hit_rate": round(statistics.median(hit), 3), "ideal_prefix_hit_rate": round(ideal, 3),
    }
    backend.close()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "bench_revise.json").write_text(json.dumps(result, indent=2))
    md = (f"| conversations | prompts | raw tok/s | ours tok/s | ratio | prefix hit | ideal |\n|---|---|---|---|---|---|---|\n"
          f"| {len(convs)} | {len(prompts)} | {statistics.median(raw_tps):.1f} | {statistics.median(our_tps):.1f} | "
          f"{result['ratio']} | {result['prefix_hit_rate']:.1%} | {ideal:.1%} |\n")
    (out / "bench_revise.md").write_text(md)
    print(md)


if __name__ == "__main__":  # vLLM starts worker processes with spawn
    main()
