"""Degenerate or implausible text: a repetition score, and the base model's perplexity of the answer.

Repetition (the score of the ``repetition`` filter, which runs on both routes by default) is checked first and
costs nothing; only answers that pass it are scored by the model, all in one ``backend.logprobs`` call. Perplexity
is dropped when above ``max_perplexity`` or, with enough records, when its log is a high outlier of the round
(median + k·MAD): what is implausible is relative to the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import check_ranges
from .base import Decision, for_revisions
from .repetition import repetition


def perplexity(logprobs: list[float]) -> float:
    """Per-token perplexity; inf when there is nothing to score (it can't be judged plausible)."""
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else math.inf


@dataclass
class PerplexityFilterConfig:
    enabled: bool = True
    """Drops degenerate text (repeated word n-grams) and text the base model finds implausible given the
    context (per-token perplexity above ``max_perplexity`` or a robust outlier within the round)."""
    max_repetition: float = 0.3
    """Largest share of repeated word n-grams (1 - distinct/total) kept; loops score near 1."""
    ngram: int = 3
    """Words per n-gram of the repetition score."""
    max_perplexity: float = 100.0
    """Per-token perplexity of the revised answer above which it is dropped."""
    mad_k: float = 3.0
    """Also drop log-perplexity above median + mad_k · MAD (normal-scaled) of the round; 0 turns it off."""
    min_records_for_outliers: int = 10
    """The outlier rule needs at least this many scored records (a median of three says little)."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, unit=("max_repetition",), non_negative=("mad_k",),
                     positive=("ngram", "max_perplexity", "min_records_for_outliers"))


class PerplexityFilter:
    name = "perplexity"
    Config = PerplexityFilterConfig
    uses_backend, uses_judge = True, False

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return for_revisions(records, lambda recs: self._apply(recs, ctx))

    def _apply(self, records: list[dict], ctx) -> list[Decision]:
        cfg = self.cfg
        reps = [repetition(r.get("revised") or "", cfg.ngram) for r in records]
        todo = [i for i, rep in enumerate(reps) if rep <= cfg.max_repetition]
        lps = ctx.backend.logprobs([records[i]["context"] for i in todo],
                                   [records[i]["revised"] for i in todo]) if todo else []
        if len(lps) != len(todo):
            raise RuntimeError(f"perplexity: the backend scored {len(lps)} of {len(todo)} answers")
        ppl = dict(zip(todo, (perplexity(lp) for lp in lps)))
        limit = self._outlier_limit([math.log(p) for p in ppl.values() if math.isfinite(p)])
        out = []
        for i, rep in enumerate(reps):
            scores = {"repetition": round(rep, 4)}
            if i not in ppl:
                out.append(Decision(False, f"repetitive (repeated {cfg.ngram}-gram share {rep:.2f} > "
                                           f"{cfg.max_repetition})", rep, scores))
                continue
            p = ppl[i]
            scores["perplexity"] = round(p, 4) if math.isfinite(p) else None
            score = p if math.isfinite(p) else None
            if not p <= cfg.max_perplexity:
                out.append(Decision(False, f"perplexity {p:.1f} > max_perplexity={cfg.max_perplexity}", score, scores))
            elif limit is not None and math.log(p) > limit:
                out.append(Decision(False, f"perplexity {p:.1f} is an outlier of the round "
                                           f"(> {math.exp(limit):.1f} = median + {cfg.mad_k}·MAD)", score, scores))
            else:
                out.append(Decision(True, None, score, scores))
        return out

    def _outlier_limit(self, log_ppl: list[float]) -> float | None:
        """median + k·MAD of the round's log-perplexities; None when the rule is off or can't say anything."""
        import numpy as np
        from scipy.stats import median_abs_deviation

        if self.cfg.mad_k <= 0 or len(log_ppl) < self.cfg.min_records_for_outliers:
            return None
        mad = float(median_abs_deviation(log_ppl, scale="normal"))
        if mad == 0:  # most values equal: every value above them would count as an outlier
            return None
        return float(np.median(log_ppl)) + self.cfg.mad_k * mad
