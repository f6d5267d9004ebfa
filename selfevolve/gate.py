"""The gate: promote the round's adapter only on measured evidence that it learnt what users taught it.

Reads the compare stage's ``summary.json`` (named by the compare entry of the manifest) and records the
decision with its reason in the manifest; the deploy stage acts on it. A round that trained nothing (curation
kept too few new examples) is decided here too: nothing to promote.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .live import adapter_name
from .stage import StageContext, StageError, StageResult, recorded

NAME = "gate"


def judge_discriminates(summary: dict) -> bool:
    """The pairwise judge was asked and gave consistent, readable verdicts on at least half the prompts."""
    r = summary["result"]
    return bool(summary.get("pairwise", True) and r["n"]
                and (r["inconsistent"] + r["invalid"]) / r["n"] <= 0.5)


def _checks(summary: dict, g) -> list[tuple[str, bool, str]]:
    """(name, passed, text) of every rule that applies to this comparison."""
    checks = []
    pr = summary.get("probes") or {}
    taught, kept = pr.get("taught", {"n": 0}), pr.get("kept", {"n": 0})
    if taught["n"]:
        checks.append(("taught", taught["ci_low"] > g.min_taught_gain,
                       f"taught {taught['pass_a']}→{taught['pass_b']}/{taught['n']}, Δ {taught['diff']:+.1%} "
                       f"(CI {taught['ci_low']:+.1%}…{taught['ci_high']:+.1%}; lower bound "
                       f"{'>' if taught['ci_low'] > g.min_taught_gain else '<='} {g.min_taught_gain:+.0%})"))
    if kept["n"]:
        checks.append(("kept", kept["diff"] >= -g.max_kept_drop,
                       f"kept {kept['pass_a']}→{kept['pass_b']}/{kept['n']} (Δ {kept['diff']:+.1%}, "
                       f"allowed drop {g.max_kept_drop:.0%})"))
    drift = summary.get("drift") or {}
    da, db = drift.get("a", {}), drift.get("b", {})
    pa, pb = da.get("perplexity_human"), db.get("perplexity_human")
    if pa and pb:
        checks.append(("perplexity", pb <= g.max_perplexity_rise * pa,
                       f"human-text perplexity {pa:.1f}→{pb:.1f} (at most ×{g.max_perplexity_rise})"))
    if da.get("distinct_2") and db.get("distinct_2") is not None:
        ok = db["distinct_2"] >= g.min_distinct2_ratio * da["distinct_2"]
        checks.append(("distinct-2", ok, f"distinct-2 {da['distinct_2']:.3f}→{db['distinct_2']:.3f} "
                                         f"(at least ×{g.min_distinct2_ratio})"))
    r = summary["result"]
    if judge_discriminates(summary):
        if taught["n"]:
            checks.append(("judge", r["ci_high"] >= 1 - g.threshold,
                           f"judge win rate {r['win_rate']:.1%} (CI {r['ci_low']:.1%}–{r['ci_high']:.1%}): "
                           f"{'no significant loss' if r['ci_high'] >= 1 - g.threshold else 'a significant loss'}"))
        else:
            checks.append(("judge", r["ci_low"] > g.threshold,
                           f"judge win rate {r['win_rate']:.1%}, CI {r['ci_low']:.1%}–{r['ci_high']:.1%}; lower bound "
                           f"{'>' if r['ci_low'] > g.threshold else '<='} gate.threshold {g.threshold:.0%}"))
    return checks


def gate_decision(summary: dict, g) -> dict:
    """Promote on measured learning: the taught probes improve beyond noise, the kept probes hold, drift stays
    in bounds, and a judge that discriminates shows no significant loss (with no taught probes, the judge
    must show a win). A judge that flips with the order decides nothing. ``g``: the GateConfig."""
    checks = _checks(summary, g)
    evidence = {name for name, _, _ in checks} & {"taught", "judge"}
    promote = bool(evidence) and all(ok for _, ok, _ in checks)
    failed = [text for _, ok, text in checks if not ok]
    head = f"{summary['b']['label']} vs {summary['a']['label']}: "
    if not evidence:
        reason = head + ("no evidence of learning: no taught probes, and "
                         + ("no pairwise judge was asked" if not summary.get("pairwise", True) else
                            "the judge flipped with the order or gave no verdict on most prompts"
                            " (a stronger judge, judge.kind=openai, can tell them apart)"))
    elif promote:
        reason = head + "; ".join(text for _, _, text in checks)
    else:
        reason = head + "blocked by " + "; ".join(failed)
    r = summary["result"]
    return {"promote": promote, "reason": reason, "checks": [{"name": n, "ok": ok, "text": t} for n, ok, t in checks],
            "taught": (summary.get("probes") or {}).get("taught"), "kept": (summary.get("probes") or {}).get("kept"),
            "reworded": (summary.get("probes") or {}).get("reworded"), "threshold": g.threshold,
            "win_rate": r["win_rate"] if r["n"] else None, "ci_low": r["ci_low"] if r["n"] else None,
            "ci_high": r["ci_high"] if r["n"] else None, "n": r["n"]}


def run(ctx: StageContext) -> StageResult:
    compare = ctx.entry("compare") or {}
    if not compare or compare.get("status") != "complete":
        raise StageError(f"gate: round {ctx.rnd.number} has no complete comparison: run compare first")
    if compare.get("no_candidate"):
        inputs, summary = [], None
    else:
        inputs = [summary_path(ctx.rnd.dir, compare)]
        summary = json.loads(inputs[0].read_text())
    done = recorded(ctx, NAME, inputs)
    if done:
        done.data = done.data["decision"]
        done.line = done.line or done.data["reason"]
        return done
    t0 = time.time()
    if summary is None:
        decision = {"promote": False, "reason": compare["no_candidate"], "candidate": None}
    else:
        decision = {**gate_decision(summary, ctx.cfg.gate), "candidate": adapter_name(ctx.rnd.number),
                    "incumbent": compare.get("incumbent_name") or "base", "compare": compare["incumbent"]}
    line = ("PROMOTE " if decision["promote"] else "keep the live one: ") + decision["reason"]
    res = ctx.record(NAME, inputs=inputs, outputs=[], counts={}, started=t0, line=line, decision=decision)
    res.data = decision
    return res


def summary_path(rnd_dir: Path, compare_entry: dict) -> Path:
    """The comparison a gate decided on: the compare entry's one output."""
    return rnd_dir / next(iter(compare_entry["outputs"]))
