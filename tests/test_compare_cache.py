"""compare_phases.AnswerCache: greedy answers are kept in the run's store and read by later comparisons (the next
round does not generate the live side again), per item, only for the same model, messages, sampling, schema and
adapter content; sampled answers only within one comparison (a rerun after a crash); errors are never kept; a
finished comparison leaves no .answers/ behind (tests/test_crash_integration.py kills compare for real)."""
from pathlib import Path

from selfevolve.backends.base import Generation, Sampling
from selfevolve.compare_phases import AnswerCache, model_identity
from selfevolve.config import load_config
from selfevolve.layout import EvalLayout, RunLayout
from selfevolve.records import read_jsonl

from adapter_fixtures import tiny_adapter
from fakes import ScriptedBackend

BATCH = [[{"role": "user", "content": "What is 2+2?"}], [{"role": "user", "content": "Name a colour."}]]
GREEDY = Sampling(0.0, 1.0, 16)
SAMPLED = Sampling(0.7, 0.95, 16)
MODEL = ["local", "/models/m", []]


def test_a_rerun_reuses_answers_and_a_changed_input_does_not(tmp_path):
    first = ScriptedBackend(lambda m, s, n: f"answer to {m[-1]['content']}")
    adapter = tiny_adapter(tmp_path / "adapter")
    gens = AnswerCache(first, tmp_path / ".answers", model=MODEL).chat(BATCH, GREEDY, adapter=str(adapter))
    assert len(first.calls) == 2

    again = ScriptedBackend(lambda m, s, n: "something else")  # the process after a crash: a new backend
    cache = AnswerCache(again, tmp_path / ".answers", model=MODEL)
    assert cache.chat(BATCH, GREEDY, adapter=str(adapter)) == gens and again.calls == []
    cache.chat(BATCH, SAMPLED, adapter=str(adapter))  # other sampling
    cache.chat(BATCH, GREEDY, adapter=None)  # the base model
    assert len(again.calls) == 2 + 2
    tiny_adapter(adapter, r=8)  # the same folder, other weights (a retrained round)
    cache.chat(BATCH, GREEDY, adapter=str(adapter))
    assert len(again.calls) == 6
    AnswerCache(again, tmp_path / ".answers", model=["local", "/models/other", []]).chat(BATCH, GREEDY)
    assert len(again.calls) == 8  # another model: nothing found


def test_greedy_answers_outlive_the_comparison_and_only_misses_are_generated(tmp_path):
    store = tmp_path / "run" / "answers"
    one = ScriptedBackend(lambda m, s, n: f"live says {m[-1]['content']}")
    kept = AnswerCache(one, tmp_path / "round-001" / ".answers", store, MODEL).chat(BATCH[:1], GREEDY)
    # the next round's comparison: its own folder, the run's store; one prompt known, one new
    two = ScriptedBackend(lambda m, s, n: "generated now")
    gens = AnswerCache(two, tmp_path / "round-002" / ".answers", store, MODEL).chat(BATCH, GREEDY)
    assert [g.text for g in gens] == [kept[0].text, "generated now"]
    assert [c[0] for c in two.calls] == [BATCH[1]]
    assert not (tmp_path / "round-001" / ".answers").exists()  # nothing sampled: the comparison's folder unused


def test_sampled_answers_stay_with_their_comparison_and_repeats_stay_distinct(tmp_path):
    store = tmp_path / "answers"
    sampler = ScriptedBackend(lambda m, s, n: f"sample {n}")
    twice = [BATCH[0], BATCH[0]]
    gens = AnswerCache(sampler, tmp_path / "c1", store, MODEL).chat(twice, SAMPLED)
    assert [g.text for g in gens] == ["sample 0", "sample 1"] and not store.exists()
    rerun = ScriptedBackend(lambda m, s, n: "new")
    assert AnswerCache(rerun, tmp_path / "c1", store, MODEL).chat(twice, SAMPLED) == gens and rerun.calls == []
    AnswerCache(rerun, tmp_path / "c2", store, MODEL).chat(twice, SAMPLED)  # another comparison samples afresh
    assert len(rerun.calls) == 2


def test_errors_are_not_kept_and_other_calls_pass_through(tmp_path):
    flaky = ScriptedBackend(lambda m, s, n: Generation("", "error:Timeout") if n == 0 else "ok")
    cache = AnswerCache(flaky, tmp_path / ".answers")
    assert [g.finish_reason for g in cache.chat(BATCH, GREEDY)] == ["error:Timeout"] * 2
    assert [g.text for g in cache.chat(BATCH, GREEDY)] == ["ok", "ok"]  # asked again, not replayed
    assert cache.logprobs([BATCH[0]], ["four"]) == [[-1.0]] and cache.name == "scripted"


def test_model_identity_follows_the_model_files(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = load_config(None, [f"model.path={folder}", "model.prepare_from=none"])
    before = model_identity(cfg)
    (folder / "model.safetensors").write_bytes(b"weights")
    assert model_identity(cfg) != before
    other = load_config(None, ["backend.kind=openai", "backend.base_url=http://127.0.0.1:9/v1"])
    assert model_identity(other)[:2] == ["openai", "http://127.0.0.1:9/v1"]
    assert RunLayout.of(tmp_path, "r").answers == tmp_path / "r" / "answers"


def test_warm_asks_the_live_side_what_compare_will_ask_it(tmp_path, monkeypatch):
    """compare.warm beside train: afterwards the comparison generates only the candidate's answers."""
    from selfevolve import compare as compare_mod
    from selfevolve.manifest import record_stage
    from selfevolve.stage import ModelPool, StageContext

    cfg = load_config(None, [f"run.root={tmp_path}", "compare.max_prompts=4", "compare.heldout=",
                             "compare.probes=false", "compare.human_texts=", "compare.embeddings=false"])
    run = RunLayout.of(tmp_path, cfg.run.name)
    rnd = run.round(1)
    ctx = StageContext(cfg, run, rnd, ModelPool(cfg), show_progress=False, log=print)
    live = ScriptedBackend(lambda m, s, n: f"live: {m[-1]['content'][:20]}")
    monkeypatch.setattr(compare_mod, "find_served", lambda cfg: live)
    assert compare_mod.warm(ctx) == 0 and live.calls == []  # curate kept nothing new: no candidate to compare
    record_stage(rnd.manifest, "curate", inputs=[], outputs=[], counts={"sft": 3}, started=0.0)
    assert compare_mod.warm(ctx) == 4 and len(live.calls) == 4  # meanwhile train writes the adapter:
    tiny_adapter(rnd.adapter)
    both = ScriptedBackend(lambda m, s, n: "an answer")
    summary = compare_mod.compare(cfg, "base", "r1", run=run, backend=both)
    assert len(both.calls) == 4 and summary["prompts"]["n"] == 4  # the candidate's only
    generations = read_jsonl(EvalLayout(Path(summary["dir"])).generations)
    assert [g["a"] for g in generations] == [f"live: {g['messages'][-1]['content'][:20]}" for g in generations]
