"""Degenerate or implausible text: a repetition score, and the base model's perplexity of the answer.

Repetition is checked first and costs nothing; only answers that pass it are scored by the model, all in
one ``backend.logprobs`` call. Perplexity is dropped when above ``max_perplexity`` or, with enough records,
when its log is a high outlier of the round (median + k·MAD): what is implausible is relative to the model.
"""
from __future__ import annotations

import math

from .base import Decision


def repetition(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for ordinary prose, near 1 for a loop."""
    words = text.casefold().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def perplexity(logprobs: list[float]) -> float:
    """Per-token perplexity; inf when there is nothing to score (it can't be judged plausible)."""
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else math.inf


class PerplexityFilter:
    name = "perplexity"
    uses_backend, uses_judge = True, False

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
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
