"""The ``repetition`` step: an answer that loops does not train, on either route; code and tables are no loop."""
import pytest

from selfevolve.config import Config, ConfigError, load_config
from selfevolve.filters import build_filters
from selfevolve.filters.repetition import RepetitionFilter, prose, repetition

from conftest import ROOT

# the shape of the 135M model's loops in the bench: the request echoed, then one sentence until the token limit
LOOP = ("Maak er een korte samenvatting van voor de groepsapp. Zet er wel in dat je ook kunt stemmen met een foto "
        "van je paspoort op je telefoon.\n\n" + "Dit is een korte samenvatting van voor de groepsapp.\n\n" * 6)
ANSWER = ("No. A photo or scan on your phone is not valid ID at the polling station: bring your passport, identity "
          "card or driving licence, at most five years expired. Without one, you can authorise someone to vote for "
          "you with a copy of your ID.")
TABLE = ("Here is the rota:\n\n| Day | AM | PM |\n|---|---|---|\n" + "| Monday | Bob (office) | Martha (lab) |\n" * 8
         + "\nSwap any two shifts by telling the office.")
CODE = "Pad the array like this:\n```python\n" + "arr = np.append(arr, [0, 0, 0, 0])\n" * 10 + "```\nThen save it."


def record(answer: str, route: str) -> dict:
    rec = {"id": "c#1", "conversation_id": "c", "context": [{"role": "user", "content": "Can I vote with a photo?"}],
           "original": "Yes.", "revised": answer, "status": "ok"}
    return {**rec, "use": "original", "original": answer} if route == "confirmed" else rec


@pytest.mark.parametrize("route", ["corrected", "confirmed"])
def test_an_answer_that_loops_does_not_train_on_either_route(route):
    loop, fine = RepetitionFilter(Config().curate.repetition).apply([record(LOOP, route), record(ANSWER, route)],
                                                                    None)
    assert not loop.keep and loop.reason.startswith("loops (repeated 3-gram share") and loop.score > 0.3
    assert fine.keep and fine.score == 0


def test_code_blocks_and_table_rows_are_not_a_loop():
    step = RepetitionFilter(Config().curate.repetition)
    assert [d.keep for d in step.apply([record(TABLE, "corrected"), record(CODE, "confirmed")], None)] == [True, True]
    assert "Monday" not in prose(TABLE) and "np.append" not in prose(CODE) and "Then save it." in prose(CODE)
    # the same lines as prose are the loop they look like
    assert repetition(TABLE.replace("|", " "), 3) > 0.3 and repetition(CODE.replace("```", ""), 3) > 0.3


def test_an_unclosed_code_block_is_still_code():
    assert repetition("Try:\n```\n" + "x = x + 1\n" * 20, 3) == 0


def test_it_runs_by_default_before_the_injection_filter_and_can_be_turned_off():
    order = [f.name for f in build_filters(load_config(ROOT / "configs/default.yaml", []))]
    assert order.index("structural") < order.index("repetition") < order.index("injection")
    off = load_config(ROOT / "configs/default.yaml", ["curate.repetition.enabled=false"])
    assert "repetition" not in [f.name for f in build_filters(off)]


@pytest.mark.parametrize("override, message", [
    ("curate.repetition.max_repetition=1.5", "curate.repetition.max_repetition: must be"),
    ("curate.repetition.ngram=0", "curate.repetition.ngram: must be positive"),
])
def test_out_of_range_settings_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs/default.yaml", [override])
