"""Grounding: a revision of a corrected turn trains only if it carries what the user's correction supplied and
does not repeat what the user rejected (selfevolve/grounding.py decides; measured in scripts/bench_grounding.py).

The served model rewrites an answer with hindsight, but it cannot judge whether it took the correction in:
the user's own words can. The correction is the signal's evidence (the follow-up message or a feedback
comment), else the first user message after the turn. A corrected turn with no words to ground on (a bare
thumbs-down) is dropped: nothing says what the right answer is.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import grounding
from .base import Decision, for_revisions, last_user


@dataclass
class GroundingFilterConfig:
    enabled: bool = True
    """Drop revisions of corrected turns that do not carry the correction (or repeat what it rejected). The
    check's own knobs are the ``grounding`` section (shared with compare's probes)."""

    def validate(self, key: str) -> None:
        """Switches only: their types are checked as they load (selfevolve/config.py)."""


def correction_text(rec: dict) -> str:
    sig = rec.get("signal") or {}
    if sig.get("text"):
        return sig["text"]
    return next((m["content"] for m in rec.get("aftermath", []) if m["role"] == "user"), "")


class GroundingFilter:
    name = "grounding"
    uses_backend = uses_judge = False
    Config = GroundingFilterConfig

    def __init__(self, cfg: GroundingFilterConfig):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return for_revisions(records, lambda recs: self._decide(recs, ctx.cfg.grounding))

    def _decide(self, records: list[dict], gcfg) -> list[Decision]:
        out = []
        for rec in records:
            correction = correction_text(rec)
            if not correction.strip():
                out.append(Decision(False, "corrected, but no words of the user to ground the revision on"))
                continue
            g = grounding.check(rec.get("revised") or "", rec["original"], correction, question=last_user(rec["context"]),
                                min_similarity=gcfg.min_similarity, embed=gcfg.min_similarity is not None, cfg=gcfg)
            update = {"grounding": {"carried": g.carried, "missing": g.missing, "repeated": g.repeated,
                                    "similarity": g.similarity}}
            out.append(Decision(g.ok, None if g.ok else g.reason, g.similarity, update))
        return out
