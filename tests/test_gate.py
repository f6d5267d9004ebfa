"""The gate's rules on comparison summaries: measured learning (taught), nothing broken (kept), drift in
bounds, and the pairwise judge only where it discriminates."""
from selfevolve.config import GateConfig
from selfevolve.gate import gate_decision


def probe(n, a, b, low, high):
    return {"n": n, "pass_a": a, "pass_b": b, "diff": (b - a) / n, "ci_low": low, "ci_high": high}


def summary(rate=0.5, low=0.4, high=0.6, inconsistent=0, n=20, pairwise=True, taught=None, kept=None,
            ppl=(10.0, 11.0), d2=(0.8, 0.78)):
    probes = {k: v for k, v in (("taught", taught), ("kept", kept)) if v}
    return {"a": {"label": "base"}, "b": {"label": "round-002"}, "pairwise": pairwise,
            "result": {"n": n if pairwise else 0, "win_rate": rate, "ci_low": low, "ci_high": high,
                       "confidence": 0.95, "inconsistent": inconsistent, "invalid": 0},
            "drift": {"a": {"perplexity_human": ppl[0], "distinct_2": d2[0]},
                      "b": {"perplexity_human": ppl[1], "distinct_2": d2[1]}},
            "probes": probes}


def test_without_probes_a_discriminating_judge_must_show_a_win_beyond_its_ci():
    g = GateConfig()
    assert gate_decision(summary(0.7, 0.55, 0.85), g)["promote"] is True
    assert gate_decision(summary(0.7, 0.45, 0.85), g)["promote"] is False  # a good mean is not enough
    assert gate_decision(summary(0.7, 0.55, 0.85), GateConfig(threshold=0.6))["promote"] is False
    flips = gate_decision(summary(0.5, 0.5, 0.5, inconsistent=18), g)
    assert not flips["promote"] and "judge.kind=openai" in flips["reason"]


def test_taught_gain_beyond_noise_promotes_even_when_the_judge_flips():
    s = summary(0.5, 0.5, 0.5, inconsistent=18, taught=probe(20, 2, 14, 0.35, 0.8), kept=probe(10, 9, 9, -0.2, 0.2))
    d = gate_decision(s, GateConfig())
    assert d["promote"] is True and "taught 2→14/20" in d["reason"]
    assert {c["name"] for c in d["checks"]} == {"taught", "kept", "perplexity", "distinct-2"}  # no judge check


def test_each_rule_can_block():
    g = GateConfig()
    taught, kept = probe(20, 2, 14, 0.35, 0.8), probe(10, 9, 9, -0.2, 0.2)
    noisy = gate_decision(summary(pairwise=False, taught=probe(20, 2, 4, -0.05, 0.25), kept=kept), g)
    assert not noisy["promote"] and "taught" in noisy["reason"]
    broke = gate_decision(summary(pairwise=False, taught=taught, kept=probe(10, 9, 7, -0.4, 0.0)), g)
    assert not broke["promote"] and "kept 9→7/10" in broke["reason"]
    drift = gate_decision(summary(pairwise=False, taught=taught, kept=kept, ppl=(10.0, 30.0)), g)
    assert not drift["promote"] and "perplexity" in drift["reason"]
    collapse = gate_decision(summary(pairwise=False, taught=taught, kept=kept, d2=(0.8, 0.3)), g)
    assert not collapse["promote"] and "distinct-2" in collapse["reason"]
    loss = gate_decision(summary(0.2, 0.1, 0.35, taught=taught, kept=kept), g)  # a judge that sees a real loss
    assert not loss["promote"] and "significant loss" in loss["reason"]
    nothing = gate_decision(summary(pairwise=False), g)
    assert not nothing["promote"] and "no evidence of learning" in nothing["reason"]
