"""FastChat split chunks: the pieces of one long ShareGPT chat, stored as records ``ID_N``, joined back into one
conversation only where nothing is missing between them (selfevolve/formats.py drives this).

Numbering. FastChat's ``split_long_conversation`` names a piece by the index of its first turn (``_0``, ``_11``,
``_17``), and in ShareGPT V3 a piece repeats the previous piece's last (assistant) turn at 6,340 of its 8,211
seams; other tools count pieces (``_0``, ``_1``, ``_2``). So piece B continues piece A when B's number is A's
+ 1 or A's + A's turn count, or A's + its turn count - 1 with A's last turn repeated as B's first (one copy is
kept: the repair ``chunk_overlap``).

Groups. The pieces of one chat that come one after another in a file form a group (other records may come
between them; a piece of another chat closes it). FastChat writes a chat's pieces together, and in ShareGPT V3
they always are; holding one group at a time keeps the import streaming. In a group:

- a piece rejected on its own (an unknown role, no turns, ...) keeps its reason and leaves a gap;
- pieces with the same number are all rejected (``duplicate_chunk``): which one continues the chat is unknowable;
- a gap splits the group, and a piece of a chat whose group was already closed starts a new one: each run of
  consecutive pieces becomes its own conversation (the repair ``chunk_gap`` counts the splits, and a group
  without its first piece), so later feedback is never read as hindsight on an answer it did not follow.

A run that joins several pieces from ``_0`` on takes the chat's id ``ID``; any other run keeps the id of its
first piece.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .formats_items import Item

MAX_DIGITS = 9
"""A longer number is no piece number: such ids are left alone."""


@dataclass
class Chunk:
    item: Item
    num: int
    turns: int
    """Turns in the record, as the piece numbers count them (before empty and tool turns are dropped)."""
    messages: list[dict]
    """Its turns normalised, before the conversation rules (those apply to the joined run)."""


@dataclass
class Group:
    """The open group: pieces of one chat seen since its first piece in this file."""
    base: str
    apart: bool = False
    """An earlier group of this chat was closed by another chat's piece."""
    chunks: list[Chunk] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    """Numbers of its pieces rejected on their own: a piece numbered between two others is missing there."""


def split_key(raw: Any, fmt: str) -> tuple[str, int] | None:
    """(base, number) when the record looks like piece ``base_N`` of a ShareGPT chat (OpenAI ``messages``
    records are never split by FastChat: their ids are left alone)."""
    if fmt == "openai" or not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        return None
    msgs = raw.get("messages")
    shaped = (raw.get("conversations") is not None or raw.get("items") is not None
              or (isinstance(msgs, list) and bool(msgs) and isinstance(msgs[0], dict) and "from" in msgs[0]))
    base, _, num = raw["id"].rpartition("_")
    if not (shaped and base and num.isascii() and num.isdigit() and len(num) <= MAX_DIGITS):
        return None
    return base, int(num)


def _overlap(a: Chunk, b: Chunk) -> bool:
    return (b.num == a.num + a.turns - 1 and bool(a.messages) and bool(b.messages)
            and a.messages[-1] == b.messages[0])


def _follows(a: Chunk, b: Chunk) -> bool:
    return b.num in (a.num + 1, a.num + a.turns) or _overlap(a, b)


def plan(group: Group) -> tuple[list[list[Chunk]], list[Chunk]]:
    """(runs of consecutive pieces in number order, pieces rejected as duplicate numbers). Two pieces are
    consecutive only if no other piece (rejected or duplicated) is numbered between them: numbers alone
    cannot tell _0 → _2 of 2-turn pieces (by turn index) from a lost _1 (by piece count)."""
    counts = Counter(c.num for c in group.chunks)
    known = sorted(set(counts) | set(group.rejected))
    rank = {n: i for i, n in enumerate(known)}
    runs: list[list[Chunk]] = []
    for c in sorted((c for c in group.chunks if counts[c.num] == 1), key=lambda c: c.num):
        if runs and rank[c.num] == rank[runs[-1][-1].num] + 1 and _follows(runs[-1][-1], c):
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs, [c for c in group.chunks if counts[c.num] > 1]


def joined(run: list[Chunk]) -> tuple[list[dict], int]:
    """The run's turns in order, a repeated seam turn kept once; and how many were dropped."""
    msgs, overlaps = list(run[0].messages), 0
    for a, b in zip(run, run[1:]):
        skip = _overlap(a, b)
        overlaps += skip
        msgs.extend(b.messages[skip:])
    return msgs, overlaps


def run_id(run: list[Chunk], base: str) -> str:
    return base if len(run) > 1 and run[0].num == 0 else run[0].item.raw["id"]


def gaps(group: Group, runs: list[list[Chunk]]) -> int:
    """Splits made in this group: one per run after the first, one more when the group lacks its start."""
    if not runs:
        return 0
    return len(runs) - 1 + (group.apart or (len(group.chunks) > 1 and runs[0][0].num != 0))
