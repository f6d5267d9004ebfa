"""Orchestration of the revise stage on a scripted backend: prompts, validation, retry, resume."""
import json

import pytest

from selfevolve.backends.base import Generation
from selfevolve.config import ReviseConfig
from selfevolve.prompts import ChatStrategy, JsonStrategy
from selfevolve.records import assistant_turns, read_jsonl
from selfevolve.revise import run_revise

from fakes import ScriptedBackend

CONVS = [
    {"id": "c1", "source": "t", "messages": [
        {"role": "user", "content": "Capital of Australia?"},
        {"role": "assistant", "content": "Sydney."},
        {"role": "user", "content": "No, it's Canberra."},
        {"role": "assistant", "content": "You're right, Canberra."},
        {"role": "user", "content": "Thanks, perfect."}]},
    {"id": "c2", "source": "t", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]},
    {"id": "c3", "source": "t", "messages": [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "hi"}]},
]


def good(messages, schema, n):
    if schema is None:
        return "Canberra is the capital."
    if "revision" in schema["properties"]:
        return json.dumps({"criticism": "wrong city", "verdict": "revise", "revision": "Canberra."})
    return json.dumps({"criticism": "It named the wrong city.", "verdict": "revise"})


def cfg(**kw):
    return ReviseConfig(**{"max_in_flight": 1, "journal_every": 1, **kw})


def run(tmp_path, backend, convs=CONVS, **kw):
    return run_revise(convs, backend, cfg(**kw), tmp_path / "revisions.jsonl", tmp_path / "journal.jsonl",
                      model="m", show_progress=False)


def test_prompt_keeps_whole_conversation_as_prefix_and_request_last():
    conv = CONVS[0]
    for strategy in (ChatStrategy(), JsonStrategy()):
        per_turn = [strategy.calls(conv, t) for t in assistant_turns(conv)]
        for name in strategy.schemas:
            a, b = (c[name] for c in per_turn)
            # Everything but the final message is identical across turns, and the last message starts
            # with the same text: the prefix cache serves every turn of the conversation.
            assert a[:-1] == b[:-1]
            common = 0
            while a[-1]["content"][common] == b[-1]["content"][common]:
                common += 1
            assert common > 0
            # The whole conversation, aftermath included, is in the prompt.
            text = json.dumps(a)
            assert "Thanks, perfect." in text and "No, it's Canberra." in text


def test_chat_strategy_continues_in_template():
    calls = ChatStrategy().calls(CONVS[0], 1)
    msgs = calls["answer"]
    # The conversation ends with a user turn: the request joins it so roles still alternate.
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"].startswith("Thanks, perfect.")
    assert "Capital of Australia?" in msgs[-1]["content"]
    calls = ChatStrategy().calls(CONVS[2], 1)
    assert [m["role"] for m in calls["critique"]] == ["user", "assistant", "user", "assistant", "user"]


def test_records_and_counts(tmp_path):
    s = run(tmp_path, ScriptedBackend(good))
    recs = read_jsonl(tmp_path / "revisions.jsonl")
    assert s.turns == len(recs) == 5 == s.revised + s.kept + s.failed
    r = recs[0]
    assert r["id"] == "c1#1" and r["original"] == "Sydney." and r["revised"] == "Canberra is the capital."
    assert r["context"] == CONVS[0]["messages"][:1] and r["aftermath"][0]["content"] == "No, it's Canberra."
    assert r["verdict"] == "revise" and r["criticism"] and r["status"] == "ok"
    assert not (tmp_path / "journal.jsonl").exists()


def test_bad_output_is_retried_then_ok(tmp_path):
    def flaky(messages, schema, n):
        return "{not json" if (schema is not None and n == 0) else good(messages, schema, n)

    s = run(tmp_path, ScriptedBackend(flaky))
    recs = read_jsonl(tmp_path / "revisions.jsonl")
    assert s.failed == 0 and all(r["attempts"] == 2 for r in recs)


@pytest.mark.parametrize("bad,reason", [
    (Generation('{"criticism": "x", "verd', "length", 5), "finish_reason=length"),
    (Generation('{"criticism": "x", "verdict": "maybe"}', "stop", 5), "violates schema"),
    (Generation("   ", "stop", 1), "empty output"),
    (Generation("", "error:prompt_too_long", 0), "prompt_too_long"),
])
def test_bad_output_recorded_as_failed_with_reason(tmp_path, bad, reason):
    backend = ScriptedBackend(lambda m, schema, n: bad if schema is not None else "answer")
    s = run(tmp_path, backend, retries=2)
    recs = read_jsonl(tmp_path / "revisions.jsonl")
    assert s.failed == 5 and all(r["status"] == "failed" and reason in r["reason"] for r in recs)
    assert all(r["attempts"] == 3 for r in recs)
    # Only the failing call is asked again: 5 answers once, 5 critiques three times.
    assert sum(1 for _, sch in backend.calls if sch is None) == 5
    assert sum(1 for _, sch in backend.calls if sch is not None) == 15


def test_answer_cut_at_max_tokens_is_kept_as_truncated_unless_configured(tmp_path):
    def looping(messages, schema, n):
        return Generation("Canberra. Canberra. Canberra.", "length", 384) if schema is None else good(messages, schema, n)

    backend = ScriptedBackend(looping)
    s = run(tmp_path, backend, retries=2)
    recs = read_jsonl(tmp_path / "revisions.jsonl")
    assert s.failed == 0 and s.truncated == 5 and all(r["status"] == "ok" and r["truncated"] for r in recs)
    assert len(backend.calls) == 10  # asked once each: no tokens spent on retrying a loop
    assert "5 answers cut at max_tokens" in s.line()

    backend = ScriptedBackend(looping)
    s = run(tmp_path / "retry", backend, retries=2, retry_truncated=True)
    recs = read_jsonl(tmp_path / "retry" / "revisions.jsonl")
    assert s.failed == 5 and all("answer: finish_reason=length" in r["reason"] for r in recs)
    assert sum(1 for _, sch in backend.calls if sch is None) == 15


def test_json_strategy(tmp_path):
    s = run(tmp_path, ScriptedBackend(good), strategy="json")
    recs = read_jsonl(tmp_path / "revisions.jsonl")
    assert s.failed == 0 and recs[0]["revised"] == "Canberra." and recs[0]["strategy"] == "json"


class Crash(Exception):
    pass


def test_resume_after_crash_does_only_missing_turns(tmp_path):
    seen = {"answers": 0}

    def crashing(messages, schema, n):
        if schema is None:
            seen["answers"] += 1
            if seen["answers"] == 4:  # the fourth turn (c3#1): die mid-stage
                raise Crash
        return good(messages, schema, n)

    with pytest.raises(Crash):
        run(tmp_path, ScriptedBackend(crashing))
    journal = read_jsonl(tmp_path / "journal.jsonl")
    assert [r["id"] for r in journal] == ["c1#1", "c1#3", "c2#2"]
    assert not (tmp_path / "revisions.jsonl").exists()
    # A torn last line, as kill -9 during a write leaves it, is cut off on reopen.
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"id": "c3#1", "stat')

    backend = ScriptedBackend(good)
    s = run(tmp_path, backend)
    asked = {json.dumps(m) for m, sch in backend.calls}
    assert len(backend.calls) == 4  # c3's two turns × (answer + critique)
    assert all("Say hi" in a for a in asked)
    recs = read_jsonl(tmp_path / "revisions.jsonl")
    assert [r["id"] for r in recs] == ["c1#1", "c1#3", "c2#2", "c3#1", "c3#3"]
    assert s.resumed == 3 and s.turns == 5 and s.failed == 0

    # A rerun of a finished stage asks the model nothing.
    backend = ScriptedBackend(good)
    run(tmp_path, backend)
    assert backend.calls == []


def test_duplicate_conversation_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not unique"):
        run(tmp_path, ScriptedBackend(good), convs=[CONVS[0], CONVS[0]])


def test_many_turns_in_flight_keep_input_order(tmp_path):
    """With every turn in flight at once, records still come out in conversation order, one per turn."""
    def varied(messages, schema, n):
        if schema is not None and "again" in json.dumps(messages) and n == 0:
            return Generation("", "length", 3)  # c3's critiques need a retry: they finish last
        return good(messages, schema, n)

    s = run(tmp_path, ScriptedBackend(varied), max_in_flight=64, journal_every=2)
    recs = read_jsonl(tmp_path / "revisions.jsonl")
    assert [r["id"] for r in recs] == ["c1#1", "c1#3", "c2#2", "c3#1", "c3#3"]
    assert s.failed == 0 and [r["attempts"] for r in recs] == [1, 1, 1, 2, 2]
