"""Compare two sides — a round's adapter or the base model — on held-out prompts.

    selfevolve compare A B        A, B: ``base``, ``r1`` / ``round-001``, or a path to an adapter folder in the run

1. Prompts (selfevolve/compare_prompts.py): MT-Bench first turns plus held-out chat turns, each with the
   conversation before it. With no held-out conversations yet, MT-Bench alone, and the summary notes it.
2. Answers from both sides with one backend, the adapter switched per call (``adapter=None`` is the base).
   When both sides are the same model the answers are generated once and shared. Greedy answers are kept in
   the run's ``answers/`` (compare_phases.AnswerCache): the next round reads the live side's instead of
   generating them again.
3. The pairwise judge (selfevolve/judge.py; ``judge:``, ``kind: same`` = the same backend, base model) sees
   both answers in both orders. A prompt is a win (loss) for B only when both orders agree; a flip with the
   order, or an unreadable verdict, is a tie. So a model compared with itself can never win.
4. Statistics (selfevolve/stats.py): wins / ties / losses for B against A, B's win rate (ties count half) with
   its Wilson interval over prompts, per prompt source; a length-controlled view (win rate per length-ratio
   bucket and a logistic regression of the outcome on log(len B / len A), with a seeded bootstrap CI).
5. Drift monitors per side (selfevolve/drift.py): distinct-1/2, answer length, perplexity of short
   human-written texts, embedding spread.

Writes ``round-NNN/eval/<A>_vs_<B>/``: generations.jsonl, judgments.jsonl, summary.json, and the report
(selfevolve/compare_report.py): report.md, winrate.png, lengths.png. ``selfevolve report``
(selfevolve/report.py) collects every round's summaries.

The phases (answers, probes, judge, monitors) are in selfevolve/compare_phases.py, the shape of summary.json
in selfevolve/compare_summary.py; this module resolves the sides, runs one comparison and is the stage.
"""
from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from . import probes
from .adapters import is_adapter
from .backends import borrow, borrow_judge, find_served
from .backends.base import Sampling
from .compare_phases import (AnswerCache, Phases, ask_probes, asks_judge, generate, judge_answers, judge_note,
                             model_identity, monitors, score_human_beside)
from .compare_prompts import load_prompts
from .compare_report import plot_lengths, plot_winrate, report_markdown
from .compare_summary import CompareSummary, read_summary, write_summary
from .config import resolve_input
from .layout import ROUND_DIR, EvalLayout, RunLayout
from .live import live_side
from .records import read_jsonl, write_atomic, write_jsonl
from .stats import by_source, length_controlled, win_summary
from .stage import StageContext, StageResult, recorded

__all__ = ["NAME", "run", "compare", "Side", "SideError", "resolve_side", "eval_dir",
           # from compare_summary / compare_phases, imported from here by tests and report.py
           "CompareSummary", "read_summary", "write_summary", "judge_answers", "asks_judge"]


class SideError(ValueError):
    """A comparison side that cannot be used (unknown round, no adapter, a path outside the run)."""


# ---------------------------------------------------------------- sides

@dataclass(frozen=True)
class Side:
    """One side of a comparison."""

    spec: str
    """As the user gave it (``base``, ``r1``, a path)."""
    label: str
    """The name in folder names and reports (``base``, ``round-001``, a path made safe)."""
    adapter: str | None
    """The adapter folder (absolute); None = the base model."""
    round: int | None
    """The round the adapter belongs to; None for the base model or an adapter outside any round."""

    def to_dict(self) -> dict:
        return {"spec": self.spec, "label": self.label, "adapter": self.adapter, "round": self.round}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "side"


def resolve_side(spec: str, run) -> Side:
    """``base`` → the base model; ``r1`` / ``round-001`` → that round's adapter; anything else is a path to an
    adapter folder, which must lie inside the run (``runs/<name>/``)."""
    text = spec.strip()
    if text.lower() == "base":
        return Side(spec, "base", None, None)
    m = re.fullmatch(r"(?:r|round-?)(\d+)", text, flags=re.IGNORECASE)
    if m:
        rnd = run.round(int(m.group(1)))
        if not is_adapter(rnd.adapter):
            raise SideError(f"{spec}: {rnd.adapter} holds no adapter: run `selfevolve train --round {rnd.number}`")
        return Side(spec, rnd.dir.name, str(rnd.adapter.resolve()), rnd.number)
    path = Path(text).expanduser().resolve()
    root = run.dir.resolve()
    if not path.is_relative_to(root):
        raise SideError(f"{spec}: not inside the run folder {root}; compare only adapters of this run "
                        "(or `base`)")
    if not is_adapter(path):
        raise SideError(f"{spec}: no adapter_config.json + adapter_model.safetensors in {path}")
    rel = path.relative_to(root)
    m = ROUND_DIR.fullmatch(rel.parts[0]) if rel.parts else None
    number = int(m.group(1)) if m else None
    if number is not None and path == run.round(number).adapter.resolve():
        return Side(spec, rel.parts[0], str(path), number)
    return Side(spec, _safe("-".join(rel.parts)), str(path), number)


def _shown(path: Path, run) -> str:
    """A path as the summary shows it: relative to the run folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(run.dir.resolve()))
    except ValueError:
        return str(path)


def eval_dir(run, a: Side, b: Side) -> Path:
    """Under the round of B (the candidate) when B is a round, else of A, else the run's own eval/ folder."""
    label = f"{a.label}_vs_{b.label}"
    number = b.round if b.round is not None else a.round
    return run.round(number).eval_dir(label) if number is not None else run.eval_dir(label)


# ---------------------------------------------------------------- the comparison

def compare(cfg, a_spec: str, b_spec: str, run=None, backend=None, judge=None, log=print,
            probe_set: list[dict] | None = None) -> dict:
    """Run the comparison and write its folder; returns the summary (also in summary.json). ``probe_set``:
    taught / reworded / kept probes (selfevolve/probes.py) both sides answer too."""
    run = run or RunLayout.of(cfg.run.root, cfg.run.name)
    cc = cfg.compare
    a, b = resolve_side(a_spec, run), resolve_side(b_spec, run)
    started = time.time()
    loaded = load_prompts(cc, run, (a, b))
    prompts, notes = loaded.prompts, list(loaded.notes)
    human = read_jsonl(resolve_input(cc.human_texts)) if cc.human_texts else []
    out_dir = eval_dir(run, a, b)
    pairwise = asks_judge(cfg)
    with ExitStack() as stack:  # closes the backends built here (not given ones) when the answers are in
        backend = AnswerCache(stack.enter_context(borrow(cfg, backend)), EvalLayout(out_dir).answers_cache,
                              run.answers, model_identity(cfg))
        judge = stack.enter_context(borrow_judge(cfg, judge, backend)) if pairwise else None
        phases = Phases()
        scored = score_human_beside(cfg, run, backend, stack, {"a": a, "b": b}, human, log)
        probe_summary, probe_rows = ask_probes(backend, cfg, probe_set or [], a, b, phases, log)
        gens_a, gens_b = generate(backend, cc, prompts, a, b, notes, phases, log)
        judgments = []
        if pairwise:
            log(f"compare: judging {len(prompts)} pairs in both orders ...")
            judgments = judge_answers(judge, prompts, [g.text for g in gens_a], [g.text for g in gens_b], cfg.judge)
            phases.done("judge")
        else:
            notes.append("Pairwise judge not asked (compare.pairwise: auto, judge.kind: same): the embedded model's "
                         "judge flips with the order; the probes and drift monitors are the evidence.")
        drifts = monitors(cfg, backend, {"a": (a, gens_a), "b": (b, gens_b)}, human, notes, phases, log, scored)
    result = win_summary(judgments, cc.confidence)
    len_a, len_b = [len(g.text.split()) for g in gens_a], [len(g.text.split()) for g in gens_b]
    judged = (len_a, len_b) if judgments else ([], [])  # no verdicts, no length control
    lc = length_controlled([j["score"] for j in judgments], *judged, cc.length_buckets,
                           cc.bootstrap_samples, cc.confidence, cc.seed)
    notes += [n for n in [judge_note(result)] if n]
    summary: CompareSummary = {
        "label": out_dir.name, "a": a.to_dict(), "b": b.to_dict(), "dir": str(out_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - started, 2),
        "phase_seconds": phases.seconds,
        "prompts": {"n": len(prompts), "sources": dict(Counter(p["source"] for p in prompts)),
                    "file": cc.prompts, "heldout": cc.heldout or None,
                    "heldout_files": [_shown(f, run) for f in loaded.heldout_files],
                    "heldout_conversations": loaded.heldout_conversations},
        "judge": "same backend (base model)" if cfg.judge.kind == "same" else
                 f"{cfg.judge.backend.served_model or 'openai'} at {cfg.judge.backend.base_url}",
        "sampling": {"temperature": cc.temperature, "top_p": cc.top_p, "max_tokens": cc.max_tokens},
        "pairwise": pairwise, "result": result, "by_source": by_source(prompts, judgments),
        "length_controlled": lc, "drift": drifts, "probes": probe_summary, "notes": notes,
    }
    _write(out_dir, summary, prompts, gens_a, gens_b, judgments, (len_a, len_b))
    if probe_rows:
        write_jsonl(EvalLayout(out_dir).probes, probe_rows)
    return summary


def _write(out_dir: Path, summary: CompareSummary, prompts, gens_a, gens_b, judgments, lengths) -> None:
    """The comparison's folder; summary.json last, so a folder with a summary is complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = EvalLayout(out_dir)
    write_jsonl(files.generations, [
        {"id": p["id"], "source": p["source"], "category": p["category"], "messages": p["messages"],
         "a": ga.text, "b": gb.text, "a_finish": ga.finish_reason, "b_finish": gb.finish_reason,
         "a_tokens": ga.output_tokens, "b_tokens": gb.output_tokens}
        for p, ga, gb in zip(prompts, gens_a, gens_b)])
    write_jsonl(files.judgments, judgments)
    plot_winrate(summary, files.winrate_plot)
    plot_lengths(*lengths, summary["a"]["label"], summary["b"]["label"], files.lengths_plot)
    write_atomic(files.report, report_markdown(summary))
    write_summary(files.summary, summary)
    shutil.rmtree(files.answers_cache, ignore_errors=True)  # the comparison is complete: nothing to resume


# ---------------------------------------------------------------- the round's compare stage

NAME = "compare"


def _line(s: dict) -> str:
    parts = []
    if s.get("probes"):
        parts.append(probes.line(s["probes"]))
    r = s["result"]
    if s.get("pairwise", True):
        parts.append(f"pairwise W/T/L {r['wins']}/{r['ties']}/{r['losses']} of {r['n']}, win rate {r['win_rate']:.1%} "
                     f"(CI {r['ci_low']:.1%}–{r['ci_high']:.1%}), {r['verdict']}")
    return f"{s['b']['label']} vs {s['a']['label']}: " + ("; ".join(parts) or "no probes, no judge")


def run(ctx: StageContext) -> StageResult:
    """The round's adapter against the live one (or the base model), on the probes built from the run's curated
    data and on held-out prompts. Once the gate decided, the comparison it decided on stands, even if the live
    adapter changed since (this round's own deploy, a rollback)."""
    rnd, cfg = ctx.rnd, ctx.cfg
    trained = ctx.entry("train") or {}
    if trained.get("no_candidate"):
        return recorded(ctx, NAME, []) or ctx.record(
            NAME, inputs=[], outputs=[], counts={}, started=time.time(),
            line=f"no candidate: {trained['no_candidate']}", no_candidate=trained["no_candidate"])
    entry, decided = ctx.entry(NAME), ctx.entry("gate")
    if entry and decided and decided.get("status") == "complete":
        incumbent, live_name = entry["incumbent"], entry.get("incumbent_name")
    else:
        incumbent, live_name = live_side(ctx.run)
    curated = _curated(ctx)
    inputs = [rnd.train_meta, rnd.heldout, *curated]
    done = recorded(ctx, NAME, inputs, incumbent=incumbent)
    if done:
        return done
    t0, candidate = time.time(), f"r{rnd.number}"
    probe_set = _probe_set(cfg, curated)
    write_jsonl(rnd.probes, probe_set)
    summary = compare(cfg, incumbent, candidate, run=ctx.run, backend=ctx.models.get(), probe_set=probe_set,
                      log=lambda m: ctx.say(NAME, m.removeprefix("compare: ")))
    counts = {k: summary["result"][k] for k in ("n", "wins", "ties", "losses")}
    counts["probes"] = {k: v.get("n", 0) for k, v in (summary.get("probes") or {}).items()}
    return ctx.record(NAME, inputs=inputs, outputs=[EvalLayout(Path(summary["dir"])).summary, rnd.probes], started=t0,
                      counts=counts, line=_line(summary), incumbent=incumbent, incumbent_name=live_name,
                      candidate=candidate)


def _curated(ctx: StageContext) -> list[Path]:
    return [r.curated for r in ctx.run.rounds() if r.number <= ctx.rnd.number and r.curated.exists()]


def _probe_set(cfg, curated: list[Path]) -> list[dict]:
    return probes.build(curated, cfg.compare.max_probes, cfg.compare.rewordings) if cfg.compare.probes else []


def warm(ctx: StageContext) -> int:
    """The live side's answers to this round's probes and compare prompts, generated ahead into the run's
    ``answers/`` (compare_phases.AnswerCache), asked exactly as :func:`compare` will ask them: compare then reads
    them. The loop runs this beside train when the round borrows the served engine on cores of its own
    (selfevolve/cpu_split.py): the engine answers while the round trains, instead of after. It decides nothing;
    returns how many answers it asked for (0: nothing to compare, or compared already)."""
    cfg, run, rnd = ctx.cfg, ctx.run, ctx.rnd
    new = (ctx.entry("curate") or {}).get("counts", {}).get("sft", 0)
    if new < cfg.gate.min_new_examples or ctx.entry(NAME):  # train's rule: no candidate, nothing to compare
        return 0
    cc = cfg.compare
    a = resolve_side(live_side(run)[0], run)
    b = Side(f"r{rnd.number}", rnd.dir.name, str(rnd.adapter.resolve()), rnd.number)  # being trained meanwhile
    probe_set, prompts = _probe_set(cfg, _curated(ctx)), load_prompts(cc, run, (a, b)).prompts
    served = find_served(cfg)  # its own (train closes the round's); never an engine in this process
    if served is None:
        return 0
    with borrow(cfg, None, lambda: served) as backend:
        cache = AnswerCache(backend, EvalLayout(eval_dir(run, a, b)).answers_cache, run.answers, model_identity(cfg))
        probes.answer(cache, probe_set, a.adapter, cc.probe_max_tokens)
        cache.chat([p["messages"] for p in prompts], Sampling(cc.temperature, cc.top_p, cc.max_tokens),
                   adapter=a.adapter)
    ctx.say(NAME, f"{a.label}'s answers to {len(probe_set)} probes and {len(prompts)} prompts generated beside train")
    return len(probe_set) + len(prompts)
