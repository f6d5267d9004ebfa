"""Import chat logs as found in the wild: ShareGPT JSON/JSONL, OpenAI-messages JSONL, HF datasets on disk.

Every record read ends either as a conversation (:func:`records.conversation`) or as a rejected item with a
reason ``code: detail`` (e.g. ``invalid_unicode: lone surrogate in messages[2].content``), so
``read == accepted + rejected`` always holds and no content stops an import. Records stream through
(:func:`stream_conversations`): memory does not grow with the file.

Normalisation rules (downstream stages revise assistant turns that answer a user turn):

- roles map to system / user / assistant (``ROLE_ALIASES``, case-insensitive); any other role rejects
  the record. ``tool`` / ``function`` messages are dropped, and so is an assistant message that only
  carries ``tool_calls`` (its text is empty);
- text is stripped; empty turns are dropped; adjacent turns of one side are merged with a blank line;
- a system message is kept only at the start (several leading ones are merged); a later one is dropped;
- assistant turns before the first user turn (a greeting) are dropped;
- the result must hold a user message answered by an assistant message;
- text that UTF-8 cannot hold (a lone surrogate), NaN / Infinity, and records over the caps of
  :class:`ImportLimits` are rejected, never repaired in silence.

Reason codes: reading (selfevolve/formats_read.py) ``invalid_json`` (also NaN / Infinity, a file cut inside a
record), ``invalid_utf8``, ``record_too_large``, ``unreadable_dataset``; normalising one record
(selfevolve/formats_norm.py) ``not_a_record``, ``no_turns``, ``bad_turn``, ``missing_role``, ``unknown_role``,
``non_text``, ``invalid_number``, ``invalid_unicode``, ``turn_too_long``, ``too_many_turns``, ``no_exchange``,
``bad_id``;
FastChat split chunks (``ID_0``, ``ID_11``, ..., rejoined where nothing is missing between them:
selfevolve/formats_chunks.py) ``duplicate_chunk``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import records
from .formats_chunks import Chunk, Group, gaps, joined, plan, run_id, split_key
from .formats_items import MAX_RAW, SURROGATE, ImportLimits, Item, safe_text
from .formats_norm import (FORMATS, ROLE_ALIASES, Reject, check_fmt, finalize, messages, normalize_record,
                           reason_code)
from .formats_read import check_path, read_path

__all__ = ["FORMATS", "ROLE_ALIASES", "ImportLimits", "ImportReport", "import_files", "load_conversations",
           "normalize_record", "reason_code", "stream_conversations"]

Pair = tuple  # (dict | None, dict | None)
"""(conversation, None) or (None, rejected item ``{"source", "reason", "record"}``)."""


@dataclass
class ImportReport:
    read: int = 0  # top-level records read, before rejoining split chunks
    accepted: int = 0  # source records that ended in an output conversation
    rejected: int = 0
    conversations: int = 0  # output conversations, after rejoining
    reasons: Counter = field(default_factory=Counter)
    """Rejected records per reason code."""
    repairs: Counter = field(default_factory=Counter)
    """Changes made to accepted records beyond the normalisation rules: ``chunk_gap`` (a split chat split
    where a piece is missing), ``chunk_overlap`` (a seam turn repeated by the splitter, kept once)."""

    @property
    def balanced(self) -> bool:
        return self.read == self.accepted + self.rejected == self.accepted + sum(self.reasons.values())

    def summary(self, top: int | None = None) -> str:
        """One line: the balance and the count of every reason code (the ``top`` most common if given)."""
        line = (f"read {self.read} = accepted {self.accepted} + rejected {self.rejected} "
                f"(conversations {self.conversations})")
        if self.reasons:
            line += "; rejected: " + ", ".join(f"{r} {n}" for r, n in self.reasons.most_common(top))
        if self.repairs:
            line += "; repaired: " + ", ".join(f"{r} {n}" for r, n in self.repairs.most_common())
        return line


# ---------------------------------------------------------------- the import

def stream_conversations(paths: Iterable[str | Path], fmt: str = "auto", *, limits: ImportLimits | None = None,
                         report: ImportReport | None = None) -> Iterator[Pair]:
    """Read and normalise every path, one record at a time, in file order (a split chat when its group
    closes). ``report`` (pass one to read it afterwards) is filled as records go by.

    Raises at once, before anything is read, for a missing path, an unknown ``fmt`` or a path that cannot be
    read in ``fmt`` (a directory that is no saved dataset); later only for I/O errors (OSError), never for
    content."""
    check_fmt(fmt)
    paths = [Path(p) for p in paths]
    for p in paths:
        check_path(p, fmt)
    return _Import(fmt, limits or ImportLimits(), report if report is not None else ImportReport()).run(paths)


def load_conversations(paths: Iterable[str | Path], fmt: str = "auto", *,
                       limits: ImportLimits | None = None) -> tuple[list[dict], list[dict], ImportReport]:
    """:func:`stream_conversations` as lists: (conversations, rejected, report)."""
    report = ImportReport()
    convs: list[dict] = []
    rejected: list[dict] = []
    for conv, rej in stream_conversations(paths, fmt, limits=limits, report=report):
        if conv is not None:
            convs.append(conv)
        else:
            rejected.append(rej)
    return convs, rejected, report


def import_files(paths: Iterable[str | Path], out: str | Path, rejected_out: str | Path, fmt: str = "auto", *,
                 limits: ImportLimits | None = None) -> ImportReport:
    """Stream every record to ``out`` or ``rejected_out`` (JSONL, each written atomically: on any error
    neither file changes). Memory stays flat: no record is held once written."""
    report = ImportReport()
    stream = stream_conversations(paths, fmt, limits=limits, report=report)  # raises before any write
    with records.atomic_jsonl(out) as write_conv, records.atomic_jsonl(rejected_out) as write_rej:
        for conv, rej in stream:
            if conv is not None:
                write_conv(conv)
            else:
                write_rej(rej)
        if not report.balanced:
            raise RuntimeError(f"import lost records: {report.summary()}")
    return report


class _Import:
    """One import: the id register and the open split-chat group of the file being read."""

    def __init__(self, fmt: str, limits: ImportLimits, report: ImportReport):
        self.fmt, self.limits, self.report = fmt, limits, report
        self.taken: set[str] = set()
        self.next_suffix: dict[str, int] = {}

    def run(self, paths: list[Path]) -> Iterator[Pair]:
        for path in paths:
            group: Group | None = None
            closed: set[str] = set()  # chats whose group a piece of another chat closed
            for item in read_path(path, self.fmt, self.limits):
                self.report.read += 1
                key = None if item.error else split_key(item.raw, self.fmt)
                if key is None:
                    yield self._single(item)
                    continue
                if group is not None and group.base != key[0]:
                    closed.add(group.base)
                    yield from self._flush(group)
                    group = None
                if group is None:
                    group = Group(key[0], apart=key[0] in closed)
                try:
                    group.chunks.append(self._chunk(item, key[1]))
                except Reject as e:  # a piece rejected on its own leaves a gap in its chat
                    group.rejected.append(key[1])
                    yield self._reject(item, str(e))
            if group is not None:
                yield from self._flush(group)

    def _single(self, item: Item) -> Pair:
        if item.error:
            return self._reject(item, item.error)
        conv, reason = normalize_record(item.raw, item.source, self.fmt, self.limits)
        return (self._accept(conv, 1), None) if conv is not None else self._reject(item, reason)

    def _chunk(self, item: Item, num: int) -> Chunk:
        msgs, turns = messages(item.raw, self.fmt, self.limits)
        if not turns:
            raise Reject("no_exchange", "no turns")
        if SURROGATE.search(item.raw["id"]):
            raise Reject("invalid_unicode", "lone surrogate in id")
        return Chunk(item, num, turns, msgs)

    def _flush(self, group: Group) -> Iterator[Pair]:
        runs, dups = plan(group)
        for c in dups:
            yield self._reject(c.item, f"duplicate_chunk: another record of this import has id {c.item.raw['id']!r}")
        if split := gaps(group, runs):
            self.report.repairs["chunk_gap"] += split
        for run in runs:
            msgs, overlaps = joined(run)
            try:
                final = finalize(msgs, self.limits)
            except Reject as e:
                for c in run:
                    yield self._reject(c.item, str(e))
                continue
            if overlaps:
                self.report.repairs["chunk_overlap"] += overlaps
            conv = records.conversation(run_id(run, group.base), final, run[0].item.source)
            yield self._accept(conv, len(run)), None

    def _accept(self, conv: dict, records_in: int) -> dict:
        self.report.accepted += records_in
        self.report.conversations += 1
        conv["id"] = self._claim(conv["id"])
        return conv

    def _claim(self, cid: str) -> str:
        """A repeated id becomes "id-2", "id-3", ...: the first suffix no conversation of this import has."""
        if cid in self.taken:
            k = self.next_suffix.get(cid, 2)
            while f"{cid}-{k}" in self.taken:
                k += 1
            self.next_suffix[cid] = k + 1
            cid = f"{cid}-{k}"
        self.taken.add(cid)
        return cid

    def _reject(self, item: Item, reason: str) -> Pair:
        self.report.rejected += 1
        self.report.reasons[reason_code(reason)] += 1
        return None, {"source": item.source, "reason": safe_text(reason), "record": _clip(item.raw)}


def _clip(raw: Any) -> Any:
    """The raw value kept for a rejected item: itself when small, else its JSON text cut to MAX_RAW; text
    with lone surrogates written as escapes (the rejection file must be writable whatever came in)."""
    if isinstance(raw, str):
        return safe_text(raw[:MAX_RAW])
    try:
        text, exact = json.dumps(raw, ensure_ascii=False, default=str, allow_nan=False), True
    except ValueError:  # NaN / Infinity (an HF float column): keep them as text, where they are harmless
        text, exact = json.dumps(raw, ensure_ascii=False, default=str), False
    except RecursionError:
        return f"<unprintable {type(raw).__name__}>"
    # round trip to JSON-safe types, unless deeply nested: the rejection record wraps it one level deeper, and
    # json.dumps fails past the recursion limit
    if exact and len(text) <= MAX_RAW and safe_text(text) is text and text.count("[") + text.count("{") < 100:
        return json.loads(text)
    return safe_text(text[:MAX_RAW])
