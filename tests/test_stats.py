"""selfevolve/stats.py: the win rate's Wilson interval, the bootstrap, the length-controlled fit and the paired
tests, against values computed by hand or by scipy."""
import pytest

from selfevolve.stats import (bootstrap_ci, length_controlled, mcnemar, paired_bootstrap_diff, win_rate, win_summary,
                              wilson)


def test_bootstrap_ci_is_seeded_and_exact_on_constant_data():
    values = [1, 0, 1, 1, 0, 1, 0.5, 1]
    assert bootstrap_ci(values, 500, seed=3) == bootstrap_ci(values, 500, seed=3)
    assert bootstrap_ci([1.0] * 20, 500) == (1.0, 1.0)
    low, high = bootstrap_ci(values, 2000)
    assert low < sum(values) / len(values) < high


def test_length_controlled_view_separates_length_from_quality():
    # A length-biased judge: B wins whenever it is twice as long, loses when half as long, ties at equal length.
    scores, len_a, len_b = [], [], []
    for _ in range(10):
        scores += [1.0, 0.0, 0.5]
        len_a += [50, 50, 50]
        len_b += [100, 25, 50]
    lc = length_controlled(scores, len_a, len_b, [0.67, 0.9, 1.11, 1.5], n_boot=300)
    by = {b["range"]: b for b in lc["buckets"]}
    assert by["< 0.67"] == {"range": "< 0.67", "n": 10, "win_rate": 0.0}
    assert by["0.9–1.11"]["win_rate"] == 0.5 and by["0.9–1.11"]["n"] == 10
    assert by[">= 1.5"]["win_rate"] == 1.0
    assert by["0.67–0.9"]["n"] == 0 and by["0.67–0.9"]["win_rate"] is None
    lg = lc["logistic"]
    assert lg["slope"] > 2 and lg["win_rate_at_equal_length"] == pytest.approx(0.5, abs=1e-6)
    # Better at every length: B wins whether shorter or longer → high win rate at equal length.
    lc = length_controlled([1.0] * 20, [50] * 20, [25, 100] * 10, [0.67, 1.5], n_boot=300)
    assert lc["logistic"]["win_rate_at_equal_length"] > 0.9 and abs(lc["logistic"]["slope"]) < 0.5
    # B wins only because it is longer: the raw win rate is 0.75, but at equal length it is well below.
    scores = [1.0] * 15 + [0.0] * 5
    lc = length_controlled(scores, [50] * 20, [100] * 15 + [50] * 5, [0.67, 1.5], n_boot=300)
    assert lc["logistic"]["win_rate_at_equal_length"] < 0.5



def test_length_effect_not_identifiable_when_every_ratio_is_the_same(tmp_path):
    lc = length_controlled([1.0, 0.5, 1.0], [10, 10, 10], [20, 20, 20], [0.67, 1.5], n_boot=100)
    assert lc["logistic"]["win_rate_at_equal_length"] is None and "not identifiable" in lc["logistic"]["note"]
    lc = length_controlled([1.0, 0.5, 1.0], [10, 10, 10], [10, 10, 10], [0.67, 1.5], n_boot=100)
    assert lc["logistic"]["win_rate_at_equal_length"] == pytest.approx(2.5 / 3, abs=0.01)



# ---------------------------------------------------------------- the one win-rate CI

def judged(outcomes):
    score = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    return [{"outcome": o, "score": score[o], "inconsistent": False, "invalid": False} for o in outcomes]


def test_compare_and_curate_share_the_wilson_interval():
    js = judged(["win"] * 13 + ["tie"] * 4 + ["loss"] * 3)
    r = win_summary(js, confidence=0.9)
    w = win_rate([j["score"] for j in js], confidence=0.9)
    assert r["win_rate"] == w["rate"] == pytest.approx(15 / 20)
    assert (r["ci_low"], r["ci_high"]) == (w["low"], w["high"]) == wilson(15, 20, 0.9)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (13, 4, 3, 20) and "Wilson" in r["method"]


def test_win_summary_verdicts_and_small_samples():
    # every prompt won: the interval excludes half (a bootstrap would give the zero-width [1, 1])
    r = win_summary(judged(["win"] * 8))
    assert r["verdict"] == "B better" and 0.5 < r["ci_low"] < 0.75 and r["ci_high"] == 1.0
    assert win_summary(judged(["loss"] * 8))["verdict"] == "A better"
    assert win_summary(judged(["win", "loss"] * 5))["verdict"] == "no significant difference"
    empty = win_summary([])
    assert (empty["n"], empty["win_rate"], empty["ci_low"], empty["ci_high"]) == (0, 0.5, 0.0, 1.0)
    assert empty["verdict"] == "no significant difference"


# ---------------------------------------------------------------- paired tests

def test_mcnemar_exact_values():
    # discordant pairs only: under no change each is a fair coin; two-sided exact binomial p-values by hand
    assert mcnemar(0, 5) == pytest.approx(2 * 0.5 ** 5)  # 0.0625
    assert mcnemar(1, 9) == pytest.approx(2 * (1 + 10) / 2 ** 10)  # P(X <= 1) + P(X >= 9), X ~ Bin(10, 1/2)
    assert mcnemar(9, 1) == mcnemar(1, 9)
    assert mcnemar(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 2 ** 10)
    assert mcnemar(5, 5) == 1.0 and mcnemar(0, 0) == 1.0
    assert mcnemar(3, 17) < 0.05 < mcnemar(6, 14)
    with pytest.raises(ValueError):
        mcnemar(-1, 3)


def test_paired_bootstrap_diff_against_hand_and_scipy():
    import numpy as np
    from scipy.stats import bootstrap

    before = [True, False, True, True, False, False, True, False, True, False] * 4
    after = [True, True, True, True, False, True, True, False, True, True] * 4
    diff, low, high = paired_bootstrap_diff(before, after, n_boot=4000, seed=1)
    assert diff == pytest.approx((32 - 20) / 40)  # mean(after) - mean(before): 32 and 20 of 40 right
    assert low < diff < high and low > 0  # only gains: 12 of 40 items went right, none went wrong
    d = np.array(after, float) - np.array(before, float)
    ref = bootstrap((d,), np.mean, n_resamples=4000, method="percentile", confidence_level=0.95,
                    random_state=np.random.default_rng(7)).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.03) and high == pytest.approx(ref.high, abs=0.03)
    assert paired_bootstrap_diff(before, after, n_boot=4000, seed=1) == (diff, low, high)  # seeded
    # constant per-item change: zero-width interval at the change
    assert paired_bootstrap_diff([0.2, 0.4, 0.6], [0.5, 0.7, 0.9], n_boot=200) == pytest.approx((0.3, 0.3, 0.3))


def test_paired_bootstrap_keeps_pairs_together():
    # items differ a lot, the change within each item is small and constant: pairing leaves no spread
    before = [float(i) for i in range(30)]
    after = [b + 1.0 for b in before]
    diff, low, high = paired_bootstrap_diff(before, after, n_boot=500)
    assert (diff, low, high) == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="items before"):
        paired_bootstrap_diff([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="no items"):
        paired_bootstrap_diff([], [])
