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
from .backends.base import Backend, Sampling
from .progress import bar
from .prompts import OutputError, get_strategy, parse_json
from .records import Journal, assistant_turns, read_jsonl, revision, turn_id, write_jsonl
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


def _check(gen, schema: dict | None, keep_truncated: bool = False) -> str | None:
    """Why a generation can't be used (None when it can). ``keep_truncated``: plain text cut at the token cap is
    usable as a record (marked truncated; curate drops it) rather than a reason to ask again."""
    if keep_truncated and gen.finish_reason == "length" and schema is None and gen.text.strip():
        return None
    if gen.finish_reason != "stop":
        return f"finish_reason={gen.finish_reason}"
    if not gen.text.strip():
        return "empty output"
    if schema is not None:
        try:
            parse_json(gen.text, schema)
        except OutputError as e:
            return str(e)
    return None


class _Turn:
    """The state of one (conversation, turn) while its calls are in flight."""

    def __init__(self, conv: dict, t: int, calls: dict[str, list[dict]]):
        self.conv, self.t, self.calls = conv, t, calls
        self.outputs: dict[str, str] = {}
        self.attempt: dict[str, int] = dict.fromkeys(calls, 0)
        self.gave_up: set[str] = set()
        self.reason: str | None = None
        self.tokens = 0
        self.truncated = False


def revise_turns(items: list[tuple[dict, int]], backend: Backend, cfg, model: str = "",
                 on_record=None) -> list[dict]:
    """Revise the given (conversation, turn) pairs; one record per pair, ok or failed, in input order.

    All calls go through one backend stream: up to ``cfg.max_in_flight`` turns are in the engine at
    once, a finished turn makes room for the next, and a bad output is asked again at once (with the
    temperature raised a little, since identical sampling tends to repeat the same bad output).
    ``on_record(record)`` sees each record as soon as its turn is done (the journal hooks in here)."""
    return _TurnStream(items, backend, cfg, model, on_record).run()


class _TurnStream:
    """The turns of one :func:`revise_turns` call in one backend stream: submitting their calls, retrying bad
    outputs, and turning each finished turn into its record."""

    def __init__(self, items: list[tuple[dict, int]], backend: Backend, cfg, model: str, on_record):
        self.items, self.cfg, self.model, self.on_record = items, cfg, model, on_record
        self.strategy = get_strategy(cfg.strategy)
        self.stream = backend.stream()
        self.results: list[dict | None] = [None] * len(items)
        self.states: dict[int, _Turn] = {}
        self.next_item = 0

    def run(self) -> list[dict]:
        self.fill()
        for (i, name), gen in self.stream:
            self.take(i, name, gen)
        return self.results  # type: ignore[return-value]

    def submit(self, i: int, name: str) -> None:
        st, cfg = self.states[i], self.cfg
        cap = cfg.critique_max_tokens if name == "critique" else cfg.max_tokens
        temperature = cfg.temperature + 0.3 * st.attempt[name]
        self.stream.submit((i, name), st.calls[name], Sampling(temperature, cfg.top_p, cap),
                           self.strategy.schemas[name])

    def fill(self) -> None:
        """Start turns until ``max_in_flight`` are in the engine (or none is left)."""
        while self.next_item < len(self.items) and len(self.states) < self.cfg.max_in_flight:
            conv, t = self.items[self.next_item]
            self.states[self.next_item] = _Turn(conv, t, self.strategy.calls(conv, t))
            for name in self.strategy.schemas:
                self.submit(self.next_item, name)
            self.next_item += 1

    def take(self, i: int, name: str, gen) -> None:
        """One generation in: keep it or ask again; a turn whose calls are all in is finished (or, when the
        whole cannot be parsed, asked again in full)."""
        st, cfg = self.states[i], self.cfg
        st.tokens += gen.output_tokens
        why = _check(gen, self.strategy.schemas[name], keep_truncated=not cfg.retry_truncated)
        if why is None:
            st.outputs[name] = gen.text
            st.truncated |= gen.finish_reason == "length"
        else:
            st.reason = f"{name}: {why}"
            if st.attempt[name] < cfg.retries:
                st.attempt[name] += 1
                self.submit(i, name)
                return
            st.gave_up.add(name)
        if len(st.outputs) + len(st.gave_up) == len(st.calls):
            if not st.gave_up and _parse_error(self.strategy, st) and max(st.attempt.values()) < cfg.retries:
                # Every call looked fine alone but the whole can't be used: ask all of them again.
                st.outputs.clear()
                for n in st.calls:
                    st.attempt[n] += 1
                    self.submit(i, n)
                return
            self.finish(i)
            self.fill()

    def finish(self, i: int) -> None:
        st = self.states.pop(i)
        rec = _record(st, self.strategy.name, self.model)
        if not st.gave_up:
            try:
                rec.update(status="ok", **self.strategy.parse(st.outputs, st.conv, st.t))
            except OutputError as e:
                st.reason = str(e)
        if "status" not in rec:
            rec.update(status="failed", reason=st.reason or "unknown")
        self.results[i] = rec
        if self.on_record is not None:
            self.on_record(rec)


def _parse_error(strategy, st: _Turn) -> bool:
    try:
        strategy.parse(st.outputs, st.conv, st.t)
        return False
    except OutputError as e:
        st.reason = str(e)
        return True


def _record(st: _Turn, strategy: str, model: str) -> dict:
    return revision(st.conv, st.t, strategy=strategy, model=model, attempts=1 + max(st.attempt.values()),
                    truncated=st.truncated, output_tokens=st.tokens)


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
