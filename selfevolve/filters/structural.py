"""Structural checks: is there a usable new answer at all?"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, check_ranges
from .base import KEEP, Decision


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass
class StructuralFilterConfig:
    enabled: bool = True
    """Drops failed revisions, empty answers and answers identical to the original (after whitespace/case
    normalisation), and answers outside the length bounds; a confirmed turn's original answer against the length
    bounds, and when the served model's answer did not end on its own (``original_cut``)."""
    drop_verdict_keep: bool = False
    """Also drop revisions whose own verdict is ``keep``. Off: the model's verdict is a second opinion kept in the
    record, never a decision: on the embedded model it said "revise" for 29/30 wrong and 10/10 right answers
    (README, reviser strategies)."""
    min_chars: int = 1
    """Shortest revised answer kept (characters, after stripping)."""
    max_chars: int = 4000
    """Longest revised answer kept (characters): longer ones are usually runaway generations."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, non_negative=("min_chars",), positive=("max_chars",))
        if self.min_chars > self.max_chars:
            raise ConfigError(f"{key}: min_chars={self.min_chars} > max_chars={self.max_chars} keeps nothing")


class StructuralFilter:
    name = "structural"
    Config = StructuralFilterConfig
    uses_backend = uses_judge = False

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return [self.check(r) for r in records]

    def check(self, rec: dict) -> Decision:
        if rec.get("use") == "original":  # a confirmed turn trains on what the user approved
            if rec.get("original_cut"):  # a cut answer would teach the model to stop mid-sentence
                return Decision(False, "served answer did not end on its own (cut at its token limit or in a loop)")
            return self.length(rec["original"].strip())
        if rec.get("status") == "skipped":
            return Decision(False, rec.get("reason", "not revised"))
        if rec.get("status") != "ok":
            return Decision(False, f"revision failed: {rec.get('reason', 'unknown')}")
        if rec.get("truncated"):
            return Decision(False, "answer cut at revise.max_tokens")
        if self.cfg.drop_verdict_keep and rec.get("verdict") != "revise":
            return Decision(False, f"verdict {rec.get('verdict')}")
        revised = (rec.get("revised") or "").strip()
        if not revised:
            return Decision(False, "empty revision")
        if normalise(revised) == normalise(rec["original"]):
            return Decision(False, "identical to the original")
        return self.length(revised)

    def length(self, text: str) -> Decision:
        n = len(text)
        if n < self.cfg.min_chars:
            return Decision(False, f"too short ({n} < min_chars={self.cfg.min_chars})", float(n))
        if n > self.cfg.max_chars:
            return Decision(False, f"too long ({n} > max_chars={self.cfg.max_chars})", float(n))
        return KEEP
