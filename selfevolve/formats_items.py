"""What reading a chat-log file yields (selfevolve/formats_read.py): :class:`Item` records, the caps of
:class:`ImportLimits`, and the JSON decoding every format shares (NaN and Infinity are flagged, not accepted)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import check_ranges

TURN_KEYS = ("conversations", "items", "messages")
"""Keys that hold a record's turns (a wrapper document's records never carry them at the top)."""
BLOCK = 1 << 20
"""Bytes read at a time from a JSON array."""
MAX_RAW = 2000
"""Characters of a rejected record's raw text kept beside its reason."""
SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate: a Python str can hold one (JSON ``"\\ud800"``, or an undecodable byte), UTF-8 cannot."""


@dataclass
class ImportLimits:
    """Caps on one imported record (config ``data.limits``): a record over one is rejected with the reason code
    named below. The defaults sit well above real chat logs (measured on ShareGPT V3's 17,671 records, 129,071
    turns) and stop what would make the import or a later stage run away: one huge line, a turn longer than any
    context the project trains, thousands of turns (every assistant turn is a model call in revise)."""

    max_record_bytes: int = 4_000_000
    """``record_too_large``: a JSON Lines line or JSON array element longer than this many UTF-8 bytes (the
    longest ShareGPT V3 record is 437,748). A JSON Lines line over it is skipped unread."""
    max_turns: int = 1000
    """``too_many_turns``: a record (or a rejoined chat) with more turns (ShareGPT V3: at most 126)."""
    max_turn_chars: int = 100_000
    """``turn_too_long``: a turn with more characters (~25k tokens; 2 of ShareGPT V3's turns are longer)."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, positive=("max_record_bytes", "max_turns", "max_turn_chars"))


@dataclass
class Item:
    """One top-level record as read; ``error`` is the rejection reason when it could not be read (``raw`` is
    then its text, or what is known of it)."""
    source: str
    raw: Any
    error: str | None = None


def safe_text(text: str) -> str:
    """``text`` with any lone surrogate written as ``\\udXXX``: every string that reaches a file goes through
    this or is checked for surrogates (UTF-8 cannot encode them: one would stop the whole write)."""
    if text.isascii() or not SURROGATE.search(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_msg(e: Exception) -> str:
    return e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__


class Decoder:
    """One JSON decoder that notes NaN, Infinity and numbers out of float range: Python parses them, JSON has
    no such values, and a record holding one would be written back as an invalid token."""

    def __init__(self):
        self.bad: str | None = None
        self._dec = json.JSONDecoder(parse_constant=self._constant, parse_float=self._float)

    def _constant(self, name: str) -> float:
        self.bad = f"{name} is not a JSON value"
        return float(name)  # kept, so a wrapper document can tell which of its records holds it

    def _float(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            self.bad = f"number {text[:24]} is out of range"
        return value

    def decode(self, text: str) -> Any:
        self.bad = None
        return self._dec.decode(text)

    def raw_decode(self, text: str, pos: int) -> tuple[Any, int]:
        self.bad = None
        return self._dec.raw_decode(text, pos)
