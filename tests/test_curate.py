"""The curate stage end to end on a scripted backend: counts, datasets, accumulation, card, CLI, statistics."""
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from selfevolve.config import Config
from selfevolve.curate import accumulate, curate_round, save_dataset
from selfevolve.judge import SYSTEM as JUDGE_SYSTEM
from selfevolve.layout import RunLayout
from selfevolve.manifest import load as load_manifest
from selfevolve.records import read_jsonl, write_jsonl
from selfevolve.stats import win_rate, wilson

from fakes import ScriptedBackend

LOOP = "the cat sat on the mat " * 12


def rec(cid, question, original, revised, **kw):
    base = {"id": f"{cid}#1", "conversation_id": cid, "turn": 1, "strategy": "chat", "model": "m",
            "context": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
            "original": original, "aftermath": [{"role": "user", "content": "That is not right."}],
            "status": "ok", "criticism": "wrong", "verdict": "revise", "revised": revised,
            "attempts": 1, "output_tokens": 5}
    return {**base, **kw}


ROUND1 = [
    rec("good1", "What is the capital of Australia?", "Sydney.", "Canberra is the capital of Australia."),
    rec("good2", "How many legs does a spider have?", "Six.", "A spider has eight legs."),
    rec("failed", "What is 2+2?", "5", "", status="failed", reason="critique: empty output"),
    rec("kept", "Say hi.", "Hi!", "Hi!", verdict="keep"),
    rec("leak", "Boiling point of water?", "50 C.", "You're right, water boils at 100 C at sea level."),
    rec("dup", "What is the capital of Australia?", "Perth.", "Canberra is the capital of Australia."),
    rec("loop", "Tell me about cats.", "Cats are dogs.", LOOP),
    rec("worse", "Largest planet?", "Jupiter.", "WORSE: Saturn is the largest planet."),
]


def script(messages, schema, n):
    """One fake model for every filter: the judge prefers any revision but one marked WORSE; resampled
    revisions agree with the record (the question is found in the request)."""
    if messages[0]["content"] == JUDGE_SYSTEM:
        text = messages[-1]["content"]
        a = json.loads(text.split("[Reply A]\n", 1)[1].split("\n[End of reply A]")[0])
        originals = {r["original"] for r in ROUND1 + ROUND2}
        a_is_original = a in originals
        if "WORSE" in text:
            return json.dumps({"reason": "r", "winner": "A" if a_is_original else "B"})
        return json.dumps({"reason": "r", "winner": "B" if a_is_original else "A"})
    if schema is None:  # the chat strategy's answer call
        for r in ROUND1 + ROUND2:
            if r["context"][-1]["content"] in messages[-1]["content"]:
                return r["revised"]
        return "no idea"
    return json.dumps({"criticism": "It was wrong.", "verdict": "revise"})


ROUND2 = [
    rec("good1", "What is the capital of Australia?", "Sydney.", "Canberra is the capital of Australia."),  # same id
    rec("new1", "What colour is the sky?", "Green.", "The sky looks blue on a clear day."),
]


def judged() -> Config:
    """The filter chain before the user became the judge (issue 12): every revision through structural (with the
    model's own verdict), leakage, diversity, perplexity, the pairwise judge and self-consistency. These tests
    are about the curate stage's mechanics, which that chain exercises end to end."""
    cfg = Config()
    cfg.curate.order = ["structural", "leakage", "diversity", "perplexity", "judge", "self_consistency"]
    cfg.curate.structural.drop_verdict_keep = True
    cfg.curate.judge.enabled = cfg.curate.self_consistency.enabled = True
    return cfg


def run_round(tmp_path, n, records, cfg=None, **kw):
    run = RunLayout(tmp_path / "run")
    rnd = run.round(n)
    write_jsonl(rnd.revisions, records)
    backend = ScriptedBackend(script)
    return curate_round(cfg or judged(), rnd, run, backend=backend, show_progress=False, **kw), rnd


def test_round_counts_reasons_and_outputs(tmp_path):
    s, rnd = run_round(tmp_path, 1, ROUND1)
    kept, rejected = read_jsonl(rnd.curated), read_jsonl(rnd.rejected)
    assert s.read == len(ROUND1) == s.kept + s.dropped == len(kept) + len(rejected)
    assert {r["id"] for r in kept} == {"good1#1", "good2#1"}
    by_id = {r["id"]: r for r in rejected}
    assert {k: by_id[f"{k}#1"]["filter"] for k in ("failed", "kept", "leak", "dup", "loop", "worse")} == {
        "failed": "structural", "kept": "structural", "leak": "leakage", "dup": "diversity",
        "loop": "perplexity", "worse": "judge"}
    assert all({"filter", "reason", "score"} <= set(r) for r in rejected)
    assert by_id["dup#1"]["reason"] == "near-duplicate of good1#1"
    assert [(name, dropped) for name, _, dropped in s.funnel] == [
        ("structural", 2), ("leakage", 1), ("diversity", 1), ("perplexity", 1), ("judge", 1), ("self_consistency", 0)]
    # Scores of every filter that measured something are on the kept records.
    assert set(kept[0]["scores"]) == {"perplexity", "self_consistency", "judge"}
    assert s.win["n"] == 3 and s.win["rate"] == pytest.approx(2 / 3)

    sft, dpo = read_jsonl(rnd.sft), read_jsonl(rnd.dpo)
    assert sft[0] == {"id": "good1#1", "round": 1, "prompt": ROUND1[0]["context"],
                      "completion": [{"role": "assistant", "content": "Canberra is the capital of Australia."}]}
    assert dpo[0]["chosen"] == sft[0]["completion"] and dpo[0]["rejected"] == [{"role": "assistant", "content": "Sydney."}]
    assert read_jsonl(rnd.train_sft) == sft and read_jsonl(rnd.train_dpo) == dpo

    card = rnd.card.read_text()
    assert "read 8 = kept 2 + dropped 6" in card and "Wilson" in card
    for png in (rnd.lengths_plot, rnd.filters_plot):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    entry = load_manifest(rnd.manifest)["stages"]["curate"]
    assert entry["status"] == "complete" and entry["counts"]["read"] == 8 and entry["counts"]["kept"] == 2
    assert entry["counts"]["dropped_per_filter"]["judge"] == 1 and "sft.jsonl" in entry["outputs"]


def test_datasets_load_with_the_columns_trl_reads(tmp_path):
    from datasets import load_from_disk
    from trl.data_utils import is_conversational

    _, rnd = run_round(tmp_path, 1, ROUND1)
    for name, columns in (("sft", {"prompt", "completion"}), ("dpo", {"prompt", "chosen", "rejected"}),
                          ("train_sft", {"prompt", "completion"}), ("train_dpo", {"prompt", "chosen", "rejected"})):
        ds = load_from_disk(str(rnd.dataset(name)))
        assert set(ds.column_names) == columns | {"id", "round"} and len(ds) == 2
        assert is_conversational(ds[0])
        assert ds[0]["prompt"] == ROUND1[0]["context"]
    assert not list(rnd.dataset_dir.glob(".*"))  # no temporary folders left behind


def test_empty_dataset_still_has_columns(tmp_path):
    from datasets import load_from_disk

    save_dataset([], "dpo", tmp_path / "dpo")
    ds = load_from_disk(str(tmp_path / "dpo"))
    assert len(ds) == 0 and set(ds.column_names) == {"id", "round", "prompt", "chosen", "rejected"}


def test_accumulation_across_two_rounds_without_duplicates(tmp_path):
    run_round(tmp_path, 1, ROUND1)
    cfg = judged()
    cfg.curate.diversity.enabled = False  # let round 2's repeat of good1 reach the datasets: accumulation must dedup
    s, rnd2 = run_round(tmp_path, 2, ROUND2, cfg)
    assert [r["id"] for r in read_jsonl(rnd2.sft)] == ["good1#1", "new1#1"]
    train = read_jsonl(rnd2.train_sft)
    # good1#1 again in round 2 (its conversation went on): the newer record replaces round 1's
    assert [(r["id"], r["round"]) for r in train] == [("good2#1", 1), ("good1#1", 2), ("new1#1", 2)]
    assert [r["id"] for r in read_jsonl(rnd2.train_dpo)] == ["good2#1", "good1#1", "new1#1"]
    assert s.sizes == {"sft": 2, "dpo": 2, "train_sft": 3, "train_dpo": 3}
    # A rerun of round 2 gives the same training set (round 2's own files are not "earlier").
    run_round(tmp_path, 2, ROUND2, cfg)
    assert read_jsonl(rnd2.train_sft) == train


def test_diversity_drops_what_an_earlier_round_kept(tmp_path):
    run_round(tmp_path, 1, ROUND1)
    # another chat asking the same and answered the same; good1#1 itself again is not its own duplicate
    copy = rec("copy1", "What is the capital of Australia?", "Sydney.", "Canberra is the capital of Australia.")
    s, rnd2 = run_round(tmp_path, 2, [ROUND2[1], copy])
    (dup,) = read_jsonl(rnd2.rejected)
    assert dup["id"] == "copy1#1"
    assert dup["filter"] == "diversity" and dup["reason"] == "near-duplicate of round-001/good1#1"
    assert len(read_jsonl(rnd2.train_sft)) == 3
    s, rnd2 = run_round(tmp_path, 2, ROUND2)
    assert read_jsonl(rnd2.rejected) == [] and [r["id"] for r in read_jsonl(rnd2.sft)] == ["good1#1", "new1#1"]


def test_accumulate_dedups_by_id_and_by_content():
    a = {"id": "x#1", "round": 1, "prompt": [{"role": "user", "content": "q"}],
         "completion": [{"role": "assistant", "content": "a"}]}
    b = {**a, "id": "z#1", "completion": [{"role": "assistant", "content": "b"}]}
    same_content = {**a, "id": "y#1", "round": 2}
    # x#1 again in round 2: its conversation went on, the newer revision (more hindsight) replaces it
    same_id = {**a, "round": 2, "completion": [{"role": "assistant", "content": "other"}]}
    assert accumulate([[a, b], [same_id]], "sft") == [b, same_id]
    assert accumulate([[a, b], [same_content]], "sft") == [b, same_content]
    assert accumulate([[a, b], [a]], "sft") == [b, a]  # the same record twice is kept once


def test_failed_records_need_the_structural_filter(tmp_path):
    cfg = judged()
    cfg.curate.order = ["leakage"]
    with pytest.raises(ValueError, match="structural"):
        run_round(tmp_path, 1, ROUND1, cfg)


def test_cli_curate_prints_counts(tmp_path, monkeypatch):
    from selfevolve.cli import app

    run = RunLayout(tmp_path / "runs" / "t")
    write_jsonl(run.round(1).revisions, ROUND1)
    monkeypatch.chdir(tmp_path)  # configs/default.yaml is then found in the project root
    result = CliRunner().invoke(app, ["curate", "--set", f"run.root={tmp_path / 'runs'}", "--set", "run.name=t",
                                      "--set", "curate.order=[structural, leakage, diversity]", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "read 8 = kept 4 + dropped 4" in result.output
    assert "structural" in result.output and "diversity" in result.output
    assert "Saving the dataset" not in result.output
    assert len(read_jsonl(run.round(1).train_sft)) == 4


# ---------------------------------------------------------------- statistics

def test_win_rate_ci_of_a_judge_that_always_prefers_revised_excludes_half():
    w = win_rate([1.0] * 20)
    assert w["rate"] == 1.0 and w["low"] > 0.5 and w["high"] == 1.0


def test_wilson_matches_scipy_and_ties_count_half():
    from scipy.stats import binomtest

    for k, n in ((0, 10), (7, 10), (20, 20), (13, 40)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high))
    w = win_rate([1.0, 0.0, 0.5, 0.5])
    assert w["rate"] == 0.5 and w["low"] < 0.5 < w["high"]
    assert win_rate([]) is None


@contextmanager
def models_server(ids):
    """A real HTTP server on 127.0.0.1 that answers GET /v1/models (all a judge is asked before its first request)."""
    class Models(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": i, "object": "model", "created": 0,
                                                           "owned_by": "test"} for i in ids]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_judge_that_cannot_be_asked_is_a_clear_error_before_any_record(tmp_path):
    """An unreachable judge, or one that does not serve the configured model, stops curate with the key to fix
    (every verdict was unreadable, and every record dropped for it)."""
    from selfevolve.curate import _backends
    from selfevolve.errors import ConfigError
    from selfevolve.filters import build_filters
    from selfevolve.serve import free_port

    cfg = Config()
    cfg.curate.order = ["structural", "judge"]
    cfg.judge.kind, cfg.judge.backend.base_url = "openai", f"http://127.0.0.1:{free_port()}/v1"
    cfg.judge.backend.request_timeout_s = 5
    with pytest.raises(ConfigError, match=r"judge.backend.base_url: http://127.0.0.1:\d+/v1 does not answer"):
        with _backends(cfg, build_filters(cfg)):
            pass
    with models_server(["small-judge"]) as url:
        cfg.judge.backend.base_url, cfg.judge.backend.served_model = url, "big-judge"
        with pytest.raises(ConfigError, match="judge.backend.served_model: 'big-judge' is not served .*small-judge"):
            with _backends(cfg, build_filters(cfg)):
                pass


def test_backends_are_built_only_for_the_filters_that_use_them():
    from selfevolve.curate import _backends
    from selfevolve.filters import build_filters

    cfg = Config()
    cfg.curate.order = ["structural", "judge"]
    cfg.curate.judge.enabled = True  # auto would switch it off for a `same` judge
    with models_server(["big-judge"]) as url:
        cfg.judge.kind, cfg.judge.backend.served_model, cfg.judge.backend.base_url = "openai", "big-judge", url
        with _backends(cfg, build_filters(cfg)) as (backend, judge):
            assert backend is None  # no filter needs the served model: no engine is started
            assert judge.name == "openai" and judge.cfg.base_url == url and judge.model == "big-judge"
    cfg.judge.kind = "same"
    fake = ScriptedBackend(script)
    with _backends(cfg, build_filters(cfg), backend=fake) as (backend, judge):
        assert backend is fake and judge is fake
