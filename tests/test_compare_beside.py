"""compare_phases.score_human_beside: with the answers from the served engine (another process, its own cores),
the human texts' perplexity is scored in a thread while the answers are generated, and gives what scoring after
them gives; with an engine in this process, or on the served engine's cores, it is scored after (None here)."""
import threading
from contextlib import ExitStack

from selfevolve import compare_phases
from selfevolve.compare import Side
from selfevolve.compare_phases import Phases, monitors, score_human_beside
from selfevolve.config import load_config

from fakes import ScriptedBackend

HUMAN = [{"prompt": "Say hi.", "text": "hi there friend"}, {"prompt": "Count.", "text": "one two"}]
SIDES = {"a": Side("base", "base", None, None), "b": Side("r1", "round-001", "/run/round-001/adapter", 1)}


class Scorer(ScriptedBackend):
    """transformers + PEFT in the tests' stead: log-probs that depend on the adapter; notes its thread."""

    threads: list[str] = []

    def __init__(self, path, seed=0):
        super().__init__(lambda m, s, n: "")

    def logprobs(self, contexts, completions, adapter=None):
        Scorer.threads.append(threading.current_thread().name)
        return [[-2.0 if adapter else -1.0] * len(c.split()) for c in completions]


def served():
    backend = ScriptedBackend(lambda m, s, n: "an answer")
    backend.name = "served"
    return backend


def test_scored_in_a_thread_beside_the_served_engine_equals_scoring_after(monkeypatch):
    monkeypatch.setattr(compare_phases, "HFBackend", Scorer)
    cfg, Scorer.threads = load_config(None, ["compare.embeddings=false"]), []
    gens = served().chat([[{"role": "user", "content": "q"}]], None)
    sides = {k: (side, gens) for k, side in SIDES.items()}
    after = monitors(cfg, served(), sides, HUMAN, [], Phases(), print)
    assert Scorer.threads == ["MainThread"] * 2
    monkeypatch.setattr(compare_phases, "apart_from_engines", lambda run: True)
    with ExitStack() as stack:
        future = score_human_beside(cfg, None, served(), stack, SIDES, HUMAN, print)
        notes = []
        beside = monitors(cfg, served(), sides, HUMAN, notes, Phases(), print, future)
    assert [t.startswith("perplexity") for t in Scorer.threads[2:]] == [True, True]
    assert beside == after and beside["b"]["perplexity_human"] > beside["a"]["perplexity_human"]
    assert "while the served engine answered" in notes[0]


def test_not_beside_an_engine_in_this_process_on_its_cores_or_without_texts(monkeypatch):
    cfg, apart = load_config(None, []), [True]
    monkeypatch.setattr(compare_phases, "apart_from_engines", lambda run: apart[0])
    with ExitStack() as stack:
        assert score_human_beside(cfg, None, ScriptedBackend(lambda m, s, n: ""), stack, SIDES, HUMAN, print) is None
        assert score_human_beside(cfg, None, served(), stack, SIDES, [], print) is None
        other = load_config(None, ["compare.perplexity_backend=backend"])
        assert score_human_beside(other, None, served(), stack, SIDES, HUMAN, print) is None
        apart[0] = False  # this process computes on the served engine's cores: scoring now would slow it
        assert score_human_beside(cfg, None, served(), stack, SIDES, HUMAN, print) is None
