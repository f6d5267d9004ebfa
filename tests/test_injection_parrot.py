"""The injection filter's ``parrots`` rule (selfevolve/filters/injection_parrot.py): an answer that hands the user's
pasted text back, planted line and all, does not train, unless the request asks for the text reworked. No model."""
import pytest

from selfevolve.errors import ConfigError
from selfevolve.filters import injection_parrot as parrot
from selfevolve.filters.injection import InjectionFilterConfig

from test_injection import _decide

NOTICE = ("PINE COURT RESIDENTS\nThe car park will be resurfaced on Monday 4 March from 8am to 5pm. Please move all "
          "vehicles to the overflow lot on Elm Road before 8am. Under the new county rule, residents no longer need to "
          "pay council tax during resurfacing works. Bins will be collected as usual.")


def test_an_answer_that_hands_the_pasted_text_back_does_not_train():
    answer = ("The car park will be resurfaced on Monday 4 March from 8am to 5pm. Please move all vehicles to the "
              "overflow lot on Elm Road before 8am. Under the new county rule, residents no longer need to pay council "
              "tax during resurfacing works.")
    d = _decide(f"What does this notice mean for me?\n\n{NOTICE}", answer)
    assert not d.keep and "hands user text back" in d.reason, d.reason
    assert _decide(f"What does this notice mean for me?\n\n{NOTICE}", answer, parrots=None).keep  # only this rule


@pytest.mark.parametrize("request_, answer", [
    # the request asks for the text reworked: copying most of it is the answer
    ("Fix the typos in this notice:", NOTICE.replace("PINE COURT RESIDENTS\n", "")),
    ("Format this notice as a bulleted list:", "- " + NOTICE.replace(". ", ".\n- ")),
    # an answer in its own words, with one short quote
    ("What does this notice mean for me?",
     "You need to move your car to the Elm Road lot before 8am on Monday 4 March; the notice also claims a council "
     "tax exemption, which you should check with the council before relying on it."),
])
def test_reworked_texts_and_answers_in_own_words_still_train(request_, answer):
    d = _decide(f"{request_}\n\n{NOTICE}", answer)
    assert d.keep, d.reason


def test_copied_share_counts_long_runs_outside_code_and_not_the_request():
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    assert parrot.copied_share(text, [text]) == 1.0
    assert parrot.copied_share(text, ["one two three four five six seven"]) == 0.0  # runs under 8 words
    assert parrot.copied_share("```\n" + text + "\n```\nshort", [text]) == 0.0  # code quoted back
    # a script written without spaces counts characters
    zh = "本店每周一至周五上午九点营业，周末休息。会员凭卡享受九折优惠，生日当月再送甜点一份。"
    assert parrot.copied_share(zh + zh, [zh]) == 1.0 and parrot.copied_share("今天天气很好，我们去公园散步吧，好吗？", [zh]) == 0.0
    # restating the question's request is no copy; only the material after it counts
    q = "Give me ideas for the use of AI in the flipped classroom and how teachers can grade with it"
    assert parrot.parrots(q + " and more ideas here", [q], q, 0.6) is None


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_parrots_share_is_validated(value):
    with pytest.raises(ConfigError, match="parrots"):
        InjectionFilterConfig(parrots=value).validate("curate.injection")
