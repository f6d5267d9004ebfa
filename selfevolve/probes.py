"""Probes: did the round learn what users corrected, and keep what they confirmed? Scored by the users' words.

Built from the run's curated records up to the candidate's round (the candidate trains on all of them):
- **taught**: a corrected turn whose grounded revision trains: its question asked fresh (no conversation) passes
  when the answer carries the correction's terms and repeats none the user rejected (selfevolve/grounding.py);
- **reworded**: the same, the question reworded by templates (``grounding.rewordings``: a different surface, the
  same content words; it tests that a lesson survives a rephrasing, not a different question);
- **kept**: a confirmed turn: its question asked fresh passes when the answer keeps the confirmed answer's key
  terms (numbers, names, code) and meaning (``grounding.answer_agrees``).
Only turns whose context holds one user message are probes: a later turn's question may lean on the
conversation before it, and a fresh question must stand alone. Both sides answer greedily; per kind the
pass rates are paired per probe: McNemar's exact test and a paired bootstrap CI of the difference.
"""
from __future__ import annotations

import hashlib

from . import grounding, stats
from .backends.base import Sampling
from .records import read_jsonl

KINDS = ("taught", "reworded", "kept")


def _question(rec: dict) -> str | None:
    users = [m["content"] for m in rec["context"] if m["role"] == "user"]
    return users[0] if len(users) == 1 else None


def _correction(rec: dict) -> str:
    sig = rec.get("signal") or {}
    return sig.get("text") or next((m["content"] for m in rec.get("aftermath", []) if m["role"] == "user"), "")


def _rank(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def build(curated_files: list, max_per_kind: int, rewordings: int = 1) -> list[dict]:
    """Probes from curated.jsonl files (oldest first; a turn curated again later wins), ``max_per_kind`` each,
    picked by a stable hash of their id, deduplicated by question."""
    newest: dict[str, dict] = {}
    for path in curated_files:
        for rec in read_jsonl(path):
            newest[rec["id"]] = rec
    probes: dict[str, list[dict]] = {k: [] for k in KINDS}
    for rec in newest.values():
        q = _question(rec)
        if q is None:
            continue
        if rec.get("use") == "original":
            probes["kept"].append({"id": f"kept:{rec['id']}", "kind": "kept", "question": q,
                                   "reference": rec["original"], "source": rec["id"]})
        elif rec.get("signal", {}).get("label") == "corrected":
            base = {"original": rec["original"], "correction": _correction(rec), "asked": q, "source": rec["id"]}
            probes["taught"].append({"id": f"taught:{rec['id']}", "kind": "taught", "question": q, **base})
            for i, rw in enumerate(grounding.rewordings(q, rewordings)):
                probes["reworded"].append({"id": f"reworded{i}:{rec['id']}", "kind": "reworded", "question": rw,
                                           **base})
    out = []
    for kind in KINDS:
        seen, chosen = set(), []
        for p in sorted(probes[kind], key=lambda p: _rank(p["id"])):
            if p["question"] not in seen and len(chosen) < max_per_kind:
                seen.add(p["question"])
                chosen.append(p)
        out += sorted(chosen, key=lambda p: p["id"])
    return out


def passes(probe: dict, answer: str, gcfg=None) -> bool:
    if probe["kind"] == "kept":
        return grounding.answer_agrees(answer, probe["reference"], question=probe["question"], cfg=gcfg)
    terms = grounding.correction_terms(probe["original"], probe["correction"], probe["asked"])
    return grounding.carries(answer, terms, gcfg)


def answer(backend, probes: list[dict], adapter: str | None, max_tokens: int) -> list[str]:
    """Greedy answers of one side to the probes' questions, each asked alone."""
    if not probes:
        return []
    batch = [[{"role": "user", "content": p["question"]}] for p in probes]
    return [g.text for g in backend.chat(batch, Sampling(0.0, 1.0, max_tokens), adapter=adapter)]


def evaluate(probes: list[dict], answers_a: list[str], answers_b: list[str], *, gcfg=None, n_boot: int = 2000,
             confidence: float = 0.95, seed: int = 0) -> tuple[dict, list[dict]]:
    """(summary per kind, rows): pass rates of A (live) and B (candidate), paired difference with CI,
    McNemar p, fixed (A failed, B passed) and broken (A passed, B failed)."""
    rows = [{**p, "answer_a": a, "answer_b": b, "pass_a": passes(p, a, gcfg), "pass_b": passes(p, b, gcfg)}
            for p, a, b in zip(probes, answers_a, answers_b)]
    summary = {}
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            summary[kind] = {"n": 0}
            continue
        a, b = [r["pass_a"] for r in rs], [r["pass_b"] for r in rs]
        diff, low, high = stats.paired_bootstrap_diff(a, b, n_boot=n_boot, confidence=confidence, seed=seed)
        fixed = sum(not x and y for x, y in zip(a, b))
        broken = sum(x and not y for x, y in zip(a, b))
        summary[kind] = {"n": len(rs), "pass_a": sum(a), "pass_b": sum(b), "rate_a": sum(a) / len(rs),
                         "rate_b": sum(b) / len(rs), "diff": diff, "ci_low": low, "ci_high": high,
                         "fixed": fixed, "broken": broken, "p_mcnemar": stats.mcnemar(fixed, broken),
                         "confidence": confidence}
    return summary, rows


def line_counts(probe_set: list[dict]) -> str:
    return ", ".join(f"{k} {sum(p['kind'] == k for p in probe_set)}" for k in KINDS)


def line(summary: dict) -> str:
    parts = []
    for kind in KINDS:
        s = summary.get(kind, {"n": 0})
        parts.append(f"{kind} –" if not s["n"] else
                     f"{kind} {s['pass_a']}→{s['pass_b']}/{s['n']} (Δ {s['diff']:+.0%}, CI {s['ci_low']:+.0%}…"
                     f"{s['ci_high']:+.0%})")
    return "; ".join(parts)
