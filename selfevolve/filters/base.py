"""The one contract every curate filter follows.

    class SomeFilter:
        name = "some"                      # the key in curate.order and the curate.<name> config section
        uses_backend = False               # needs ctx.backend (the served model)?
        uses_judge = False                 # needs ctx.judge?
        def __init__(self, cfg): ...       # cfg: its own config section (curate.<name>)
        def apply(self, records, ctx) -> list[Decision]   # one decision per record, in order

``apply`` sees the whole batch of records still alive, so a model-backed filter sends all its calls in
one backend call. Filters do not mutate records: whatever a filter wants stored on a record (a score, a
replaced revision) goes into ``Decision.update`` and the stage applies it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str | None = None
    """Why the record is dropped (None when kept)."""
    score: float | None = None
    """The filter's measure for this record (stored under ``scores.<filter>``; in rejected.jsonl as ``score``)."""
    update: dict = field(default_factory=dict)
    """Fields the stage merges into the record (kept or dropped)."""


@dataclass
class Context:
    cfg: Any
    """The whole Config: filters read shared settings (revise sampling, judge sampling) from here."""
    backend: Any = None
    """The served model's backend (perplexity, self-consistency)."""
    judge: Any = None
    """The judge's backend (may be the same object as ``backend``)."""
    earlier: list[tuple[str, str]] = field(default_factory=list)
    """(key, diversity text) of every earlier round's kept records; the key (``round-001/<id>``) names the
    record a near-duplicate is reported against."""


class Filter(Protocol):
    name: str
    uses_backend: bool
    uses_judge: bool

    def apply(self, records: list[dict], ctx: Context) -> list[Decision]: ...


KEEP = Decision(True)


def answer(rec: dict) -> str:
    """The answer a record would train on: its revision, or the original answer of a turn the user confirmed
    (``use: original``, set by the signal filter)."""
    return rec["original"] if rec.get("use") == "original" else (rec.get("revised") or "")


def for_revisions(records: list[dict], decide) -> list[Decision]:
    """``decide`` (a list of records -> a list of decisions) on the records that train on a revision; the
    records that train on a confirmed original answer pass: a filter of revisions has nothing to say of them."""
    idx = [i for i, r in enumerate(records) if r.get("use") != "original"]
    decided = decide([records[i] for i in idx]) if idx else []
    out = [KEEP] * len(records)
    for i, d in zip(idx, decided):
        out[i] = d
    return out


def last_user(context: list[dict]) -> str:
    """The message the turn answers: the last user message of its context."""
    return next((m["content"] for m in reversed(context) if m["role"] == "user"), "")
