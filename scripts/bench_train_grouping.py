"""Whole-epoch training time of a round's own data: our length buckets vs transformers' grouping, side by side.

    python scripts/bench_train_grouping.py --run-root /tmp/runs [--round 1] [--epochs 1] [--repeats 2] [--phase dpo]

Runs ``selfevolve train --force`` on the round (its curated ``train_sft`` set), alternating ``train.grouping=
buckets`` and ``train.grouping=hf`` so that load from other processes hits both alike, and reads the stage's own
summary line (steps, tokens, tokens/s, seconds of the training loop). Whole epochs only: on part of an epoch the
two samplers draw different examples, and short batches have a lower tokens/s (the per-step cost dominates them),
so a few steps say nothing (scripts/bench_train.py times a fixed number of steps). Writes
docs/bench/train_grouping.md. ``--phase dpo``: the DPO phase on the round's ``train_dpo`` pairs (after an SFT
phase of the same epochs, not counted), where ``hf`` means transformers' random order; docs/bench/train_grouping_dpo.md.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELFEVOLVE = str(Path(sys.executable).parent / "selfevolve")
LINE = r"{}: (\d+) steps, loss ([\d.]+), ([\d,]+) tokens, (\d+) tok/s, ([\d.]+)s"


def one(args, grouping: str) -> dict:
    cmd = [SELFEVOLVE, "train", "--no-progress", "--force", "--round", str(args.round), "--config", args.config,
           f"--set=run.root={args.run_root}", f"--set=train.epochs={args.epochs}", f"--set=train.grouping={grouping}"]
    if args.phase == "dpo":
        cmd += ["--set=train.dpo.enabled=true", f"--set=train.dpo.epochs={args.epochs}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    m = re.search(LINE.format(args.phase), out.stdout + out.stderr)
    if out.returncode != 0 or not m:
        sys.exit(f"{grouping}: train failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-2000:]}")
    steps, loss, tokens, tps, secs = m.groups()
    return {"grouping": grouping, "steps": int(steps), "loss": float(loss), "tokens": int(tokens.replace(",", "")),
            "tokens_per_s": int(tps), "seconds": float(secs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-root", required=True, help="run.root of a run whose round has been curated")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="docs/bench")
    ap.add_argument("--phase", choices=("sft", "dpo"), default="sft")
    args = ap.parse_args()
    runs = []
    for rep in range(args.repeats):
        for g in ("buckets", "hf"):
            runs.append(one(args, g))
            print(runs[-1], flush=True)
    secs = {g: sum(r["seconds"] for r in runs if r["grouping"] == g) for g in ("buckets", "hf")}
    other, data = ("transformers' mega-batches", "SFT set") if args.phase == "sft" else ("random order", "DPO pairs")
    md = [f"# Length grouping ({args.phase}): whole-set buckets vs {other} (scripts/bench_train_grouping.py)", "",
          f"`selfevolve train --force` on round {args.round} of `{args.run_root}` (its curated {data}), "
          f"{args.epochs:g} epoch(s) per run, alternating, {args.repeats} repeat(s); seconds = the {args.phase} "
          "training loop.", "",
          "| run | grouping | steps | tokens | loss | tokens/s | seconds |", "|---|---|---|---|---|---|---|"]
    md += [f"| {i + 1} | {r['grouping']} | {r['steps']} | {r['tokens']:,} | {r['loss']} | {r['tokens_per_s']} | "
           f"{r['seconds']} |" for i, r in enumerate(runs)]
    md += ["", f"**buckets ÷ hf wall time: {secs['buckets'] / secs['hf']:.2f}** (speed-up "
               f"{secs['hf'] / secs['buckets']:.2f}x); same examples, same tokens."]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "train_grouping.md" if args.phase == "sft" else "train_grouping_dpo.md"
    (Path(args.out) / name).write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
