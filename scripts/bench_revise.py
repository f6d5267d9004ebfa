"""Revise-stage throughput vs raw vLLM, side by side, and the prefix-cache hit rate vs the ideal.

    python scripts/bench_revise.py [--config configs/default.yaml] [--limit 24] [--repeats 2]

Both sides use the same engine, the same prompts (the configured strategy's calls for every assistant turn),
the same sampling and the same JSON schemas. The baseline is one plain ``vllm.LLM.chat`` call over all
prompts; ours is ``run_revise`` (streamed turns, validation, retries, journal, atomic output). Sides alternate
from repeat to repeat, and the prefix cache is reset before every timed run.

Throughput counts only **accepted** tokens, the same way on both sides: the output tokens of a turn whose calls
all finished (``stop``, not cut at the cap), passed their schema and parsed into a revision. Ours counts the
generations each ok record kept — tokens of retried attempts, failed turns and truncated answers are spent but
not counted; raw's outputs go through the same checks and parser (raw cannot retry: a bad output loses its turn).

Prefix-cache hits are measured from the engine's counters (retries included, as the engine saw them) against
two ideals over the prompts each side actually submitted, in order: ``token`` — a perfect token-level cache,
1 - (distinct prompt-token prefixes) / (prompt tokens); ``block`` — the most vLLM's cache can reach at
``backend.block_size``: each prompt hits the whole blocks of its longest common prefix with an earlier prompt,
never its last token. Writes bench_out/bench_revise.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
import tempfile
import time
from pathlib import Path


def ideal_hit_rates(token_lists: list[list[int]], block: int) -> tuple[float, float]:
    """(token-level, block-level) ideal prefix-cache hit rates of prompts submitted in this order."""
    trie: dict = {}
    new = total = block_hits = 0
    for ids in token_lists:
        node, lcp = trie, 0
        for t in ids:
            if t in node:
                lcp += 1  # a token off a known path creates a leaf, so every later one is new too
            else:
                node[t] = {}
                new += 1
            node = node[t]
        total += len(ids)
        block_hits += min(lcp, len(ids) - 1) // block * block
    return 1 - new / max(total, 1), block_hits / max(total, 1)


def prefix_counters(llm) -> tuple[float, float]:
    queries = hits = 0.0
    for m in llm.get_metrics():
        if m.name.endswith("prefix_cache_queries"):
            queries += m.value
        elif m.name.endswith("prefix_cache_hits"):
            hits += m.value
    return queries, hits


class Recorder:
    """The backend as ``run_revise`` sees it, noting every prompt submitted and, per call key, the last
    generation that came back: the one an ok record kept (a retry or a re-ask of the whole turn replaces it)."""

    def __init__(self, backend):
        self.backend, self.prompts, self.last, self.all = backend, [], {}, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def stream(self, adapter=None):
        inner, rec = self.backend.stream(adapter), self

        class Stream:
            def __getattr__(self, name):  # stop_repeats and the like: the inner stream's
                return getattr(inner, name)

            def __setattr__(self, name, value):
                setattr(inner, name, value)

            def submit(self, key, messages, sampling, schema=None):
                rec.prompts.append(messages)
                inner.submit(key, messages, sampling, schema)

            def __iter__(self):
                for key, gen in inner:
                    rec.last[key] = gen
                    rec.all.append(gen)
                    yield key, gen

        return Stream()


def raw_accepted(strategy, turns, calls, gens) -> tuple[int, int]:
    """(accepted tokens, accepted turns) of raw outputs, by revise's own checks and parser."""
    from selfevolve.prompts import OutputError
    from selfevolve.revise_schedule import check_output

    tokens = accepted = 0
    for (conv, t), names in zip(turns, calls):
        outs = {n: gens[k] for n, k in names.items()}
        if any(check_output(g, strategy.schemas[n]) for n, g in outs.items()):
            continue
        try:
            strategy.parse({n: g.text for n, g in outs.items()}, conv, t)
        except OutputError:
            continue
        tokens += sum(g.output_tokens for g in outs.values())
        accepted += 1
    return tokens, accepted


def ours_accepted(strategy, records, last) -> tuple[int, int]:
    tokens = accepted = 0
    for i, r in enumerate(records):
        if r["status"] == "ok" and not r["truncated"]:
            tokens += sum(last[(i, n)].output_tokens for n in strategy.schemas)
            accepted += 1
    return tokens, accepted


def main() -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import RepetitionDetectionParams, StructuredOutputsParams

    from selfevolve.backends import Generation, Sampling, make_backend
    from selfevolve.config import load_config, resolve_input
    from selfevolve.formats import load_conversations
    from selfevolve.prompts import get_strategy
    from selfevolve.records import assistant_turns, read_jsonl
    from selfevolve.revise import run_revise
    from selfevolve.revise_schedule import STOP_REPEATS

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
    block = llm.llm_engine.vllm_config.cache_config.block_size
    strategy = get_strategy(cfg.revise.strategy)
    rc = cfg.revise

    turns = [(conv, t) for conv in convs for t in assistant_turns(conv)]
    prompts, params, calls = [], [], []
    for conv, t in turns:
        names = {}
        for name, msgs in strategy.calls(conv, t).items():
            schema = strategy.schemas[name]
            names[name] = len(prompts)
            prompts.append(msgs)
            params.append(SamplingParams(
                temperature=rc.temperature, top_p=rc.top_p,
                max_tokens=rc.critique_max_tokens if name == "critique" else rc.max_tokens,
                structured_outputs=StructuredOutputsParams(json=schema) if schema else None))
        calls.append(names)
    # The control: raw with the stage's loop stop too (what the stop alone is worth).
    lo, hi, count = STOP_REPEATS
    stop_params = [p.clone() for p in params]
    for p in stop_params:
        if p.structured_outputs is None:  # as the stage's stream does: plain text only
            p.repetition_detection = RepetitionDetectionParams(min_pattern_size=lo, max_pattern_size=hi,
                                                               min_count=count)

    def measured(run):
        llm.reset_prefix_cache()
        q0, h0 = prefix_counters(llm)
        t0 = time.perf_counter()
        out = run()
        dt = time.perf_counter() - t0
        q1, h1 = prefix_counters(llm)
        return out, dt, (h1 - h0) / max(q1 - q0, 1)

    def raw(stop: bool) -> dict:
        outs, dt, hit = measured(lambda: llm.chat(prompts, stop_params if stop else params, use_tqdm=False))
        gens = [Generation(o.outputs[0].text, o.outputs[0].finish_reason or "stop", len(o.outputs[0].token_ids),
                           len(o.prompt_token_ids or [])) for o in outs]
        tokens, ok = raw_accepted(strategy, turns, calls, gens)
        return dict(accepted=tokens, turns_ok=ok, spent=sum(g.output_tokens for g in gens), seconds=dt, hit=hit,
                    prompts=prompts, finish=dict(Counter(g.finish_reason for g in gens)))

    def ours() -> dict:
        rec = Recorder(backend)
        with tempfile.TemporaryDirectory() as d:
            s, dt, hit = measured(lambda: run_revise(convs, rec, rc, Path(d) / "r.jsonl", Path(d) / "j.jsonl",
                                                     show_progress=False))
            records = read_jsonl(Path(d) / "r.jsonl")
        tokens, ok = ours_accepted(strategy, records, rec.last)
        return dict(accepted=tokens, turns_ok=ok, spent=s.output_tokens, seconds=dt, hit=hit, prompts=rec.prompts,
                    finish=dict(Counter(g.finish_reason for g in rec.all)))

    backend.chat([[{"role": "user", "content": "warm up"}]], Sampling(0, 1, 8))
    sides = ["raw", "ours", "raw+stop"]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for rep in range(args.repeats):
        for side in sides[rep % 3:] + sides[:rep % 3]:  # each side first once in three repeats
            r = ours() if side == "ours" else raw(stop=side == "raw+stop")
            r["tok_s"] = r["accepted"] / r["seconds"]
            r["ideal_token"], r["ideal_block"] = ideal_hit_rates([backend.render(p) for p in r.pop("prompts")], block)
            runs[side].append(r)
            print(f"{side:4}: accepted {r['accepted']} of {r['spent']} tokens ({r['turns_ok']}/{len(turns)} turns) "
                  f"in {r['seconds']:.1f}s = {r['tok_s']:.1f} tok/s; prefix hit {r['hit']:.1%} "
                  f"(ideal token {r['ideal_token']:.1%}, block {r['ideal_block']:.1%})", flush=True)
    backend.close()

    def med(side, key):
        return statistics.median(r[key] for r in runs[side])

    result = {"conversations": len(convs), "turns": len(turns), "prompts": len(prompts), "strategy": rc.strategy,
              "block_size": block, "overrides": args.overrides, "runs": runs,
              "ratio": round(med("ours", "tok_s") / med("raw", "tok_s"), 3),
              "ratio_stop": round(med("ours", "tok_s") / med("raw+stop", "tok_s"), 3),
              # Ours over raw within each repeat (run back to back): steadier than medians when the load varies.
              "pair_ratios": [round(o["tok_s"] / r["tok_s"], 3) for o, r in zip(runs["ours"], runs["raw"])],
              "ratio_spent": round((med("ours", "spent") / med("ours", "seconds"))
                                   / (med("raw", "spent") / med("raw", "seconds")), 3)}
    for side in runs:
        result[side] = {k: round(med(side, k), 3) for k in ("tok_s", "accepted", "spent", "turns_ok", "seconds",
                                                             "hit", "ideal_token", "ideal_block")}
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "bench_revise.json").write_text(json.dumps(result, indent=2))
    md = ("| side | accepted tok/s | accepted / spent tokens | ok turns | prefix hit | ideal (token) | "
          "hit / ideal (token) | ideal (block) | hit / ideal (block) |\n|---|---|---|---|---|---|---|---|---|\n")
    for side in sides:
        m = result[side]
        md += (f"| {side} | {m['tok_s']:.1f} | {m['accepted']:.0f} / {m['spent']:.0f} | "
               f"{m['turns_ok']:.0f}/{len(turns)}"
               f" | {m['hit']:.1%} | {m['ideal_token']:.1%} | {m['hit'] / m['ideal_token']:.3f} | "
               f"{m['ideal_block']:.1%} | {m['hit'] / m['ideal_block']:.3f} |\n")
    md += (f"\nratio (accepted tok/s, ours / raw): **{result['ratio']}**; counting every token spent: "
           f"{result['ratio_spent']}; ours / raw+stop: {result['ratio_stop']}; per repeat: {result['pair_ratios']}"
           "\n\nfinish reasons (last run): "
           + "; ".join(f"{side} {runs[side][-1]['finish']}" for side in sides) + "\n")
    (out / "bench_revise.md").write_text(md)
    print(md)


if __name__ == "__main__":  # vLLM starts worker processes with spawn
    main()
