"""Where to stop a looping revise answer: vLLM's ``repetition_detection`` settings, tried offline on real outputs.

    python scripts/bench_revise_loops.py [--skip 24] [--samples 2]

Generates the ``answer`` call of every assistant turn of the conversations after the first ``--skip`` (the
ones scripts/bench_revise.py times are left out, so the setting is not tuned on the bench's data), without any
detection, ``--samples`` times at the configured sampling. Then replays vLLM's own check
(``vllm.v1.core.sched.utils.check_sequence_repetition``, run after every token as the scheduler does) on each
output for a grid of settings, and counts: answers cut at max_tokens that a setting stops (and the tokens it
saves), and answers that finished on their own that it would have stopped (answers lost: must be 0).
Writes bench_out/bench_revise_loops.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def first_stop(token_ids: list[int], params) -> int | None:
    """The output length at which vLLM's repetition check would end this output (None: never)."""
    from vllm.v1.core.sched.utils import check_sequence_repetition

    for n in range(1, len(token_ids) + 1):
        if check_sequence_repetition(token_ids[:n], params):
            return n
    return None


def main() -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import RepetitionDetectionParams

    from selfevolve.backends import make_backend
    from selfevolve.config import load_config, resolve_input
    from selfevolve.formats import load_conversations
    from selfevolve.prompts import get_strategy
    from selfevolve.records import assistant_turns

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--skip", type=int, default=24)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()

    cfg = load_config(args.config, ["backend.kind=vllm"])
    convs, _, _ = load_conversations([resolve_input(s) for s in cfg.data.inputs], cfg.data.format)
    convs = convs[args.skip:]
    strategy, rc = get_strategy("chat"), cfg.revise
    prompts = [strategy.calls(c, t)["answer"] for c in convs for t in assistant_turns(c)] * args.samples
    backend = make_backend(cfg)
    params = SamplingParams(temperature=rc.temperature, top_p=rc.top_p, max_tokens=rc.max_tokens)
    outs = [o.outputs[0] for o in backend.llm.chat(prompts, params, use_tqdm=False)]
    backend.close()

    cut = [list(o.token_ids) for o in outs if o.finish_reason == "length"]
    done = [list(o.token_ids) for o in outs if o.finish_reason != "length"]
    spent = sum(len(o.token_ids) for o in outs)
    rows = []
    for lo, hi, count in [(1, 16, 4), (2, 16, 4), (4, 16, 3), (4, 32, 3), (8, 32, 3), (4, 32, 2), (8, 48, 2),
                          (1, 32, 3), (2, 24, 3), (4, 64, 3)]:
        p = RepetitionDetectionParams(max_pattern_size=hi, min_pattern_size=lo, min_count=count)
        stops = [first_stop(ids, p) for ids in cut]
        caught = [(len(ids) - s) for ids, s in zip(cut, stops) if s is not None]
        lost = sum(first_stop(ids, p) is not None for ids in done)
        rows.append(f"| {lo}–{hi} | {count} | {len(caught)}/{len(cut)} | {sum(caught)} ({sum(caught) / spent:.1%}) "
                    f"| {lost}/{len(done)} |")
    md = (f"{len(outs)} answers ({len(prompts) // args.samples} turns × {args.samples}) of conversations "
          f"{args.skip + 1}–{args.skip + len(convs)}, max_tokens {rc.max_tokens}, temperature {rc.temperature}: "
          f"{len(cut)} cut at max_tokens ({sum(map(len, cut))} of {spent} output tokens).\n\n"
          "| pattern tokens | min repeats | cut answers stopped | tokens saved (of all) | finished answers stopped |\n"
          "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "bench_revise_loops.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
