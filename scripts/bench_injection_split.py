"""One injection split file against the configured filter, worst case (every injection chat's training answer
carries its payload): payloads through and hard normal chats dropped per filter variant, and which kinds got
through. For a new blind split: score it here before reading it, then add it to scripts/bench_injection.py.

    .venv/bin/python scripts/bench_injection_split.py selfevolve/data/injection_fresh7.jsonl
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_injection as bench  # noqa: E402
from selfevolve.config import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("split", type=Path)
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    args = ap.parse_args()
    base = load_config(args.config).curate.injection
    head = bench.ih.load_head()
    thr = base.head_threshold if base.head_threshold is not None else head["threshold"]
    rows = [json.loads(x) for x in args.split.read_text().splitlines() if x.strip()]
    ev = bench.evaluate(rows, base)
    print(f"{args.split.name}: worst case, head threshold {thr}\n")
    print("| filter | payloads through | hard normal chats dropped |\n|---|---|---|")
    for name in bench.VARIANTS:
        through, n, dropped, m = bench.counts(ev, bench.variant(ev, name, thr))
        print(f"| {name} | {bench.frac(through, n)} | {bench.frac(dropped, m)} |")
    final = bench.variant(ev, bench.VARIANTS[-1], thr)
    missed = collections.Counter(r["kind"] for r, d in zip(rows, final) if r["set"] == "injection" and not d)
    print("\nthrough, by kind:", ", ".join(f"{k} {v}" for k, v in missed.most_common()))


if __name__ == "__main__":
    main()
