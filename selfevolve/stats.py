"""All statistics: the win rate and its CI, bootstrap intervals, the length-controlled logistic fit, paired
tests (McNemar, paired bootstrap), length summaries; and the plotting helpers (matplotlib's Agg backend: no
display needed).

One CI method for one win rate: the **Wilson score interval** (:func:`win_rate`), for curate's judge win rate
(record = unit) and compare's (prompt = unit). It is closed-form (no seed, no resampling noise) and stays
honest at small n and at the edges: a percentile bootstrap of 8 prompts that were all won gives the
zero-width interval [1, 1], the Wilson interval [0.68, 1]. The bootstrap remains for statistics with no
closed form: the length-controlled win rate and paired differences.
"""
from __future__ import annotations

import math
import os
import statistics
from pathlib import Path


def wilson(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    scipy's ``binomtest(k, n).proportion_ci("wilson")`` gives the same interval but only takes whole k;
    with ties counting half, k can be x.5, so the closed form is used with the standard library's normal
    quantile (importing scipy.stats takes about a second of every report; the tests check both agree on whole
    k). Per-record scores in [0, 1] have variance at most p(1-p), so the binomial interval is conservative."""
    if n == 0:
        return 0.0, 1.0
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(scores: list[float], confidence: float = 0.95, unit: str = "record") -> dict | None:
    """Win rate from per-unit judge scores (1 win, ½ tie, 0 loss) with its Wilson interval; None when empty.

    The unit (a curated record, a compared prompt) is what is counted: its two judge orders are not
    independent judgments, so they make one score, not two."""
    if not scores:
        return None
    low, high = wilson(sum(scores), len(scores), confidence)
    return {"n": len(scores), "rate": sum(scores) / len(scores), "low": low, "high": high,
            "confidence": confidence, "method": f"Wilson score interval, {unit} = unit, ties count half"}


def win_summary(judgments: list[dict], confidence: float = 0.95) -> dict:
    """B's wins / ties / losses over judged pairs (records with ``outcome``, ``score``, ``inconsistent``,
    ``invalid``), its win rate with the Wilson interval, and the verdict: a side is better only when the
    interval excludes ½."""
    n = len(judgments)
    w = win_rate([j["score"] for j in judgments], confidence, unit="prompt")
    rate, low, high = (w["rate"], w["low"], w["high"]) if w else (0.5, 0.0, 1.0)
    verdict = "B better" if n and low > 0.5 else "A better" if n and high < 0.5 else "no significant difference"
    outcomes = [j["outcome"] for j in judgments]
    return {"n": n, "wins": outcomes.count("win"), "ties": outcomes.count("tie"), "losses": outcomes.count("loss"),
            "inconsistent": sum(j.get("inconsistent", False) for j in judgments),
            "invalid": sum(j.get("invalid", False) for j in judgments),
            "win_rate": rate, "ci_low": low, "ci_high": high, "confidence": confidence, "verdict": verdict,
            "method": "B's win rate over prompts (tie = 0.5; both judge orders must agree, else tie); "
                      "Wilson score interval, prompt = unit"}


def by_source(prompts: list[dict], judgments: list[dict]) -> dict:
    """B's wins / ties / losses and win rate per prompt source (``mt_bench``, ``heldout``): the held-out chat
    turns are the closest to what the served model is asked, and a few of them move the pooled rate little."""
    out: dict[str, dict] = {}
    for p, j in zip(prompts, judgments):
        d = out.setdefault(p["source"], {"n": 0, "wins": 0, "ties": 0, "losses": 0, "score": 0.0})
        d["n"] += 1
        d[{"win": "wins", "tie": "ties", "loss": "losses"}[j["outcome"]]] += 1
        d["score"] += j["score"]
    for d in out.values():
        d["win_rate"] = d.pop("score") / d["n"]
    return out


def bootstrap_ci(values, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, stat=None) -> tuple[float, float]:
    """Percentile bootstrap over the units (prompts). ``stat``: a function of an index array → value
    (default: the mean of ``values``). Constant data gives a zero-width interval."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = values[idx].mean(axis=1) if stat is None else np.array([stat(i) for i in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


# ---------------------------------------------------------------- paired tests

def mcnemar(b_only: int, c_only: int) -> float:
    """Exact two-sided McNemar test of paired yes/no outcomes: ``b_only`` items right only before, ``c_only``
    right only after (items that agree carry no information). Under no change each discordant item is a fair
    coin, so the p-value is scipy's exact binomial test of b_only out of b_only + c_only at ½; 1.0 with no
    discordant item."""
    from scipy.stats import binomtest

    if b_only < 0 or c_only < 0:
        raise ValueError(f"mcnemar: counts must be >= 0, got {b_only}, {c_only}")
    if b_only + c_only == 0:
        return 1.0
    return float(binomtest(b_only, b_only + c_only, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap_diff(before: list[bool | float], after: list[bool | float], n_boot: int = 2000,
                          confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """mean(after) - mean(before) over paired items (item i measured before and after), with a percentile
    bootstrap CI that resamples items, so each item's pair stays together (the pairing removes the spread
    between items). Returns (diff, low, high); ValueError when the lists differ in length or are empty."""
    import numpy as np

    if len(before) != len(after):
        raise ValueError(f"paired_bootstrap_diff: {len(before)} items before, {len(after)} after")
    if not before:
        raise ValueError("paired_bootstrap_diff: no items")
    diffs = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    low, high = bootstrap_ci(diffs, n_boot, confidence, seed)
    return float(diffs.mean()), low, high


# ---------------------------------------------------------------- length-controlled win rate

def fit_logistic(x, y, ridge: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """Logistic regression of outcome ``y`` in [0, 1] (ties = 0.5: fractional outcomes, the binomial
    log-likelihood) on ``x``, by Newton's method. A small ridge keeps the fit finite when the data are
    separable (every prompt won)."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    X = np.column_stack([np.ones_like(x), x])
    w = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ w)))
        grad = X.T @ (y - p) - ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _bucket_label(lo: float | None, hi: float | None) -> str:
    if lo is None:
        return f"< {hi:g}"
    if hi is None:
        return f">= {lo:g}"
    return f"{lo:g}–{hi:g}"


def _length_buckets(scores, ratio, edges) -> list[dict]:
    import numpy as np

    bounds = [None, *edges, None]
    buckets = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mask = np.ones_like(ratio, bool)
        if lo is not None:
            mask &= ratio >= lo
        if hi is not None:
            mask &= ratio < hi
        k = int(mask.sum())
        buckets.append({"range": _bucket_label(lo, hi), "n": k,
                        "win_rate": float(scores[mask].mean()) if k else None})
    return buckets


def length_controlled(scores, len_a, len_b, edges, n_boot: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict:
    """Win rate within buckets of the length ratio B/A, and B's win rate at equal length from a logistic
    regression of the outcome on log(len B / len A) (lengths floored at 1), with a bootstrap CI."""
    import numpy as np

    scores = np.asarray(scores, float)
    ratio = np.maximum(np.asarray(len_b, float), 1) / np.maximum(np.asarray(len_a, float), 1)
    x = np.log(ratio)
    out = {"buckets": _length_buckets(scores, ratio, edges),
           "median_ratio": float(np.median(ratio)) if len(ratio) else None}
    if len(scores) >= 2 and np.ptp(x) < 0.01 and abs(float(x.mean())) >= 0.01:
        # Every pair has the same (unequal) length ratio: length and quality cannot be told apart.
        out["logistic"] = {"intercept": None, "slope": None, "win_rate_at_equal_length": None, "ci_low": None,
                           "ci_high": None, "note": "not identifiable: every pair has the same length ratio"}
    elif len(scores) >= 2:
        b0, b1 = fit_logistic(x, scores)

        def stat(idx):
            return _sigmoid(fit_logistic(x[idx], scores[idx], iters=25)[0])

        low, high = bootstrap_ci(scores, min(n_boot, 1000), confidence, seed, stat=stat)
        out["logistic"] = {"intercept": b0, "slope": b1, "win_rate_at_equal_length": _sigmoid(b0),
                           "ci_low": low, "ci_high": high,
                           "note": "slope > 0: the judge favours the longer answer"}
    return out


def length_summary(texts: list[str]) -> dict:
    """Character lengths: n, mean, p10, median, p90, max (``{"n": 0}`` when empty)."""
    import numpy as np

    if not texts:
        return {"n": 0}
    lengths = np.array([len(t) for t in texts])
    p10, median, p90 = np.percentile(lengths, [10, 50, 90])
    return {"n": len(texts), "mean": float(lengths.mean()), "p10": float(p10), "median": float(median),
            "p90": float(p90), "max": int(lengths.max())}


# ---------------------------------------------------------------- plotting helpers

def pyplot():
    """matplotlib.pyplot on the Agg backend (headless: the stages run on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """savefig to a temporary file, then rename: a reader never sees half a PNG. The caller closes ``fig``."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)
