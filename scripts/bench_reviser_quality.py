"""Reviser quality per strategy: on held-out chats where the right new answer is known, how often does the
new answer carry the user's correction, and how often is a right answer kept?

    python scripts/bench_reviser_quality.py [--config configs/default.yaml] [--strategies chat,json] [--repeats 1]

Data: selfevolve/data/reviser_bench.jsonl (30 `correction` chats: the answer at `turn` is wrong and the user
later names the right one; 10 `fine` chats: the answer is right and the user says so). A new answer
*carries* a correction when it contains one of `expect_any` and none of `forbid_any`; it *keeps* a right
answer when it still contains one of `expect_any`. Writes bench_out/reviser_quality.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def score(item: dict, record: dict) -> bool:
    if record["status"] != "ok":
        return False
    text = record["revised"].lower()
    hit = any(k in text for k in item["expect_any"])
    return hit and not any(k in text for k in item.get("forbid_any", []))


def main() -> None:
    from selfevolve.backends import make_backend
    from selfevolve.config import PACKAGE_DATA, load_config
    from selfevolve.revise import revise_turns

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--strategies", default="chat,json")
    ap.add_argument("--repeats", type=int, default=1, help="runs per strategy (sampling varies between runs)")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()

    cfg = load_config(args.config, args.overrides)
    items = [json.loads(line) for line in (PACKAGE_DATA / "reviser_bench.jsonl").read_text().splitlines() if line.strip()]
    backend = make_backend(cfg)
    rows = []
    for name in args.strategies.split(","):
        rcfg = replace(cfg.revise, strategy=name)
        for rep in range(args.repeats):
            t0 = time.time()
            recs = revise_turns([({"id": it["id"], "messages": it["messages"]}, it["turn"]) for it in items],
                                backend, rcfg, cfg.model.path)
            res = {"strategy": name, "repeat": rep, "seconds": round(time.time() - t0, 1),
                   "failed": sum(r["status"] == "failed" for r in recs)}
            for kind in ("correction", "fine"):
                pairs = [(it, r) for it, r in zip(items, recs) if it["kind"] == kind]
                res[kind] = f"{sum(score(it, r) for it, r in pairs)}/{len(pairs)}"
                res[f"{kind}_verdict_revise"] = sum(r.get("verdict") == "revise" for _, r in pairs)
            rows.append(res)
            print(json.dumps(res))
            examples = [{"id": it["id"], "kind": it["kind"], "revised": r.get("revised", r.get("reason"))[:300],
                         "verdict": r.get("verdict"), "ok": score(it, r)} for it, r in zip(items, recs)]
            Path(args.out).mkdir(exist_ok=True)
            (Path(args.out) / f"reviser_quality_{name}_{rep}.jsonl").write_text(
                "".join(json.dumps(e) + "\n" for e in examples))
    backend.close()
    md = ["| strategy | run | corrections carried | right answers kept | verdict=revise (corr / fine) | failed | s |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['strategy']} | {r['repeat']} | {r['correction']} | {r['fine']} | "
                  f"{r['correction_verdict_revise']} / {r['fine_verdict_revise']} | {r['failed']} | {r['seconds']} |")
    out = Path(args.out)
    (out / "reviser_quality.json").write_text(json.dumps({"model": cfg.model.path, "rows": rows}, indent=2))
    (out / "reviser_quality.md").write_text(f"model: `{cfg.model.path}`\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":  # vLLM starts worker processes with spawn
    main()
