"""The revise stream's loop stop and the throughput bench's ideal prefix-hit rates (no model)."""
import importlib.util
from pathlib import Path

from selfevolve.backends.base import BatchStream, Generation, Sampling
from selfevolve.config import ReviseConfig
from selfevolve.records import read_jsonl
from selfevolve.revise import run_revise
from selfevolve.revise_schedule import STOP_REPEATS, check_output

from fakes import ScriptedBackend
from test_revise import CONVS, good

ROOT = Path(__file__).resolve().parents[1]


class LoopStopBackend(ScriptedBackend):
    """A scripted backend whose stream, like vLLM's, takes a loop stop; it notes the setting it was given."""

    def stream(self, adapter=None):
        stream = BatchStream(self, adapter)
        stream.stop_repeats = None
        self.streams = getattr(self, "streams", []) + [stream]
        return stream


def run(tmp_path, backend, **kw):
    cfg = ReviseConfig(**{"max_in_flight": 4, "journal_every": 1, **kw})
    return run_revise(CONVS, backend, cfg, tmp_path / "r.jsonl", tmp_path / "j.jsonl", show_progress=False)


def test_loop_stopped_answer_is_kept_truncated_and_critique_is_asked_again(tmp_path):
    def script(messages, schema, n):
        if schema is None:
            return Generation("Canberra. Canberra. Canberra.", "repetition", 12)
        return Generation('{"criticism": "x x x x', "repetition", 12) if n == 0 else good(messages, schema, n)

    backend = LoopStopBackend(script)
    s = run(tmp_path, backend)
    recs = read_jsonl(tmp_path / "r.jsonl")
    assert [st.stop_repeats for st in backend.streams] == [STOP_REPEATS]
    assert s.failed == 0 and s.truncated == 5 and all(r["status"] == "ok" and r["truncated"] for r in recs)
    assert sum(1 for _, sch in backend.calls if sch is None) == 5  # a loop is not asked again
    assert sum(1 for _, sch in backend.calls if sch is not None) == 10  # a cut JSON cannot parse: asked again


def test_check_output_reasons():
    assert check_output(Generation("a loop a loop", "repetition", 9), None) == "finish_reason=repetition"
    assert check_output(Generation("a loop a loop", "repetition", 9), None, keep_truncated=True) is None
    assert check_output(Generation('{"criticism"', "repetition", 9), {"type": "object"}, keep_truncated=True) \
        == "finish_reason=repetition"


def test_vllm_params_carry_the_loop_stop_and_final_only_outputs():
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.core.sched.utils import check_sequence_repetition

    from selfevolve.backends.vllm_backend import VLLMBackend

    params = VLLMBackend._params(None, Sampling(0.2, 0.95, 256), None, STOP_REPEATS)
    assert params.output_kind == RequestOutputKind.FINAL_ONLY
    rd = params.repetition_detection
    assert (rd.min_pattern_size, rd.max_pattern_size, rd.min_count) == STOP_REPEATS
    assert VLLMBackend._params(None, Sampling(), None).repetition_detection is None
    # vLLM's own check with these settings: a 4-token phrase three times back to back stops; twice does not,
    # nor does a 3-token phrase (short repeats such as "| --- | --- |" stay legal).
    phrase = [11, 12, 13, 14]
    assert check_sequence_repetition([1, 2] + phrase * 3, rd)
    assert not check_sequence_repetition([1, 2] + phrase * 2, rd)
    assert not check_sequence_repetition([1, 2] + [11, 12, 13] * 3, rd)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_revise", ROOT / "scripts" / "bench_revise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ideal_hit_rates_count_shared_prefixes_and_whole_blocks():
    ideal = _bench().ideal_hit_rates
    a = list(range(10))
    b = list(range(7)) + [100, 101, 102]  # shares 7 tokens with a
    token, block = ideal([a, b], block=4)
    assert token == 7 / 20  # 13 distinct prefixes in 20 tokens
    assert block == 4 / 20  # b hits one whole block of its 7 shared tokens
    # An identical prompt (a retry) hits every whole block but never its last token.
    token, block = ideal([a, a], block=5)
    assert token == 10 / 20 and block == 5 / 20


def test_the_served_engine_gets_the_loop_stop_too(monkeypatch):
    """Through `selfevolve serve`'s engine (ServedBackend) revise's plain-text requests carry vLLM's
    repetition_detection as the in-process ones do; JSON requests do not (their schema bounds them)."""
    from types import SimpleNamespace

    from selfevolve.backends.base import LoopStopStream
    from selfevolve.backends.served_backend import ServedBackend
    from selfevolve.config import load_config

    backend = ServedBackend("http://127.0.0.1:9", "k", load_config(None).backend)
    sent = []

    def create(**kwargs):
        sent.append(kwargs)
        msg = SimpleNamespace(content="ok")
        return SimpleNamespace(choices=[SimpleNamespace(message=msg, finish_reason="repetition")], usage=None)

    monkeypatch.setattr(backend.client.chat.completions, "create", create)
    stream = backend.stream()
    assert isinstance(stream, LoopStopStream) and stream.stop_repeats is None
    stream.stop_repeats = STOP_REPEATS
    stream.submit("a", [{"role": "user", "content": "hi"}], Sampling(0.2, 0.95, 32))
    stream.submit("b", [{"role": "user", "content": "hi"}], Sampling(0.2, 0.95, 32), {"type": "object"})
    got = dict(stream)
    assert got["a"].finish_reason == "repetition" and check_output(got["a"], None, keep_truncated=True) is None
    plain, js = sorted(sent, key=lambda k: "response_format" in k)
    lo, hi, count = STOP_REPEATS
    assert plain["extra_body"] == {"repetition_detection": {"min_pattern_size": lo, "max_pattern_size": hi,
                                                            "min_count": count}}
    assert "extra_body" not in js
    backend.close()
