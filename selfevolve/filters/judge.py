"""AI annotation: the pairwise judge (selfevolve/judge.py) compares the original (A) and the revised (B)
answer, in both orders.

A revision is kept only when its outcome is a win: the judge prefers it in both orders. That is the judge's
one aggregation rule seen from this filter; a flip with the order, a tie in either order, or a judge answer
that is not valid JSON of the schema drops the record with its reason (an unreadable verdict is not a win).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..judge import PairJudgment, judge_pairs
from .base import Decision, for_revisions

WORD = {"win": "won", "tie": "tied", "loss": "lost"}


@dataclass
class JudgeFilterConfig:
    enabled: bool | None = None
    """None (default) = on only when ``judge.kind: openai`` points at another model: this filter's verdict rests
    on a model judging, and the embedded 135M model judges at chance (its pairwise judge flipped with the order
    on 81 of 91 records; its keep/revise verdict said "revise" for 29/30 wrong and 10/10 right answers: README).
    True/False force it. A pairwise judge (the ``judge`` backend) compares original and revised answer in both orders;
    the revision is kept only when it wins in both. Invalid judge output drops the record, with its reason."""

    def validate(self, key: str) -> None:
        """Switches only: their types are checked as they load (selfevolve/config.py)."""


class JudgeFilter:
    name = "judge"
    Config = JudgeFilterConfig
    uses_backend, uses_judge = False, True

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return for_revisions(records, lambda recs: self._apply(recs, ctx))

    def _apply(self, records: list[dict], ctx) -> list[Decision]:
        # original as A, revision as B: asked with the original first, then with the revision first
        items = [(r["context"], r["original"], r["revised"]) for r in records]
        return [self.decide(j) for j in judge_pairs(ctx.judge, items, ctx.cfg.judge)]

    def decide(self, j: PairJudgment) -> Decision:
        for where, v in (("revised as B", j.a_first), ("revised as A", j.b_first)):
            if v.error is not None:
                return Decision(False, f"judge output invalid: {where}: {v.error}")
        update = {"judge": {"revised_as_b": j.a_first.winner, "revised_as_a": j.b_first.winner,
                            "reasons": [j.a_first.reason, j.b_first.reason]}}
        if j.outcome == "win":
            return Decision(True, None, j.score, update)
        as_b, as_a = j.per_order()
        if j.outcome == "loss":
            why = "judge prefers the original"
        elif {as_b, as_a} == {"win", "loss"}:
            why = "judge flips with the order"
        else:
            why = "judge finds no clear win"
        return Decision(False, f"{why} (revised {WORD[as_b]} as B, {WORD[as_a]} as A)", j.score, update)
