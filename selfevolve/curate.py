"""Curate: a round's revisions in, SFT and preference datasets out, every dropped record kept with its reason.

The filters (selfevolve/filters, one contract) run in ``curate.order``; a record one filter drops never
reaches the next, and ``read = kept + dropped`` always holds. Where the round has its conversations, two steps no
setting removes frame the chain (selfevolve/curate_users.py): ``served`` first (only answers the served model
produced train as originals) and ``user_cap`` last (no user above ``curate.max_user_share`` of the examples). Kept records become this round's ``sft.jsonl``
and ``dpo.jsonl``; ``train_*.jsonl`` add every earlier round's kept records, deduplicated by id and by
content, so that round N trains on everything learnt so far exactly once. Every JSONL of a dataset also
goes to disk as an HF dataset in TRL's conversational shape.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .curate_claims import corroboration
from .curate_users import ServedCheck, UserCap, conversations
from .filters import Context, build_filters
from .filters.base import answer
from .filters.diversity import text_of
from .progress import bar
from . import curate_report, manifest, stats
from .backends import borrow, borrow_judge
from .records import (DpoExample, SftExample, dpo_example, read_jsonl, replace_dir, sha256_file, sft_example,
                      write_atomic, write_jsonl)
from .stage import StageContext, StageError, StageResult, recorded
from .store import key_pseudonyms

NAME = "curate"

# What a training record is, by kind: the columns TRL reads, plus our id and round.
CONTENT = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected")}


@dataclass
class CurateSummary:
    read: int = 0
    kept: int = 0
    funnel: list[tuple[str, int, int]] = field(default_factory=list)  # (filter, records seen, dropped)
    reasons: dict[str, Counter] = field(default_factory=dict)  # filter -> reason -> count
    sizes: dict[str, int] = field(default_factory=dict)  # sft, dpo, train_sft, train_dpo
    win: dict | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # filter -> wall seconds
    trains_on: dict[str, int] = field(default_factory=dict)  # revised / original -> kept records

    @property
    def dropped(self) -> int:
        return self.read - self.kept

    def line(self) -> str:
        lines = [f"read {self.read} = kept {self.kept} + dropped {self.dropped}  ({self.seconds:.1f}s)"]
        if self.trains_on:
            lines[0] += "; kept trains on " + ", ".join(f"{v} {k}" for k, v in sorted(self.trains_on.items()))
        for name, seen, dropped in self.funnel:
            top = "; ".join(f"{r} ×{n}" for r, n in self.reasons.get(name, Counter()).most_common(2))
            secs = f"{self.timings[name]:>6.1f}s" if name in self.timings else ""
            lines.append(f"  {name:<16} dropped {dropped:>4} of {seen:<4} {secs}  {top}")
        if self.win:
            lines.append(f"  judge win rate {self.win['rate']:.1%} (95% CI {self.win['low']:.1%}–{self.win['high']:.1%}, "
                         f"n={self.win['n']})")
        lines.append("  datasets: " + ", ".join(f"{k} {v}" for k, v in self.sizes.items()))
        return "\n".join(lines)


def run_filters(records: list[dict], filters, ctx: Context, show_progress: bool = False,
                timings: dict[str, float] | None = None):
    """Run ``filters`` in order. Returns (kept, rejected, funnel); rejected records carry filter/reason/score.
    ``timings`` (when given) receives each filter's wall seconds."""
    if "structural" not in {f.name for f in filters} and any(r.get("status") != "ok" for r in records):
        raise ValueError("failed revisions would reach the datasets: enable the structural filter")
    alive, rejected, funnel = [dict(r) for r in records], [], []
    with bar("curate", total=len(filters), unit="filters", enabled=show_progress) as advance:
        for f in filters:
            t0 = time.time()
            decisions = f.apply(alive, ctx) if alive else []
            if timings is not None:
                timings[f.name] = round(time.time() - t0, 1)
            if len(decisions) != len(alive):
                raise RuntimeError(f"filter {f.name}: {len(decisions)} decisions for {len(alive)} records")
            survivors = []
            for rec, d in zip(alive, decisions):
                rec.update(d.update)
                if d.score is not None:
                    rec.setdefault("scores", {})[f.name] = d.score
                if d.keep:
                    survivors.append(rec)
                else:
                    rejected.append({**rec, "filter": f.name, "reason": d.reason or "unspecified", "score": d.score})
            funnel.append((f.name, len(alive), len(alive) - len(survivors)))
            alive = survivors
            advance(1, extra=f"{f.name}: {len(alive)} left")
    return alive, rejected, funnel


# ---------------------------------------------------------------- datasets

def to_sft(rec: dict, round_no: int) -> SftExample:
    """Context → the answer that trains: the revision, or a confirmed turn's original answer."""
    return sft_example(rec["id"], round_no, rec["context"], answer(rec))


def to_dpo(rec: dict, round_no: int) -> DpoExample | None:
    """Revision ≻ original, for a record that trains on its revision (a confirmed original has no pair)."""
    if rec.get("use") == "original":
        return None
    return dpo_example(rec["id"], round_no, rec["context"], rec["revised"], rec["original"])


def with_signals(records: list[dict], path: Path) -> list[dict]:
    """Each revision with its turn's hindsight signal (``signals.jsonl``; absent in rounds made before it)."""
    if not path.exists():
        return records
    by_id = {s["id"]: s for s in read_jsonl(path)}
    return [{**r, "signal": by_id[r["id"]]} if r["id"] in by_id else r for r in records]


def accumulate(parts: list[list[dict]], kind: str) -> list[dict]:
    """Every round's records (``parts`` oldest first), one per turn id and one per exact content.

    For a turn id seen in several rounds the newest record wins: its conversation went on after the earlier
    round, so the later revision saw more of what the user said afterwards. The result is in round order."""
    ids, digests, out = set(), set(), []
    for k in reversed(range(len(parts))):
        for pos, rec in enumerate(parts[k]):
            content = json.dumps([rec[c] for c in CONTENT[kind]], sort_keys=True, ensure_ascii=False)
            digest = hashlib.sha256(content.encode()).hexdigest()
            if rec["id"] in ids or digest in digests:
                continue
            ids.add(rec["id"])
            digests.add(digest)
            out.append((k, pos, rec))
    return [rec for _, _, rec in sorted(out, key=lambda t: t[:2])]


def features(kind: str):
    from datasets import Features, Value

    messages = [{"role": Value("string"), "content": Value("string")}]
    columns = {"id": Value("string"), "round": Value("int32")}
    columns.update({k: messages for k in CONTENT[kind]})
    return Features(columns)


def save_dataset(records: list[dict], kind: str, path: Path) -> None:
    """save_to_disk into a temporary folder, then rename it into place: no reader sees half a dataset.
    Features are explicit (and columnar input, which ``from_list`` can't do when empty) so that an
    empty round still has its columns."""
    import datasets as hf_datasets

    feats = features(kind)
    ds = hf_datasets.Dataset.from_dict({k: [r[k] for r in records] for k in feats}, features=feats)
    quiet = not hf_datasets.are_progress_bars_disabled()
    if quiet:  # the stage prints its own summary; a "Saving the dataset" bar per file is noise
        hf_datasets.disable_progress_bars()
    try:
        with replace_dir(path) as tmp:
            ds.save_to_disk(str(tmp), num_shards=None if len(ds) else 1)  # 0 rows -> 0 shards, unloadable
    finally:
        if quiet:
            hf_datasets.enable_progress_bars()


# ---------------------------------------------------------------- the stage

@contextmanager
def _backends(cfg, filters, backend=None, judge=None):
    """The backends the active filters use: injected ones as given, missing ones built from config (and closed)."""

    wants_judge = any(f.uses_judge for f in filters)
    needs_backend = any(f.uses_backend for f in filters) or (wants_judge and judge is None and cfg.judge.kind == "same")
    with ExitStack() as stack:
        if needs_backend:
            backend = stack.enter_context(borrow(cfg, backend))
        if wants_judge:
            judge = stack.enter_context(borrow_judge(cfg, judge, backend))
        yield backend, judge


def needs_model(cfg) -> bool:
    """Whether the enabled filters call the served model (perplexity, self-consistency, a ``same`` judge)."""
    return any(f.uses_backend or (f.uses_judge and cfg.judge.kind == "same") for f in build_filters(cfg))


def run(ctx: StageContext) -> StageResult:
    """Curate the round's revisions into this round's and the accumulated SFT / preference datasets."""
    done = recorded(ctx, NAME, [ctx.rnd.revisions, ctx.rnd.signals])
    if done:
        return done
    backend = ctx.models.get() if needs_model(ctx.cfg) else None
    summary = curate_round(ctx.cfg, ctx.rnd, ctx.run, backend=backend, show_progress=ctx.show_progress)
    return StageResult(NAME, ctx.entry(NAME)["counts"], summary.line(), seconds=round(summary.seconds, 1))


def curate_round(cfg, rnd, run, backend=None, judge=None, show_progress: bool = True) -> CurateSummary:
    """``revisions.jsonl`` in, datasets and card out, and the stage's manifest entry. A backend the filters need
    and were not given is built here (and closed)."""
    if not rnd.revisions.exists():
        raise StageError(f"{rnd.revisions} is missing: run the revise step first")
    started = time.time()
    filters = build_filters(cfg)
    records = with_signals(read_jsonl(rnd.revisions), rnd.signals)
    convs = conversations(rnd.conversations)
    earlier = [r for r in run.rounds() if r.number < rnd.number and r.sft.exists() and r.dpo.exists()]
    corroborating = bool(convs and cfg.curate.corroborate)  # who said what is known, and the step is on
    if corroborating:  # a claim one user alone brought waits for another user's
        trusted = key_pseudonyms(run.chats_db, cfg.curate.trusted_users)
        filters = [*filters, corroboration(cfg.curate.corroborate, convs, earlier, trusted)]
    if convs:  # who said what is known: only served answers count as originals, and no user dominates the round
        filters = [ServedCheck(convs), *filters, UserCap(convs, cfg.curate.max_user_share, cfg.curate.cap_imports)]
    earlier_sft = [read_jsonl(r.sft) for r in earlier]
    now = {r["id"] for r in records}  # a turn revised again (its chat went on) is not a duplicate of itself
    ctx = Context(cfg, earlier=[(f"{r.dir.name}/{s['id']}", text_of(s["prompt"], s["completion"][0]["content"]))
                                for r, part in zip(earlier, earlier_sft) for s in part if s["id"] not in now])
    with _backends(cfg, filters, backend, judge) as (ctx.backend, ctx.judge):
        timings: dict[str, float] = {}
        kept, rejected, funnel = run_filters(records, filters, ctx, show_progress, timings)
    if len(kept) + len(rejected) != len(records):
        raise RuntimeError(f"curate lost records: read {len(records)} != kept {len(kept)} + dropped {len(rejected)}")

    n = rnd.number
    data = {"sft": [to_sft(r, n) for r in kept], "dpo": [d for d in (to_dpo(r, n) for r in kept) if d]}
    data["train_sft"] = accumulate(earlier_sft + [data["sft"]], "sft")
    data["train_dpo"] = accumulate([read_jsonl(r.dpo) for r in earlier] + [data["dpo"]], "dpo")
    write_jsonl(rnd.curated, kept)
    write_jsonl(rnd.rejected, rejected)
    for name, recs in data.items():
        write_jsonl(getattr(rnd, name), recs)
        save_dataset(recs, name.removeprefix("train_"), rnd.dataset(name))

    reasons: dict[str, Counter] = {}
    for r in rejected:
        reasons.setdefault(r["filter"], Counter())[r["reason"].split(" (")[0][:80]] += 1
    summary = CurateSummary(read=len(records), kept=len(kept), funnel=funnel, reasons=reasons,
                            sizes={k: len(v) for k, v in data.items()}, timings=timings,
                            trains_on=dict(Counter("original" if r.get("use") == "original" else "revised"
                                                   for r in kept)))
    summary.win = _write_report(cfg, rnd, summary, records, kept, rejected)
    summary.seconds = time.time() - started
    counts = {"read": summary.read, "kept": summary.kept, "dropped": summary.dropped,
              "dropped_per_filter": {name: d for name, _, d in funnel}, "seconds_per_filter": timings,
              **summary.sizes, "judge_win_rate": summary.win,
              # what the kept records train on: revisions of corrected turns, originals of confirmed ones
              "trains_on": summary.trains_on}
    outputs = [rnd.curated, rnd.rejected, rnd.sft, rnd.dpo, rnd.train_sft, rnd.train_dpo, rnd.card,
               rnd.lengths_plot, rnd.filters_plot]
    # Earlier rounds' files share names (sft.jsonl), so they are hashed by their path within the run.
    earlier_inputs = {f"{r.dir.name}/{p.name}": sha256_file(p) for r in earlier  # corroboration read their claims
                      for p in (r.sft, r.dpo, *((r.curated, r.rejected) if corroborating else ())) if p.exists()}
    manifest.record_stage(rnd.manifest, NAME, inputs=[rnd.revisions, rnd.signals], outputs=outputs, counts=counts,
                          started=started, order=[f.name for f in filters], earlier_inputs=earlier_inputs,
                          line=summary.line())
    return summary


def _write_report(cfg, rnd, summary: CurateSummary, records, kept, rejected) -> dict | None:
    """card.md, lengths.png and filters.png; returns the judge's win rate (None when nothing was judged)."""

    judged = [r["scores"]["judge"] for r in kept + rejected if "judge" in r.get("scores", {})]
    win = stats.win_rate(judged)
    ok = [r for r in records if r.get("status") == "ok" and r.get("revised")]
    before = {"original": [r["original"] for r in records], "revised": [r["revised"] for r in ok]}
    after = {"original": [r["original"] for r in kept], "revised": [answer(r) for r in kept]}  # what trains
    lengths = {"original, all read": stats.length_summary(before["original"]),
               "revised, all ok": stats.length_summary(before["revised"]),
               "original, kept": stats.length_summary(after["original"]),
               "revised, kept": stats.length_summary(after["revised"])}
    judge = "same model" if cfg.judge.kind == "same" else f"{cfg.judge.backend.served_model or 'openai'} at {cfg.judge.backend.base_url}"
    curate_report.plot_lengths(before, after, rnd.lengths_plot)
    curate_report.plot_filters(summary.funnel, rnd.filters_plot)
    write_atomic(rnd.card, curate_report.card_markdown(
        round_no=rnd.number, read=summary.read, kept=summary.kept, funnel=summary.funnel, reasons=summary.reasons,
        win=win, lengths=lengths, sizes=summary.sizes, judge=judge))
    return win
