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


def last_user(context: list[dict]) -> str:
    """The message the turn answers: the last user message of its context."""
    return next((m["content"] for m in reversed(context) if m["role"] == "user"), "")
