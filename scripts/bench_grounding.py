"""Precision and recall of the grounding check (selfevolve/grounding.py) on real revisions of held-out chats.

    python scripts/bench_grounding.py [--config configs/default.yaml] [--samples 4]   # generate (vLLM) + measure
    python scripts/bench_grounding.py --from-file                                     # measure the saved revisions

Data: the 30 `kind: correction` chats of selfevolve/data/reviser_bench.jsonl (never used to write the rules:
those were written on sample_chats.jsonl and tests/test_grounding.py). Each chat is revised by the real model
through `selfevolve.revise.revise_turns`: the `chat` strategy sampled `--samples` times at temperature 0.8 and
the `json` strategy once at the configured temperature. A revision is *truly right* when it contains one of
the chat's `expect_any` and none of its `forbid_any` (as scripts/bench_reviser_quality.py scores). The
revisions are saved to selfevolve/data/grounding_bench_revisions.jsonl (id, strategy, sample, revised, truth)
so the measurement is recomputed without the model. Precision = truly right among the revisions the check
passes (a passed wrong revision becomes training data); recall = passed among the truly right ones.

Also reported, as the development figures the defaults were set on: the check on the 42 corrected turns of
sample_chats.jsonl, with the conversation's own later fix as the right revision and the original as the wrong
one. Writes bench_out/grounding.{md,png,json}.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import replace
from pathlib import Path

from selfevolve.config import PACKAGE_DATA
from selfevolve.grounding import GroundingConfig, check
from selfevolve.records import read_jsonl, write_atomic, write_json, write_jsonl
from selfevolve.stats import pyplot, save_figure, wilson

REVISIONS = PACKAGE_DATA / "grounding_bench_revisions.jsonl"
NOTES = ("The first measurement (same revisions) gave lexical precision 75/77: both false passes were one chat whose "
         "correction ends in a negated name (\"..., not the Atlantic.\"); a bug read a name at the very end of a text "
         "as a sentence-initial common word, so nothing was rejected. Fixed (tests/test_grounding.py covers it); the "
         "table is after the fix, so that one change was made after seeing the bench. No rule was tuned on it.")
# Corrected turns of sample_chats.jsonl whose conversation goes on with the assistant's own fix (hand-picked:
# the next user turn corrects a fact, reports an error or clarifies; confirmations and new questions excluded).
DEV_TURNS = ("001#1 002#1 003#1 005#5 010#8 011#2 012#1 013#1 015#5 020#3 020#7 021#1 022#1 023#1 025#3 025#9 "
             "030#5 030#9 031#1 032#1 033#1 035#3 035#9 040#5 041#1 042#1 043#1 045#5 045#9 048#1 050#3 050#7 "
             "051#1 052#1 059#1 060#1 061#1 063#1 067#1 068#1 069#1 071#1").split()


def truly_right(item: dict, revised: str) -> bool:
    text = revised.lower()
    return any(k in text for k in item["expect_any"]) and not any(k in text for k in item.get("forbid_any", []))


def turn_texts(messages: list[dict], turn: int) -> tuple[str, str, str]:
    """(question, original, correction) of the assistant turn ``turn``."""
    question = next((m["content"] for m in reversed(messages[:turn]) if m["role"] == "user"), "")
    return question, messages[turn]["content"], messages[turn + 1]["content"]


def generate(items: list[dict], config: str, overrides: list[str], samples: int) -> list[dict]:
    """Real revisions: chat x ``samples`` at temperature 0.8 (one batched call), json x 1."""
    from selfevolve.backends import make_backend
    from selfevolve.config import load_config
    from selfevolve.revise import revise_turns

    cfg = load_config(config, overrides)
    backend = make_backend(cfg)
    pairs = [({"id": it["id"], "messages": it["messages"]}, it["turn"]) for it in items]
    runs = [("chat", replace(cfg.revise, strategy="chat", temperature=0.8), samples),
            ("json", replace(cfg.revise, strategy="json"), 1)]
    out = []
    try:
        for name, rcfg, k in runs:
            t0 = time.time()
            recs = revise_turns(pairs * k, backend, rcfg, cfg.model.path)
            print(f"{name}: {len(recs)} revisions in {time.time() - t0:.1f}s")
            for i, rec in enumerate(recs):
                it = items[i % len(items)]
                row = {"id": it["id"], "strategy": name, "sample": i // len(items), "status": rec["status"]}
                if rec["status"] == "ok":
                    row.update(revised=rec["revised"], truth=truly_right(it, rec["revised"]))
                else:
                    row.update(revised=None, truth=None, reason=rec.get("reason"))
                out.append(row)
    finally:
        backend.close()
    return out


def confusion(truth: list[bool], passed: list[bool]) -> dict:
    tp = sum(t and p for t, p in zip(truth, passed))
    fp = sum(p and not t for t, p in zip(truth, passed))
    fn = sum(t and not p for t, p in zip(truth, passed))
    tn = len(truth) - tp - fp - fn
    res = {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": len(truth)}
    for key, k, n in (("precision", tp, tp + fp), ("recall", tp, tp + fn)):
        lo, hi = wilson(k, n)
        res[key] = {"value": k / n if n else None, "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}
    return res


def measure(items: dict[str, dict], rows: list[dict], cfg: GroundingConfig, embed: bool = True) -> dict:
    """The check on every saved revision: lexical alone, and with the similarity floor."""
    ok_rows = [r for r in rows if r.get("revised") is not None]
    truth = [truly_right(items[r["id"]], r["revised"]) for r in ok_rows]
    lexical, gated, examples = [], [], []
    for r, right in zip(ok_rows, truth):
        q, orig, corr = turn_texts(items[r["id"]]["messages"], items[r["id"]]["turn"])
        g = check(r["revised"], orig, corr, question=q, embed=embed,
                  min_similarity=cfg.min_similarity if embed else None)
        lexical.append(g.ok or (g.reason or "").startswith("off the turn's topic"))
        gated.append(g.ok)
        examples.append({"id": r["id"], "strategy": r["strategy"], "truth": right,
                         "passed": g.ok, "reason": g.reason, "similarity": g.similarity,
                         "revised": r["revised"][:200]})
    out = {"revisions": len(rows), "failed_generations": len(rows) - len(ok_rows), "truly_right": sum(truth),
           "lexical": confusion(truth, lexical), "examples": examples}
    if embed:
        out["lexical+similarity"] = confusion(truth, gated)
        out["min_similarity"] = cfg.min_similarity
    return out


def dev_figures() -> dict:
    """The check on sample_chats.jsonl: each corrected turn's later fix (acknowledgement cut) vs its original."""
    chats = {c["id"]: c for c in read_jsonl(PACKAGE_DATA / "sample_chats.jsonl")}
    fixes_passed = originals_passed = n = 0
    for key in DEV_TURNS:
        cid, t = key.split("#")
        msgs = chats[f"sample-{cid}"]["messages"]
        q, orig, corr = turn_texts(msgs, int(t))
        fix = re.sub(r"^(You're right|Right|Correct|Sorry|My mistake|Thanks for the correction)[^.:,]*[.:,]\s*", "",
                     msgs[int(t) + 2]["content"])
        fixes_passed += check(fix, orig, corr, question=q, embed=False).ok
        originals_passed += check(orig, orig, corr, question=q, embed=False).ok
        n += 1
    return {"turns": n, "fixes_passed": fixes_passed, "originals_passed": originals_passed}


def fmt(c: dict, key: str) -> str:
    m = c[key]
    return "n/a" if m["value"] is None else f"{m['value']:.3f} ({m['k']}/{m['n']}; 95% CI {m['ci95'][0]:.2f}-{m['ci95'][1]:.2f})"


def report(res: dict, out: Path) -> None:
    rules = [k for k in ("lexical", "lexical+similarity") if k in res]
    md = ["# Grounding check on real revisions (reviser_bench.jsonl, 30 correction chats)", "",
          f"{res['revisions']} revisions ({res['failed_generations']} failed generations left out), "
          f"{res['truly_right']} truly right (contain expect_any, none of forbid_any).", "",
          "| rule | passed | precision | recall | TP / FP / FN / TN |", "|---|---|---|---|---|"]
    for k in rules:
        c = res[k]
        md.append(f"| {k} | {c['tp'] + c['fp']} | {fmt(c, 'precision')} | {fmt(c, 'recall')} | "
                  f"{c['tp']} / {c['fp']} / {c['fn']} / {c['tn']} |")
    if "min_similarity" in res:
        md.append(f"\nSimilarity floor: cos(revision, question + original + correction) >= {res['min_similarity']}.")
    d = res["dev"]
    md += ["", NOTES]
    md += ["", f"Development set (sample_chats.jsonl, rules written on it): the conversation's own fix passes "
           f"{d['fixes_passed']}/{d['turns']}, the original answer passes {d['originals_passed']}/{d['turns']}.",
           "", "## Passed but not truly right (what would become wrong training data)", ""]
    wrong = [e for e in res["examples"] if e["passed"] and not e["truth"]]  # under the last rule of the table
    md += [f"- {e['id']} ({e['strategy']}): {e['revised']!r}" for e in wrong] or ["(none)"]
    md += ["", "## Truly right but dropped (reasons)", ""]
    reasons = {}
    for e in res["examples"]:
        if e["truth"] and not e["passed"]:
            why = re.sub(r"'.*'", "'…'", e["reason"] or "")
            reasons[why] = reasons.get(why, 0) + 1
    md += [f"- {why}: {n}" for why, n in sorted(reasons.items(), key=lambda x: -x[1])]
    write_atomic(out / "grounding.md", "\n".join(md) + "\n")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, k in enumerate(rules):
        for j, metric in enumerate(("precision", "recall")):
            m = res[k][metric]
            if m["value"] is None:
                continue
            x = j + (i - (len(rules) - 1) / 2) * 0.35
            ax.bar(x, m["value"], width=0.33, color=f"C{i}", label=k if j == 0 else None)
            ax.errorbar(x, m["value"], yerr=[[m["value"] - m["ci95"][0]], [m["ci95"][1] - m["value"]]],
                        color="black", capsize=4)
            ax.text(x, 0.03, f"{m['k']}/{m['n']}", ha="center", fontsize=8, color="white")
    ax.set_xticks([0, 1], ["precision", "recall"])
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Grounding check, {res['revisions']} real revisions (95% Wilson CI)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    save_figure(fig, out / "grounding.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--samples", type=int, default=4, help="chat-strategy samples per chat (temperature 0.8)")
    ap.add_argument("--from-file", action="store_true", help=f"measure {REVISIONS.name} instead of generating")
    ap.add_argument("--no-embed", action="store_true", help="lexical rule only (no embedder)")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()

    items = [it for it in read_jsonl(PACKAGE_DATA / "reviser_bench.jsonl") if it["kind"] == "correction"]
    if args.from_file:
        rows = read_jsonl(REVISIONS)
    else:
        rows = generate(items, args.config, args.overrides, args.samples)
        write_jsonl(REVISIONS, rows)
    res = measure({it["id"]: it for it in items}, rows, GroundingConfig(), embed=not args.no_embed)
    res["dev"] = dev_figures()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    write_json(out / "grounding.json", res)
    report(res, out)
    for k in ("lexical", "lexical+similarity"):
        if k in res:
            print(f"{k}: precision {fmt(res[k], 'precision')}  recall {fmt(res[k], 'recall')}")
    print(f"dev: fixes {res['dev']['fixes_passed']}/{res['dev']['turns']}, "
          f"originals {res['dev']['originals_passed']}/{res['dev']['turns']}")


if __name__ == "__main__":  # vLLM starts worker processes with spawn
    main()
