"""The grounding check on hand-written cases, and its measured precision/recall on saved real revisions."""
import pytest

from selfevolve.config import PACKAGE_DATA
from selfevolve.grounding import (GroundingConfig, agreement, answer_agrees, carries, check, correction_terms,
                                  numbers, rewordings)
from selfevolve.records import read_jsonl

from conftest import ROOT


def lex(revision, original, correction, question=""):
    return check(revision, original, correction, question=question, embed=False)


# ---------------------------------------------------------------- numbers

def test_number_words_and_separators_normalise():
    vals = [(n.value, n.unit) for n in numbers("seven continents, 1,000 bytes, fifty-six, 150 million km, 165°F")]
    assert vals == [(7, ""), (1000, "byte"), (56, ""), (150e6, "km"), (165, "°f")]


def test_corrected_number_carried_and_rejected_one_not_repeated():
    orig, corr = "An adult human has 212 bones.", "I'm pretty sure it's 206, not 212."
    t = correction_terms(orig, corr, "How many bones does an adult have?")
    assert [n.value for n in t.numbers] == [206] and [n.value for n in t.rejected_numbers] == [212]
    assert lex("An adult human has 206 bones.", orig, corr).ok
    g = lex("An adult human has 212 bones.", orig, corr)
    assert not g.ok and g.reason == "does not carry '206' from the correction"
    g = lex("An adult has 206 bones, or 212 counting the sesamoids.", orig, corr)
    assert not g.ok and g.reason == "repeats rejected '212'" and g.repeated == ["212"]


def test_seven_matches_7_both_ways():
    orig, corr = "There are 6 continents.", "The usual count is seven continents."
    assert lex("There are 7 continents.", orig, corr).ok
    assert lex("There are seven continents on Earth.", orig, "It's 7, not 6.").ok
    assert not lex("There are 6 continents.", orig, corr).ok


def test_replacement_without_negation_rejects_same_unit_only():
    orig = "Chicken is safe at 145°F (63°C); let it rest for three minutes."
    corr = "That's the number for pork. For poultry the USDA says 165°F."
    assert lex("Cook chicken to 165°F (74°C) and rest it for three minutes.", orig, corr).ok
    g = lex("Chicken needs 165°F; some say 145°F is enough.", orig, corr)
    assert not g.ok and g.repeated == ["145°F"]


def test_same_value_new_unit_needs_the_unit():
    orig = "Sunlight reaches Earth in about 8 seconds, since light travels 300,000 km per second."
    corr = "Isn't it about 8 minutes? The Sun is around 150 million km away."
    assert lex("Sunlight takes about 8 minutes to reach Earth (300,000 km per second).", orig, corr).ok
    g = lex("Sunlight reaches Earth in 8 seconds.", orig, corr)
    assert not g.ok


def test_hedged_number_matches_within_tolerance():
    orig = "The Danube is the longest river in Europe."
    corr = "I think the Volga is longer, around 3,500 km."
    assert lex("The Volga is Europe's longest river, at about 3,530 km.", orig, corr).ok
    assert not lex("The Volga is Europe's longest river, at about 4,200 km.", orig, corr).ok


# ---------------------------------------------------------------- names and negations

def test_names_replaced_and_negated():
    orig, corr = "The capital of Australia is Sydney.", "That's wrong, the capital is Canberra."
    q = "What is the capital of Australia?"
    t = correction_terms(orig, corr, q)
    assert t.names == ["Canberra"] and t.rejected == ["Sydney"]
    assert lex("The capital of Australia is Canberra.", orig, corr, q).ok
    g = lex("The capital of Australia is Canberra, not Sydney.", orig, corr, q)
    assert not g.ok and g.repeated == ["Sydney"]
    assert not lex("Australia's capital is Sydney.", orig, corr, q).ok


def test_negated_phrases_instead_of_and_is_wrong():
    orig = "Use a hammer or a wrench for that."
    assert correction_terms(orig, "Use pliers instead of a hammer.").rejected == ["hammer"]
    assert correction_terms(orig, "The wrench is wrong here; pliers work.").rejected == ["wrench"]
    # A negated name that ends the text is a name, not a sentence-initial common word (a bug the bench found).
    t = correction_terms("The city is Paris.", "The city is Lyon, not Paris")
    assert t.rejected == ["Paris"] and not lex("It is Lyon, not Paris.", "The city is Paris.", "It's Lyon, not Paris").ok
    # "Isn't it X?" asserts X: nothing of the original is negated by it.
    t = correction_terms("Hokkaido is the largest island.", "Isn't Honshu the biggest? Hokkaido is second.")
    assert t.names == ["Honshu"] and t.rejected == []


def test_words_of_the_question_are_topic_not_news():
    t = correction_terms("Python's list.sort() returns the list.", "Python sort returns None.",
                         "Does Python's sort return the list?")
    assert "Python" not in t.names


def test_a_revision_that_says_nothing_new_fails():
    orig, corr = "World War II ended in 1944.", "It ended in 1945."
    g = lex("World War II ended in the 1940s after many years of fighting.", orig, corr)
    assert not g.ok and g.missing == ["1945"] and g.carried == []


# ---------------------------------------------------------------- error reports

PRINT_ORIG = 'Sum the list and print it:\n```python\nprices = [4, 10, 6]\ntotal = sum(prices)\nprint("Total: " + total)\n```'
PRINT_ERR = 'It crashes with: TypeError: can only concatenate str (not "int") to str'


def test_error_report_needs_changed_code():
    t = correction_terms(PRINT_ORIG, PRINT_ERR)
    assert t.error is not None and t.numbers == [] and t.names == []
    fixed = '```python\nprices = [4, 10, 6]\ntotal = sum(prices)\nprint(f"Total: {total}")\n```'
    assert lex(fixed, PRINT_ORIG, PRINT_ERR).ok
    g = lex(PRINT_ORIG, PRINT_ORIG, PRINT_ERR)
    assert not g.ok and g.reason.startswith("repeats the failing code")
    g = lex("An int cannot be added to a string; convert it first.", PRINT_ORIG, PRINT_ERR)
    assert not g.ok and g.reason == "has no code, so it cannot fix the reported error"


def test_error_points_at_the_named_line():
    orig = 'Use:\n```javascript\nconst el = 1;\ndocument.getElementByID("status").textContent = "Done";\n```'
    err = "Console says: TypeError: document.getElementByID is not a function"
    assert correction_terms(orig, err).failing == ['document.getElementByID("status").textContent = "Done";']
    # Changing an unrelated line does not fix it; changing the named one does.
    assert not lex('```javascript\nconst el = 2;\ndocument.getElementByID("status").textContent = "Done";\n```', orig, err).ok
    assert lex('```javascript\ndocument.getElementById("status").textContent = "Done";\n```', orig, err).ok


def test_failing_line_inside_a_longer_line_is_not_repeated():
    orig = "```python\nimport datetime\nprint(datetime.now())\n```"
    err = "AttributeError: module 'datetime' has no attribute 'now'"
    assert lex("```python\nfrom datetime import datetime\nprint(datetime.now())\n```", orig, err).ok
    assert not lex("```python\nimport datetime\nprint(datetime.now())\n```", orig, err).ok


def test_inline_span_and_shell_error():
    orig = "```bash\ncp photos backup/\n```"
    err = "It says: cp: -r not specified; omitting directory 'photos'"
    assert correction_terms(orig, err).error is not None
    assert lex("Copy recursively:\n```bash\ncp -r photos backup/\n```", orig, err).ok
    orig2, err2 = "Use `arr.contains(3)`, which returns true or false.", "TypeError: arr.contains is not a function"
    assert lex("Use `arr.includes(3)` instead.", orig2, err2).ok
    assert not lex("Call `arr.contains(3)` on the array.", orig2, err2).ok


# ---------------------------------------------------------------- similarity, carries, agreement

def test_similarity_floor_drops_off_topic_text():
    orig, corr = "The capital of Canada is Toronto.", "Actually, the capital is Ottawa."
    q = "What is the capital of Canada?"
    on = check("Ottawa is the capital of Canada.", orig, corr, question=q, min_similarity=0.4)
    off = check("Ottawa rye whisky goes well with ginger ale and lime over ice.", orig, corr, question=q,
                min_similarity=0.4)
    assert on.ok and on.similarity > 0.4
    assert not off.ok and off.reason.startswith("off the turn's topic") and off.similarity < 0.4


def test_carries_reuses_the_terms():
    t = correction_terms("There are 12 ounces in a pound.", "Are you sure? I'm pretty sure it's 16 ounces.")
    assert carries("A pound has 16 ounces.", t)
    assert not carries("A pound has 12 ounces.", t)
    assert not carries("A pound has 16 ounces, not 12 ounces.", t)


def test_carries_is_stricter_than_the_revision_check():
    # A fresh answer must carry every new name: "Mr Lee" alone is not the manager the user named.
    orig, corr = "The manager is John Smith.", "No, the managers are Ana Lopez and Ben Lee now."
    q = "Who manages the office?"
    t = correction_terms(orig, corr, q)
    assert lex("The manager is Ben Lee.", orig, corr, q).ok          # enough for a revision that follows the user
    assert not carries("The manager is Ben Lee.", t)                # not enough for a lesson asked fresh
    assert carries("Ana Lopez and Ben Lee manage it.", t)
    # Words only: one shared word ("highest") is no evidence; two are.
    orig, corr = "SELECT salary FROM employees ORDER BY salary DESC LIMIT 3;", \
        "Several people share a salary. I meant the 3 highest distinct amounts."
    q = "What's the SQL to get the top 3 salaries?"
    t = correction_terms(orig, corr, q)
    assert lex("SELECT MAX(salary) AS highest FROM employees;", orig, corr, q).ok
    assert not carries("SELECT MAX(salary) AS highest FROM employees;", t)
    assert carries("SELECT DISTINCT salary AS highest FROM employees ORDER BY 1 DESC LIMIT 3;", t)


def test_answer_agrees_on_key_terms():
    ref = "There are 168 hours in a week."
    assert answer_agrees("A week has 168 hours (7 x 24).", ref, embed=False)
    assert not answer_agrees("A week has 148 hours.", ref, embed=False)
    ok, score = agreement("Run `git reset --soft HEAD~1` to undo it.", "Run `git reset --soft HEAD~1`.", embed=False)
    assert ok and score == 1.0
    assert answer_agrees("A week has 168 hours in it.", ref)
    assert not answer_agrees("168 is the number of the bus to the airport.", ref,
                             cfg=GroundingConfig(agree_min_similarity=0.45))


# ---------------------------------------------------------------- rewordings

@pytest.mark.parametrize("q", ["How many bones does an adult human have?", "What is the capital of Canada?",
                               "Write a Python function that counts words in a sentence."])
def test_rewordings_are_deterministic_different_and_keep_content(q):
    a, b = rewordings(q, n=3), rewordings(q, n=3)
    assert a == b and len(a) == 3 and len(set(a)) == 3
    content = {w.strip("?.").lower() for w in q.split() if len(w) > 3} - {"what", "does", "many", "write"}  # question words may swap
    for r in a:
        assert r != q
        low = r.lower()
        assert all(w in low for w in content), (r, content)


# ---------------------------------------------------------------- the measured figures

def test_precision_recall_on_saved_real_revisions_stay_above_bars():
    """Recomputed from the saved real revisions (scripts/bench_grounding.py --from-file): the bars sit a bit
    below what was measured (bench_out/grounding.md) so a change that hurts the check fails here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_grounding", ROOT / "scripts/bench_grounding.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    items = {it["id"]: it for it in read_jsonl(PACKAGE_DATA / "reviser_bench.jsonl") if it["kind"] == "correction"}
    rows = read_jsonl(PACKAGE_DATA / "grounding_bench_revisions.jsonl")
    assert len(rows) >= 100 and {r["strategy"] for r in rows} == {"chat", "json"}
    for r in rows:  # the saved labels are the bench's rule
        if r["revised"] is not None:
            assert r["truth"] == bench.truly_right(items[r["id"]], r["revised"])
    res = bench.measure(items, rows, GroundingConfig(), embed=False)
    assert res["lexical"]["precision"]["value"] >= PRECISION_BAR
    assert res["lexical"]["recall"]["value"] >= RECALL_BAR


# Measured (150 revisions, lexical): precision 75/75 = 1.000, recall 75/81 = 0.926.
PRECISION_BAR = 0.95
RECALL_BAR = 0.88


def test_answer_agrees_ignores_terms_the_question_already_holds():
    ref, q = "12 times 12 is 144.", "What is 12 times 12?"
    assert not answer_agrees("12 times 12 is equal to 120.", ref, question=q, embed=False)  # 12 is the topic
    assert answer_agrees("It's 144.", ref, question=q, embed=False)
