"""compare_phases.AnswerCache: a comparison rerun after a crash reuses the answers it already generated, only for
the same messages, sampling, schema and adapter content; errors are never kept; a finished comparison leaves no
cache behind (tests/test_crash_integration.py kills compare for real)."""
from selfevolve.backends.base import Generation, Sampling
from selfevolve.compare_phases import AnswerCache

from adapter_fixtures import tiny_adapter
from fakes import ScriptedBackend

BATCH = [[{"role": "user", "content": "What is 2+2?"}], [{"role": "user", "content": "Name a colour."}]]
GREEDY = Sampling(0.0, 1.0, 16)


def test_a_rerun_reuses_answers_and_a_changed_input_does_not(tmp_path):
    first = ScriptedBackend(lambda m, s, n: f"answer to {m[-1]['content']}")
    adapter = tiny_adapter(tmp_path / "adapter")
    gens = AnswerCache(first, tmp_path / ".answers").chat(BATCH, GREEDY, adapter=str(adapter))
    assert len(first.calls) == 2

    again = ScriptedBackend(lambda m, s, n: "something else")  # the process after a crash: a new backend
    cache = AnswerCache(again, tmp_path / ".answers")
    assert cache.chat(BATCH, GREEDY, adapter=str(adapter)) == gens and again.calls == []
    cache.chat(BATCH, Sampling(0.7, 0.95, 16), adapter=str(adapter))  # other sampling
    cache.chat(BATCH[:1], GREEDY, adapter=str(adapter))  # other messages
    cache.chat(BATCH, GREEDY, adapter=None)  # the base model
    assert len(again.calls) == 2 + 1 + 2
    tiny_adapter(adapter, r=8)  # the same folder, other weights (a retrained round)
    cache.chat(BATCH, GREEDY, adapter=str(adapter))
    assert len(again.calls) == 7


def test_errors_are_not_kept_and_other_calls_pass_through(tmp_path):
    flaky = ScriptedBackend(lambda m, s, n: Generation("", "error:Timeout") if n == 0 else "ok")
    cache = AnswerCache(flaky, tmp_path / ".answers")
    assert [g.finish_reason for g in cache.chat(BATCH, GREEDY)] == ["error:Timeout"] * 2
    assert [g.text for g in cache.chat(BATCH, GREEDY)] == ["ok", "ok"]  # asked again, not replayed
    assert cache.logprobs([BATCH[0]], ["four"]) == [[-1.0]] and cache.name == "scripted"
