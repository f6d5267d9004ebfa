"""Hindsight revision: every assistant turn, seen with the whole conversation, gets a criticism,
a keep/revise verdict and a new answer written as a first reply.

Every turn's calls stream through the backend; finished turns are appended to a journal (fsync) a few
at a time, so a rerun after kill -9 only does the turns that are missing. When every turn is done the journal becomes
``revisions.jsonl`` in one atomic rename, in conversation order, one record per assistant turn.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest
from .backends.base import Backend
from .progress import bar
from .records import Journal, assistant_turns, read_jsonl, revision, turn_id, write_jsonl
from .revise_schedule import revise_turns
from .stage import StageContext, StageError, StageResult, recorded

NAME = "revise"


@dataclass
class ReviseSummary:
    turns: int = 0
    revised: int = 0
    kept: int = 0
    failed: int = 0
    skipped: int = 0  # not revised: signal not "corrected" (revise.turns), or an answer the model did not serve
    truncated: int = 0  # answers cut at max_tokens, kept for curate to drop (revise.retry_truncated=false)
    resumed: int = 0  # turns found done in the journal or the output
    output_tokens: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)

    def line(self) -> str:
        text = (f"turns {self.turns} = revised {self.revised} + kept {self.kept} + failed {self.failed}"
                + (f" + skipped {self.skipped}" if self.skipped else "")
                + f"  (resumed {self.resumed}, {self.output_tokens} output tokens in {self.seconds:.1f}s)")
        if self.truncated:
            text += f"\n  {self.truncated} answers cut at max_tokens: kept as truncated, curate drops them"
        if self.reasons:
            text += "\n  failures: " + "; ".join(f"{r} ×{n}" for r, n in self.reasons.most_common(5))
        return text


def run_revise(conversations: list[dict], backend: Backend, cfg, out_path: Path, journal_path: Path,
               model: str = "", show_progress: bool = True, skip: dict[str, str] | None = None) -> ReviseSummary:
    """Revise every assistant turn of ``conversations`` but those in ``skip`` (turn id → why: they get a record
    with status ``skipped`` and no model call), resuming from the journal and an earlier output."""
    start = time.time()
    skip = skip or {}
    order = [(conv, t) for conv in conversations for t in assistant_turns(conv)]
    ids = [turn_id(conv["id"], t) for conv, t in order]
    if len(set(ids)) != len(ids):
        raise ValueError("conversation ids are not unique: turn ids would collide")

    journal = Journal(journal_path)
    done = _resumed(order, ids, out_path, journal, skip, cfg.strategy, model)
    summary = ReviseSummary(turns=len(order), resumed=sum(1 for i in ids if i in done and i not in skip))
    todo = [item for item, i in zip(order, ids) if i not in done]

    with bar("revise", total=len(order), unit="turns", enabled=show_progress) as advance:
        advance(summary.resumed + len(skip))
        t0, new_tokens, buffer = time.time(), 0, []

        def flush() -> None:
            journal.append(buffer)
            advance(len(buffer), extra=f"{new_tokens / max(time.time() - t0, 1e-9):.0f} tok/s")
            buffer.clear()

        def on_record(rec: dict) -> None:
            nonlocal new_tokens
            done[rec["id"]] = rec
            buffer.append(rec)
            new_tokens += rec["output_tokens"]
            if len(buffer) >= cfg.journal_every:
                flush()

        revise_turns(todo, backend, cfg, model, on_record=on_record)
        flush()

    final = [done[i] for i in ids]
    write_jsonl(out_path, final)
    journal.remove()
    _tally(summary, final)
    summary.seconds = time.time() - start
    return summary


def _resumed(order: list[tuple[dict, int]], ids: list[str], out_path: Path, journal: Journal,
             skip: dict[str, str], strategy: str, model: str) -> dict[str, dict]:
    """Turn id → its record, for the turns already done: an earlier output, then the journal, then the skipped
    turns' records (a turn skipped before and wanted now is dropped, to be revised)."""
    done: dict[str, dict] = {}
    if out_path.exists():  # a finished earlier run: reuse its records (new conversations are still done)
        done.update({r["id"]: r for r in read_jsonl(out_path)})
    done.update({r["id"]: r for r in journal.records})
    for (conv, t), i in zip(order, ids):  # a turn skipped before and wanted now is revised; and vice versa
        if i in skip:
            done[i] = {**revision(conv, t, strategy=strategy, model=model, attempts=0, truncated=False,
                                  output_tokens=0), "status": "skipped", "reason": skip[i]}
        elif done.get(i, {}).get("status") == "skipped":
            del done[i]
    return done


def _tally(summary: ReviseSummary, final: list[dict]) -> None:
    """Count the final records into ``summary`` (by status and verdict, failure reasons, tokens)."""
    for r in final:
        summary.truncated += bool(r.get("truncated")) and r["status"] == "ok"
        if r["status"] == "skipped":
            summary.skipped += 1
        elif r["status"] == "failed":
            summary.failed += 1
            summary.reasons[r["reason"].split(" (")[0][:80]] += 1
        elif r["verdict"] == "keep":
            summary.kept += 1
        else:
            summary.revised += 1
    summary.output_tokens = sum(r.get("output_tokens", 0) for r in final)


def revise_round(cfg, rnd, backend: Backend, show_progress: bool = True) -> ReviseSummary:
    """Round folder in (``conversations.jsonl``), ``revisions.jsonl`` out, and the stage's manifest entry."""
    if not rnd.conversations.exists():
        raise StageError(f"{rnd.conversations} is missing: run the collect step first")
    started = time.time()
    conversations = read_jsonl(rnd.conversations)
    skip = {**_skipped(cfg, rnd), **unserved(conversations)}  # not served wins: it is why no revision may train
    summary = run_revise(conversations, backend, cfg.revise, rnd.revisions, rnd.revisions_journal,
                         model=cfg.model.path, show_progress=show_progress, skip=skip)
    counts = {"turns": summary.turns, "revised": summary.revised, "kept": summary.kept, "failed": summary.failed,
              "skipped": summary.skipped,
              "truncated": summary.truncated, "reasons": dict(summary.reasons), "output_tokens": summary.output_tokens,
              "resumed": summary.resumed}
    share = summary.failed / max(summary.turns - summary.skipped, 1)
    status = "complete" if share <= cfg.revise.max_failed_share else "failed"
    manifest.record_stage(rnd.manifest, NAME, inputs=[rnd.conversations, rnd.signals], outputs=[rnd.revisions],
                          counts=counts, started=started, status=status, strategy=cfg.revise.strategy,
                          line=summary.line())
    if status == "failed":
        raise StageError(f"revise: {summary.failed}/{summary.turns} turns failed ({share:.1%} > "
                         f"revise.max_failed_share={cfg.revise.max_failed_share}); see {rnd.revisions}")
    return summary


def _skipped(cfg, rnd) -> dict[str, str]:
    """Turn id → why it is not revised (``revise.turns: corrected``): its signal is not ``corrected``."""
    if cfg.revise.turns == "all" or not rnd.signals.exists():
        return {}
    return {s["id"]: f"signal {s['label']}: not revised (revise.turns=corrected)"
            for s in read_jsonl(rnd.signals) if s["label"] != "corrected"}


def unserved(conversations: list[dict]) -> dict[str, str]:
    """Turn id → why, for the assistant turns of gateway chats that the served model did not produce.

    A client sends the whole history, so an assistant message of a gateway chat may be the client's; only those
    the store lists as the model's own (``meta.served``: message indices) are originals; a record without it (an
    older store) has none. Imported logs were chosen by the operator: all their assistant turns count."""
    out = {}
    for conv in conversations:
        if conv.get("source") != "gateway":
            continue
        served = (conv.get("meta") or {}).get("served")
        why = ("not_served: gateway record without meta.served (older store)" if served is None else
               "not_served: the served model did not produce this answer (meta.served)")
        for t in assistant_turns(conv):
            if served is None or t not in served:
                out[turn_id(conv["id"], t)] = why
    return out


def run(ctx: StageContext) -> StageResult:
    """Revise the round's corrected assistant turns with hindsight (resumes from the journal)."""
    done = recorded(ctx, NAME, [ctx.rnd.conversations, ctx.rnd.signals])
    if done:
        return done
    summary = revise_round(ctx.cfg, ctx.rnd, ctx.models.get(), show_progress=ctx.show_progress)
    return StageResult(NAME, ctx.entry(NAME)["counts"], summary.line(), seconds=round(summary.seconds, 1))
