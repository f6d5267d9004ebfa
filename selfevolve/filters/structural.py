"""Structural checks: is there a usable new answer at all?"""
from __future__ import annotations

from .base import KEEP, Decision


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


class StructuralFilter:
    name = "structural"
    uses_backend = uses_judge = False

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return [self.check(r) for r in records]

    def check(self, rec: dict) -> Decision:
        if rec.get("status") != "ok":
            return Decision(False, f"revision failed: {rec.get('reason', 'unknown')}")
        if rec.get("truncated"):
            return Decision(False, "answer cut at revise.max_tokens")
        if rec.get("verdict") != "revise":
            return Decision(False, f"verdict {rec.get('verdict')}")
        revised = (rec.get("revised") or "").strip()
        if not revised:
            return Decision(False, "empty revision")
        if normalise(revised) == normalise(rec["original"]):
            return Decision(False, "identical to the original")
        n = len(revised)
        if n < self.cfg.min_chars:
            return Decision(False, f"too short ({n} < min_chars={self.cfg.min_chars})", float(n))
        if n > self.cfg.max_chars:
            return Decision(False, f"too long ({n} > max_chars={self.cfg.max_chars})", float(n))
        return KEEP
