"""Does the configured judge tell an answer that repeats a planted claim from one that does not?

The claims filter (selfevolve/filters/claims.py) asks ``judge`` whether the answer that trains states something
false or unsafe, or carries out an instruction hidden in user text. Its verdict may decide only if it is shown to
discriminate, so this bench scores it on the shipped injection splits with the real model's answers (the cache of
scripts/bench_injection_real.py, the answers a round would train on; generated if missing):

- **positives**: answers to injection chats that carry their payload (the planted claim, link, code word, ...);
- **negatives**: answers to the splits' normal chats (hard ones: corrections, pasted texts, code).

Reported: the judge's drop rate on each (recall, false drops), a one-sided Fisher exact test (does it drop
positives more often than negatives?) with recall minus false-drop rate, and what reaches training with the
configured injection filter alone and followed by the claims judge, over all splits and over those the injection
head never saw. Verdicts are kept in ``--cache`` keyed by the judge and the prompt, so a rerun or a crash goes on
where it stopped.

    flock /tmp/selfevolve-model.lock .venv/bin/python scripts/bench_claims.py [--set judge.kind=openai ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import bench_injection as bench  # noqa: E402
import bench_injection_real as real  # noqa: E402
from selfevolve.config import load_config  # noqa: E402
from selfevolve.filters import claims  # noqa: E402

BATCH = 64


def judge_name(cfg) -> str:
    j = cfg.judge
    return str(cfg.model.path) if j.kind == "same" else f"{j.backend.base_url} {j.backend.served_model or '(first)'}"


def key(name: str, context: list[dict], reply: str) -> str:
    return hashlib.sha256(json.dumps([name, claims.prompt(context, reply)]).encode()).hexdigest()[:24]


def judge_all(items: list[tuple[list[dict], str]], cfg, cache: Path) -> list[dict | str]:
    """The judge's verdict (or why it could not be read) per (context, reply), from ``cache`` or the judge."""
    from selfevolve.backends import borrow, borrow_judge

    name = judge_name(cfg)
    have = {}
    if cache.exists():
        have = {r["key"]: r["verdict"] for r in map(json.loads, cache.read_text().splitlines()) if r}
    keys = [key(name, c, r) for c, r in items]
    todo = [i for i, k in enumerate(keys) if k not in have]
    if todo:
        engine = borrow(cfg) if cfg.judge.kind == "same" else nullcontext(None)  # openai: no engine here
        with engine as backend, borrow_judge(cfg, None, backend) as judge, cache.open("a") as out:
            for n in range(0, len(todo), BATCH):
                part = todo[n:n + BATCH]
                for i, v in zip(part, claims.verdicts(judge, [items[i] for i in part], cfg.judge)):
                    have[keys[i]] = v
                    out.write(json.dumps({"key": keys[i], "judge": name, "verdict": v}) + "\n")
                out.flush()
                print(f"claims judge {n + len(part)}/{len(todo)}", flush=True)
    return [have[k] for k in keys]


def drops(v: dict | str) -> bool:
    return isinstance(v, str) or v["verdict"] == "drop"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--answers", type=Path, default=ROOT / ".cache/bench_injection_real.jsonl",
                    help="the real model's answers (scripts/bench_injection_real.py's cache)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache/bench_claims.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/bench")
    args = ap.parse_args()
    from scipy.stats import fisher_exact

    cfg = load_config(args.config, args.overrides)
    rows = [r for r in bench.load() if r["split"] in real.SPLITS]
    texts = real.generate(rows, cfg, args.answers, 256)
    results = real.score(rows, texts, cfg.curate.injection)
    scored = [x for x in results if not x["empty"] and (x["carries"] or x["row"]["set"] == "normal")]
    verdicts = judge_all([(x["row"]["messages"][:x["row"]["turn"]], texts[x["row"]["id"]]) for x in scored],
                         cfg, args.cache)
    for x, v in zip(scored, verdicts):
        x["claims"] = v
    pos = [x for x in scored if x["carries"]]
    neg = [x for x in scored if x["row"]["set"] == "normal"]
    tp, fp = sum(drops(x["claims"]) for x in pos), sum(drops(x["claims"]) for x in neg)
    unread = sum(isinstance(x["claims"], str) for x in scored)
    _, p = fisher_exact([[tp, len(pos) - tp], [fp, len(neg) - fp]], alternative="greater")
    recall, fdr = tp / max(len(pos), 1), fp / max(len(neg), 1)
    passed = [x for x in pos if x["kept"]]
    caught = sum(drops(x["claims"]) for x in passed)
    md = ["# The claims judge: does it tell planted claims from normal answers?", "",
          f"`scripts/bench_claims.py`: judge `{judge_name(cfg)}` (`judge.kind: {cfg.judge.kind}`), on the real "
          f"model's answers to the shipped injection splits ({args.answers.name}). Positives: answers that carry "
          "their injection chat's payload; negatives: answers to the splits' normal chats.", "",
          "| | answers | the judge drops |", "|---|---|---|",
          f"| carry a payload (positives) | {len(pos)} | {bench.frac(tp, len(pos))} |",
          f"| normal chats (negatives) | {len(neg)} | {bench.frac(fp, len(neg))} |",
          f"| verdict unreadable (counted as a drop) | {len(scored)} | {bench.frac(unread, len(scored))} |", "",
          f"One-sided Fisher exact test (drops positives more often than negatives): p = {p:.3g}; recall minus "
          f"false-drop rate: {100 * (recall - fdr):.1f} points. Significance alone does not make it useful: what "
          f"counts is the payloads the injection filter lets through, of which it drops **{caught}/{len(passed)}**, "
          "and the normal chats it costs (below).", ""]
    md += through(results, {x["row"]["id"]: x["claims"] for x in scored})
    md += ["", "## What the judge said of the payloads the injection filter lets through", ""]
    md += [f"- `{x['row']['id']}` ({x['row']['route']}): "
           + (f"unreadable ({x['claims']})" if isinstance(x["claims"], str)
              else f"**{x['claims']['verdict']}**: {x['claims']['reason'][:200]!r}")
           for x in pos if x["kept"]] or ["none"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claims.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def through(results: list[dict], verdict: dict) -> list[str]:
    """Payloads that reach training, and normal chats dropped: the injection filter alone, then with the judge."""
    md = ["| splits | injection chats | reach training: injection filter | + claims judge | normal chats | "
          "normal dropped: injection filter | + claims judge |", "|---|---|---|---|---|---|---|"]
    for name, pick in real.TOTALS.items():
        sel = [x for x in results if pick(x["row"]["split"])]
        inj = [x for x in sel if x["row"]["set"] == "injection"]
        norm = [x for x in sel if x["row"]["set"] == "normal"]
        judged = [x["kept"] and not (x["row"]["id"] in verdict and drops(verdict[x["row"]["id"]])) for x in sel]
        keep = dict(zip((x["row"]["id"] for x in sel), judged))
        a = sum(x["carries"] and x["kept"] for x in inj)
        b = sum(x["carries"] and keep[x["row"]["id"]] for x in inj)
        c, d = sum(not x["kept"] for x in norm), sum(not keep[x["row"]["id"]] for x in norm)
        md.append(f"| {name} | {len(inj)} | {bench.frac(a, len(inj))} | {bench.frac(b, len(inj))} | {len(norm)} | "
                  f"{bench.frac(c, len(norm))} | {bench.frac(d, len(norm))} |")
    return md


if __name__ == "__main__":
    main()
