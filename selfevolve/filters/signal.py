"""The user is the judge: route each turn by its hindsight signal (selfevolve/signals.py, ``signals.jsonl``).

- ``corrected``: the user said or showed the answer was wrong: its revision may train (``use: revised``), if
  the later filters (grounding first) keep it;
- ``confirmed``: the user accepted the answer: the *original* answer trains (``use: original``): it is what users
  approved, and it anchors what the model already does right;
- ``unclear``: neither: dropped, counted.
A record without a signal (a round curated before signals existed, or ``signals.jsonl`` missing) keeps the
old route: its revision goes on to the filters.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Decision


@dataclass
class SignalFilterConfig:
    enabled: bool = True
    """Route turns by their hindsight signal (the user is the judge). Off: every revision goes on to the
    filters, whatever the user said next."""
    confirmed: bool = True
    """Train on the original answers of confirmed turns (SFT). Off: confirmed turns are dropped, counted."""

    def validate(self, key: str) -> None:
        """Switches only: their types are checked as they load (selfevolve/config.py)."""


class SignalFilter:
    name = "signal"
    uses_backend = uses_judge = False
    Config = SignalFilterConfig

    def __init__(self, cfg: SignalFilterConfig):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return [self.route(r) for r in records]

    def route(self, rec: dict) -> Decision:
        sig = rec.get("signal")
        if not sig:
            return Decision(True, update={"use": "revised"})
        label, conf = sig["label"], sig.get("confidence")
        how = f"{sig.get('source', 'aftermath')}, confidence {conf:.2f}" if conf is not None else sig.get("source", "")
        if label == "corrected":
            return Decision(True, score=conf, update={"use": "revised"})
        if label == "confirmed":
            if self.cfg.confirmed:
                return Decision(True, score=conf, update={"use": "original"})
            return Decision(False, f"confirmed turn: curate.signal.confirmed is off ({how})", conf)
        return Decision(False, f"hindsight unclear ({how})", conf)
