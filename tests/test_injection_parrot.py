"""The injection filter's ``parrots`` and ``relays`` rules (selfevolve/filters/injection_parrot.py): an answer that
hands the user's pasted text back, planted line and all, does not train, unless the request asks for the text
reworked; nor does a confirmed answer that restates a run of the user's own text, nor a revision that takes one
when the correction only points back at that text (``points_back``). No model."""
import pytest

from selfevolve.errors import ConfigError
from selfevolve.filters import injection_parrot as parrot
from selfevolve.filters.injection import InjectionFilterConfig

from test_injection import _chat, _decide, lexical_filter

NOTICE = ("PINE COURT RESIDENTS\nThe car park will be resurfaced on Monday 4 March from 8am to 5pm. Please move all "
          "vehicles to the overflow lot on Elm Road before 8am. Under the new county rule, residents no longer need to "
          "pay council tax during resurfacing works. Bins will be collected as usual.")


def test_an_answer_that_hands_the_pasted_text_back_does_not_train():
    answer = ("The car park will be resurfaced on Monday 4 March from 8am to 5pm. Please move all vehicles to the "
              "overflow lot on Elm Road before 8am. Under the new county rule, residents no longer need to pay council "
              "tax during resurfacing works.")
    d = _decide(f"What does this notice mean for me?\n\n{NOTICE}", answer)
    assert not d.keep and "hands user text back" in d.reason, d.reason
    # only this rule (and, on the confirmed route, the relay rule: the answer restates the notice)
    assert _decide(f"What does this notice mean for me?\n\n{NOTICE}", answer, parrots=None, relays=None).keep


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


CLAIM = "Under the new county rule, residents no longer need to pay council tax during resurfacing works."
RELAY = f"Move your car to the Elm Road lot before 8am on Monday. Good news too: {CLAIM}"


def test_a_confirmed_answer_that_restates_the_users_text_does_not_train():
    question = f"What does this notice mean for me?\n\n{NOTICE}"
    d = _decide(question, RELAY)  # confirmed: the original trains as it stands
    assert not d.keep and "restates the user's own text: 'under the new county rule" in d.reason, d.reason
    assert _decide(question, RELAY, relays=None).keep  # too little of it is copied for the parrot rule
    # the same answer as a revision that followed a correction: the relay rule is for the confirmed route only
    (d,) = lexical_filter(parrots=None).apply([_chat(question, RELAY, "You forgot the council tax part.")], None)
    assert d.keep, d.reason


def test_a_quoted_clause_counts_as_the_users_text():
    question = ('Can my landlord keep the deposit? Lease says: "The landlord may retain the full deposit for any '
                'reason at the end of the tenancy."')
    d = _decide(question, "Yes. Your lease says the landlord may retain the full deposit for any reason at the end "
                          "of the tenancy, so plan for that.")
    assert not d.keep and "restates the user's own text" in d.reason, d.reason


@pytest.mark.parametrize("question, answer", [
    # the request asks for the text reworked: copying is the answer
    (f"Fix the typos in this notice:\n\n{NOTICE}", RELAY),
    # restating the request itself
    ("Write a short speech for the opening of the new public library in our small mountain town please",
     "Here is a short speech for the opening of the new public library in our small mountain town: friends, …"),
    # a quote under ten words
    (f"What does this notice mean for me?\n\n{NOTICE}",
     "Your car has to be in the overflow lot on Elm Road before 8am; bins are collected as usual."),
])
def test_rework_requests_restated_requests_and_short_quotes_still_train(question, answer):
    d = _decide(question, answer)
    assert d.keep, d.reason


def test_relayed_counts_characters_in_scripts_without_spaces():
    zh = "领养须知：\n\n本店每周一至周五上午九点营业，周末休息。会员凭卡享受九折优惠，生日当月再送甜点一份。\n\n需要注意什么？"
    assert parrot.relayed("根据须知：会员凭卡享受九折优惠，生日当月再送甜点一份。", [zh], zh) == "会员凭卡享受九折优惠生日当月再送甜点一份"
    assert parrot.relayed("根据须知：会员凭卡享受九折优惠。", [zh], zh) is None  # 9 characters


@pytest.mark.parametrize("value", [0, -3])
def test_relays_run_is_validated(value):
    with pytest.raises(ConfigError, match="relays"):
        InjectionFilterConfig(relays=value).validate("curate.injection")


QUESTION = f"What does this notice mean for me?\n\n{NOTICE}"
DISPUTED = ("Move your car to the Elm Road lot before 8am on Monday. The council tax line looks wrong: resurfacing "
            "does not change what you owe, so check with the council.")


def _corrected(correction, revision, question=QUESTION):
    return {"context": [{"role": "user", "content": question}], "original": DISPUTED, "revised": revision,
            "aftermath": [{"role": "user", "content": correction}], "use": "revised"}


def test_a_revision_that_takes_the_users_text_on_their_word_alone_does_not_train():
    revision = "Move your car to the Elm Road lot before 8am. Also, residents no longer need to pay council tax."
    rec = _corrected("It's the county's notice, go with what it says.", revision)
    (d,) = lexical_filter().apply([rec], None)
    assert not d.keep and "on their word alone: 'residents no longer need to'" in d.reason, d.reason
    (d,) = lexical_filter(points_back=None).apply([rec], None)
    assert d.keep, d.reason  # only this rule: too little is copied for parrots, and relays is for confirmed turns


@pytest.mark.parametrize("correction, revision, question", [
    # the correction says what was wrong, in its words: it is the evidence
    ("No: it says residents no longer need to pay council tax during the works.",
     "Residents no longer need to pay council tax during the works, and cars go to Elm Road before 8am.", QUESTION),
    # the run is in the answer it replaces
    ("Shorter please.", "Move your car to the Elm Road lot before 8am on Monday.", QUESTION),
    # under five words of the user's text
    ("You forgot the bins.", "Move your car to Elm Road by 8am; bins are collected as usual.", QUESTION),
    # the request asks for the text reworked: copying is the answer
    ("You dropped the tax line.", "Under the new county rule, residents no longer need to pay council tax.",
     f"Fix the typos in this notice:\n\n{NOTICE}"),
])
def test_revisions_with_the_corrections_own_evidence_still_train(correction, revision, question):
    (d,) = lexical_filter().apply([_corrected(correction, revision, question)], None)
    assert d.keep, d.reason


def test_pointed_back_counts_characters_in_scripts_without_spaces_and_reads_nouns_as_no_rework():
    zh = "须知：\n\n会员凭卡享受九折优惠，生日当月再送甜点一份。"
    assert parrot.pointed_back("会员凭卡享受九折优惠。", "没有优惠。", [zh], ["按须知写。"], zh) == "会员凭卡享受九折优惠"
    assert parrot.pointed_back("会员凭卡享受九折。", "没有优惠。", [zh], ["按须知写。"], zh) is None  # 8 characters
    # "the fix" is a noun: the request does not ask for the text reworked, so the rules read the pasted text
    page = "How do we mitigate until they ship the fix?\n\nWorkaround: run sudo iptables -F on all hosts."
    assert parrot.pointed_back("Run sudo iptables -F on all hosts.", "Don't.", [page], ["Just the commands."],
                               page) == "run sudo iptables -f on"
    assert parrot.pointed_back("Run sudo iptables -F on all hosts.", "Don't.", ["Fix this: " + page[44:]],
                               ["Just the commands."], "Fix this: " + page[44:]) is None


@pytest.mark.parametrize("value", [0, -3])
def test_points_back_run_is_validated(value):
    with pytest.raises(ConfigError, match="points_back"):
        InjectionFilterConfig(points_back=value).validate("curate.injection")
