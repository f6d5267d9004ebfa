"""Each curate filter on hand-made records where the right answer is known (scripted backends only)."""
import json

import pytest

from selfevolve.backends.base import Generation, RequestsFailed
from selfevolve.config import Config, ConfigError, load_config
from selfevolve.filters import FILTERS, Context, build_filters
from selfevolve.filters.consistency import ConsistencyFilter, central
from selfevolve.filters.diversity import DiversityFilter, text_of
from selfevolve.judge import SYSTEM as JUDGE_SYSTEM
from selfevolve.filters.judge import JudgeFilter
from selfevolve.filters.leakage import LeakageFilter
from selfevolve.filters.perplexity import PerplexityFilter
from selfevolve.filters.repetition import repetition
from selfevolve.filters.structural import StructuralFilter
from selfevolve.prompts import REVISION_SCHEMA

from fakes import ScriptedBackend

from conftest import ROOT


def rec(rid, revised, original="Sydney.", question="What is the capital of Australia?", **kw):
    base = {"id": rid, "conversation_id": rid.split("#")[0], "turn": 1, "strategy": "chat", "model": "m",
            "context": [{"role": "user", "content": question}], "original": original,
            "aftermath": [{"role": "user", "content": "No, it's Canberra."}],
            "status": "ok", "criticism": "wrong city", "verdict": "revise", "revised": revised,
            "attempts": 1, "output_tokens": 5}
    return {**base, **kw}


def ctx(cfg=None, **kw):
    return Context(cfg or Config(), **kw)


def keeps(decisions):
    return [d.keep for d in decisions]


class CountingBackend(ScriptedBackend):
    """ScriptedBackend that also counts ``chat`` invocations and scores log-probs with ``lp(text)``."""

    def __init__(self, script=lambda m, s, n: "", lp=lambda text: -1.0):
        super().__init__(script)
        self.batches, self.lp, self.scored = 0, lp, []

    def chat(self, batch, sampling, schema=None, adapter=None):
        self.batches += 1
        return super().chat(batch, sampling, schema, adapter)

    def logprobs(self, contexts, completions, adapter=None):
        self.scored.extend(completions)
        return [[self.lp(c)] * max(1, len(c.split())) for c in completions]


# ---------------------------------------------------------------- registry / config

def test_registry_names_match_config_sections():
    cfg = Config()
    assert set(FILTERS) == set(cfg.curate.order)
    for name in FILTERS:
        assert hasattr(getattr(cfg.curate, name), "enabled")


def test_unknown_filter_name_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="bogus_filter"):
        load_config(ROOT / "configs/default.yaml", ["curate.order=[structural, bogus_filter]"])
    cfg = Config()
    cfg.curate.order = ["structural", "typo"]
    with pytest.raises(ConfigError, match="'typo'"):
        build_filters(cfg)


def test_order_and_enabled_switches():
    cfg = load_config(ROOT / "configs/default.yaml",
                      ["curate.order=[judge, structural, leakage]", "curate.leakage.enabled=false",
                       "curate.judge.enabled=true"])
    assert [f.name for f in build_filters(cfg)] == ["judge", "structural"]
    # auto (null): the judge filter runs only when the judge is another model
    auto = load_config(ROOT / "configs/default.yaml", ["curate.order=[judge, structural]"])
    assert [f.name for f in build_filters(auto)] == ["structural"]
    other = load_config(ROOT / "configs/default.yaml", ["curate.order=[judge, structural]", "judge.kind=openai"])
    assert [f.name for f in build_filters(other)] == ["judge", "structural"]
    with pytest.raises(ConfigError, match="twice"):
        load_config(ROOT / "configs/default.yaml", ["curate.order=[structural, structural]"])
    with pytest.raises(ConfigError, match="judge.kind"):
        load_config(ROOT / "configs/default.yaml", ["judge.kind=magic"])


# ---------------------------------------------------------------- structural

@pytest.mark.parametrize("record,reason", [
    (rec("a#1", "x", status="failed", reason="critique: empty output"), "revision failed: critique: empty output"),
    (rec("a#1", "Canberra.", verdict="keep"), "verdict keep"),
    (rec("a#1", "   "), "empty revision"),
    (rec("a#1", "  sydney. "), "identical to the original"),
    (rec("a#1", "Sydney  is\nthe capital.", original="sydney is the CAPITAL."), "identical to the original"),
    (rec("a#1", "x" * 5000), "too long"),
    (rec("a#1", "Canberra. Canberra. Canberra.", truncated=True), "answer cut at revise.max_tokens"),
])
def test_structural_drops(record, reason):
    cfg = Config().curate.structural
    cfg.drop_verdict_keep = True  # the model's own verdict decides only when asked to
    (d,) = StructuralFilter(cfg).apply([record], ctx())
    assert not d.keep and reason in d.reason


def test_structural_keeps_a_verdict_keep_by_default_and_checks_only_length_of_confirmed_originals():
    f = StructuralFilter(Config().curate.structural)
    assert f.apply([rec("a#1", "Canberra.", verdict="keep")], ctx())[0].keep  # a second opinion, not a decision
    confirmed = rec("a#1", "", status="failed", reason="x", use="original")  # its revision is not used
    assert f.apply([confirmed], ctx())[0].keep
    assert not f.apply([{**confirmed, "original": "x" * 5000}], ctx())[0].keep


def test_structural_keeps_and_min_chars():
    cfg = Config().curate.structural
    assert keeps(StructuralFilter(cfg).apply([rec("a#1", "Canberra.")], ctx())) == [True]
    cfg.min_chars = 20
    (d,) = StructuralFilter(cfg).apply([rec("a#1", "Canberra.")], ctx())
    assert not d.keep and "too short" in d.reason and d.score == 9


# ---------------------------------------------------------------- leakage

@pytest.mark.parametrize("text", [
    "As you said, the capital is Canberra.",
    "You're right that it is Canberra.",
    "I apologize for the confusion: the capital is Canberra.",
    "Thanks for the correction! Canberra it is.",
    "As I mentioned earlier, Canberra is the capital.",
    "My previous answer was wrong; it is Canberra.",
    "Sorry for my mistake, the capital is Canberra.",
    "As discussed earlier in this conversation, it is Canberra.",
])
def test_leaking_revision_is_dropped(text):
    (d,) = LeakageFilter(Config().curate.leakage).apply([rec("a#1", text)], ctx())
    assert not d.keep and d.reason.startswith("hindsight leakage")


@pytest.mark.parametrize("text", [
    "The capital of Australia is Canberra.",
    "Earlier versions of Python lacked f-strings.",  # "earlier" alone is not about the conversation
    "I apologize, but I can't help with that.",
])
def test_first_answers_are_kept(text):
    assert keeps(LeakageFilter(Config().curate.leakage).apply([rec("a#1", text)], ctx())) == [True]


def test_extra_leakage_patterns_and_bad_regex():
    cfg = Config().curate.leakage
    cfg.extra_patterns = [r"\bper our chat\b"]
    (d,) = LeakageFilter(cfg).apply([rec("a#1", "Per our chat, Canberra.")], ctx())
    assert not d.keep
    cfg.extra_patterns = ["(unclosed"]
    with pytest.raises(ConfigError, match="unclosed"):
        LeakageFilter(cfg)


# ---------------------------------------------------------------- diversity

LONG = "Canberra is the capital of Australia; it was chosen as a compromise between Sydney and Melbourne in 1908."


def test_near_duplicate_within_round_is_dropped_first_kept():
    records = [rec("a#1", LONG), rec("b#1", LONG + " Indeed."), rec("c#1", "Paris is the capital of France.",
                                                                    question="Capital of France?")]
    ds = DiversityFilter(Config().curate.diversity).apply(records, ctx())
    assert keeps(ds) == [True, False, True]
    assert ds[1].reason == "near-duplicate of a#1" and ds[1].score >= 0.8


def test_duplicate_of_earlier_round_is_dropped():
    earlier = [("round-001/z#1", text_of([{"role": "user", "content": "What is the capital of Australia?"}], LONG))]
    ds = DiversityFilter(Config().curate.diversity).apply([rec("a#1", LONG), rec("b#1", "Something else entirely.")],
                                                          ctx(earlier=earlier))
    assert keeps(ds) == [False, True] and "round-001/z#1" in ds[0].reason


def test_same_answer_to_a_different_question_is_not_a_duplicate():
    records = [rec("a#1", LONG), rec("b#1", LONG, question="Tell me about Australian politics and its history.")]
    assert keeps(DiversityFilter(Config().curate.diversity).apply(records, ctx())) == [True, True]


# ---------------------------------------------------------------- perplexity

def test_degenerate_repetition_is_dropped_without_asking_the_model():
    loop = "the cat sat on the mat " * 12
    backend = CountingBackend()
    ds = PerplexityFilter(Config().curate.perplexity).apply([rec("a#1", loop), rec("b#1", LONG)],
                                                            ctx(backend=backend))
    assert keeps(ds) == [False, True]
    assert "repetitive" in ds[0].reason and ds[0].score > 0.5 and repetition(LONG, 3) == 0
    assert backend.scored == [LONG]
    assert ds[1].update["perplexity"] == pytest.approx(2.7183, abs=1e-3) and ds[1].score == pytest.approx(2.71828)


def test_perplexity_above_max_is_dropped():
    backend = CountingBackend(lp=lambda text: -6.0 if "gibberish" in text else -1.0)
    ds = PerplexityFilter(Config().curate.perplexity).apply(
        [rec("a#1", "zq gibberish vlorp"), rec("b#1", LONG)], ctx(backend=backend))
    assert keeps(ds) == [False, True] and "max_perplexity" in ds[0].reason and ds[0].score > 400


def test_perplexity_outlier_of_the_round_is_dropped():
    # Twelve answers around perplexity e^1; one at e^4 ≈ 55: under max_perplexity, but far out of the round.
    lps = [-1.0, -1.1, -0.9, -1.05, -0.95, -1.2, -0.8, -1.0, -1.15, -0.85, -1.0, -1.1, -4.0]
    records = [rec(f"r{i}#1", f"answer number {i} {'odd' if lp == -4.0 else ''}") for i, lp in enumerate(lps)]
    backend = CountingBackend(lp=lambda text: -4.0 if "odd" in text else lps[int(text.split()[2])])
    ds = PerplexityFilter(Config().curate.perplexity).apply(records, ctx(backend=backend))
    assert keeps(ds) == [True] * 12 + [False] and "outlier" in ds[-1].reason
    # Too few records for a median to mean anything: the same answer passes.
    ds = PerplexityFilter(Config().curate.perplexity).apply(records[-3:], ctx(backend=backend))
    assert keeps(ds) == [True, True, True]


# ---------------------------------------------------------------- judge

def between(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0]


def judge(prefer):
    """A judge script: ``prefer(reply_a, reply_b)`` -> "A" | "B" | "tie"."""
    def script(messages, schema, n):
        assert messages[0]["content"] == JUDGE_SYSTEM and schema is not None
        text = messages[-1]["content"]
        a = json.loads(between(text, "[Reply A]\n", "\n[End of reply A]"))
        b = json.loads(between(text, "[Reply B]\n", "\n[End of reply B]"))
        return json.dumps({"reason": "because", "winner": prefer(a, b)})
    return script


def run_judge(script, records=None):
    backend = CountingBackend(script)
    records = records or [rec("a#1", "Canberra."), rec("b#1", "Melbourne.")]
    return JudgeFilter(Config().curate.judge).apply(records, ctx(judge=backend)), backend


def test_judge_that_prefers_revised_in_both_orders_keeps_it():
    ds, backend = run_judge(judge(lambda a, b: "A" if a != "Sydney." else "B"))
    assert keeps(ds) == [True, True] and ds[0].score == 1.0
    assert backend.batches == 1 and len(backend.calls) == 4  # both orders of both records in one batch
    orders = [json.loads(between(m[-1]["content"], "[Reply A]\n", "\n[End")) for m, _ in backend.calls[:2]]
    assert orders == ["Sydney.", "Canberra."]  # original first, then revised first
    assert "What is the capital of Australia?" in backend.calls[0][0][-1]["content"]
    assert ds[0].update["judge"] == {"revised_as_b": "B", "revised_as_a": "A", "reasons": ["because", "because"]}


def test_judge_that_prefers_original_drops():
    ds, _ = run_judge(judge(lambda a, b: "A" if a == "Sydney." else "B"))
    assert keeps(ds) == [False, False] and "prefers the original" in ds[0].reason and ds[0].score == 0.0


def test_judge_that_flips_with_order_drops():
    ds, _ = run_judge(judge(lambda a, b: "A"))  # always the first position
    assert keeps(ds) == [False, False] and "flips with the order" in ds[0].reason and ds[0].score == 0.5


def test_judge_tie_drops():
    ds, _ = run_judge(judge(lambda a, b: "tie"))
    assert keeps(ds) == [False, False] and "no clear win" in ds[0].reason and ds[0].score == 0.5


@pytest.mark.parametrize("bad", [
    "{not json", json.dumps({"reason": "x", "winner": "C"}), Generation('{"reason": "x", "win', "length", 9),
    Generation("", "error:prompt_too_long", 0)])  # a failed request stops the stage instead: test_judge.py
def test_invalid_judge_output_drops_with_reason(bad):
    ds, _ = run_judge(lambda m, s, n: bad)
    assert keeps(ds) == [False, False] and all(d.reason.startswith("judge output invalid: ") for d in ds)
    assert ds[0].score is None


# ---------------------------------------------------------------- self-consistency

def consistency_script(answers, verdicts):
    """Sample n of a turn answers ``answers[n]`` with critique verdict ``verdicts[n]`` (None: unparseable)."""
    def script(messages, schema, n):
        if schema is None:
            return answers[n]
        if verdicts[n] is None:
            return "{not json"
        return json.dumps({"criticism": "c", "verdict": verdicts[n]})
    return script


def sc_config(samples=3):
    """The tests below are written for k=3 (4 verdicts with the record's own), whatever the default."""
    cfg = Config().curate.self_consistency
    cfg.samples = samples
    return cfg


def run_consistency(record, answers, verdicts):
    backend = CountingBackend(consistency_script(answers, verdicts))
    ds = ConsistencyFilter(sc_config()).apply([record], ctx(backend=backend))
    return ds[0], backend


SAME = "Canberra is the capital of Australia."


def test_disagreeing_samples_fail_self_consistency():
    d, _ = run_consistency(rec("a#1", "Canberra."), [SAME] * 3, ["keep", "keep", "revise"])
    assert not d.keep and "2/4" in d.reason and d.score == 0.5


def test_unparseable_samples_count_as_disagreeing():
    d, _ = run_consistency(rec("a#1", "Canberra."), [SAME] * 3, ["revise", None, None])
    assert not d.keep and d.update["consistency"]["revise_votes"] == 2


def test_failed_sample_requests_stop_the_stage_instead_of_disagreeing():
    """A sample whose request failed (the served engine gone) is no disagreement: RequestsFailed, a rerun asks
    again (it dropped the record as inconsistent)."""
    gone = CountingBackend(lambda m, s, n: Generation("", "error:APIConnectionError: Connection error.", 0))
    with pytest.raises(RequestsFailed, match="self_consistency .*6 of 6 requests failed"):
        ConsistencyFilter(sc_config()).apply([rec("a#1", "Canberra.")], ctx(backend=gone))


def test_agreeing_samples_pass_with_the_central_revision():
    record = rec("a#1", "Hmm, it might be Canberra I guess.")
    answers = [SAME, "Canberra is the capital of Australia, in the ACT.", SAME]
    d, backend = run_consistency(record, answers, ["revise", "revise", "keep"])
    assert d.keep and d.score == 0.75
    # Candidates: own (0) and the samples that said revise (1, 2); sample 1 is closest to the others.
    assert d.update["consistency"]["chosen"] == 1
    assert d.update["revised"] == SAME and d.update["revised_first"] == record["revised"]
    assert backend.batches == 1 and len(backend.calls) == 6  # 3 samples × (answer + critique), one batch
    # The calls are the chat strategy's, on the conversation rebuilt from the record (aftermath included).
    assert all("No, it's Canberra." in m[-1]["content"] for m, _ in backend.calls)
    assert [m["content"] for m in backend.calls[0][0][:2]] == ["What is the capital of Australia?", "Sydney."]


def test_own_revision_kept_when_it_is_central():
    d, _ = run_consistency(rec("a#1", SAME), [SAME, SAME, "Something else."], ["revise"] * 3)
    assert d.keep and d.update["consistency"]["chosen"] == 0 and "revised" not in d.update


def test_leaking_sample_is_not_a_candidate():
    d, _ = run_consistency(rec("a#1", "Canberra."), ["You're right, it's Canberra."] * 3, ["revise"] * 3)
    assert d.keep and d.update["consistency"]["chosen"] == 0 and "revised" not in d.update


def test_consistency_uses_the_records_strategy():
    def script(messages, schema, n):
        assert schema == REVISION_SCHEMA
        return json.dumps({"criticism": "c", "verdict": "revise", "revision": SAME})

    backend = CountingBackend(script)
    d = ConsistencyFilter(sc_config()).apply([rec("a#1", SAME, strategy="json")],
                                                                  ctx(backend=backend))[0]
    assert d.keep and len(backend.calls) == 3


def test_central_picks_the_most_typical_text():
    assert central(["a b c", "x y z", "a b c d", "a b c"]) == 0
    assert central(["only"]) == 0
