"""The compare stage: sides, prompt sets, outputs and notes (scripted backends), the report across rounds, and
one run on the real model (vLLM, a LoRA adapter switched per call). The judge's rule, the statistics and the
drift monitors have their own tests (test_judge.py, test_stats.py, test_drift.py)."""
import json
import math
import random
import re
import shutil

import pytest
from typer.testing import CliRunner

from selfevolve.backends.base import Generation
from selfevolve.config import Config
from selfevolve.compare import SideError, compare, read_summary, resolve_side
from selfevolve.compare_prompts import heldout_prompts, load_prompts, mt_bench_prompts
from selfevolve.judge import JUDGE_SCHEMA
from selfevolve.layout import RunLayout
from selfevolve.report import write_report

from fakes import ScriptedBackend


def fake_adapter(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


@pytest.fixture
def run(tmp_path):
    run = RunLayout.of(tmp_path / "runs", "t")
    fake_adapter(run.round(1).adapter)
    fake_adapter(run.round(2).adapter)
    return run


def cfg_for(run, **compare):
    cfg = Config()
    cfg.run.root, cfg.run.name = str(run.dir.parent), run.dir.name
    cfg.compare.max_prompts = compare.pop("max_prompts", 40)
    cfg.compare.bootstrap_samples = 500
    cfg.compare.perplexity_backend = "backend"  # the scripted backend's log-probs
    cfg.compare.embeddings = False  # the real embedder takes seconds to import; tests that need it say so
    cfg.compare.pairwise = True  # these tests are about the judge; off by default for a `same` judge
    for k, v in compare.items():
        setattr(cfg.compare, k, v)
    return cfg


class Models:
    """Generation backend: each side answers in its own recognisable way (``adapter`` picks the side)."""

    name = "models"

    def __init__(self, answers=None):
        self.answers = answers or {}
        self.chat_calls = []

    def chat(self, batch, sampling, schema=None, adapter=None):
        self.chat_calls.append(adapter)
        key = "base" if adapter is None else adapter.split("/")[-2]  # round-00N
        text = self.answers.get(key, f"answer from {key}")
        return [Generation(f"{text} ({i})" if "{i}" not in text else text.format(i=i), "stop", 5) for i, _ in
                enumerate(batch)]

    def logprobs(self, contexts, completions, adapter=None):
        lp = -1.0 if adapter is None else -2.0
        return [[lp] * max(1, len(c.split())) for c in completions]

    def close(self):
        pass


def replies(messages):
    """The two replies shown to the judge (A first)."""
    text = messages[-1]["content"]
    a = re.search(r"\[Reply A\]\n(.*?)\n\[End of reply A\]", text, re.S).group(1)
    b = re.search(r"\[Reply B\]\n(.*?)\n\[End of reply B\]", text, re.S).group(1)
    return json.loads(a), json.loads(b)  # each reply is shown as one JSON string


def verdict(winner):
    return json.dumps({"reason": "because", "winner": winner})


def prefers(marker):
    """A judge that picks whichever reply contains ``marker``, in either position."""
    def script(messages, schema, n):
        assert schema == JUDGE_SCHEMA
        a, b = replies(messages)
        return verdict("A" if marker in a and marker not in b else "B" if marker in b and marker not in a else "tie")
    return script


# ---------------------------------------------------------------- sides

def test_resolve_sides(run, tmp_path):
    assert resolve_side("base", run).adapter is None and resolve_side("base", run).label == "base"
    for spec in ("r1", "round-001", "R1", "round1"):
        side = resolve_side(spec, run)
        assert side.label == "round-001" and side.round == 1
        assert side.adapter == str(run.round(1).adapter.resolve())
    by_path = resolve_side(str(run.round(2).adapter), run)
    assert (by_path.label, by_path.round) == ("round-002", 2)
    ckpt = fake_adapter(run.round(1).dir / "train_ckpt" / "sft" / "checkpoint-2")
    side = resolve_side(str(ckpt), run)
    assert side.label == "round-001-train_ckpt-sft-checkpoint-2" and side.round == 1
    with pytest.raises(SideError, match="no adapter"):
        resolve_side("r3", run)
    outside = fake_adapter(tmp_path / "elsewhere" / "adapter")
    with pytest.raises(SideError, match="not inside the run"):
        resolve_side(str(outside), run)
    with pytest.raises(SideError, match="not inside the run"):
        resolve_side(str(run.dir / ".." / ".." / "elsewhere" / "adapter"), run)
    link = run.dir / "sneaky"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(SideError, match="not inside the run"):
        resolve_side(str(link), run)
    with pytest.raises(SideError, match="no adapter_config"):
        resolve_side(str(run.round(1).dir), run)


def test_cli_refuses_paths_outside_the_run(run, tmp_path):
    from selfevolve.cli import app

    outside = fake_adapter(tmp_path / "elsewhere" / "adapter")
    res = CliRunner().invoke(app, ["compare", "base", str(outside), "--set", f"run.root={run.dir.parent}",
                                   "--set", "run.name=t"])
    assert res.exit_code == 2
    assert "not inside the run" in res.output


def test_mt_bench_prompts_are_balanced():
    from selfevolve.config import PACKAGE_DATA

    prompts = mt_bench_prompts(PACKAGE_DATA / "mt_bench_questions.jsonl", 16)
    cats = [p["category"] for p in prompts]
    assert len(prompts) == 16 and all(cats.count(c) == 2 for c in set(cats)) and len(set(cats)) == 8
    assert all(len(p["messages"]) == 1 and p["messages"][0]["role"] == "user" for p in prompts)
    assert len(mt_bench_prompts(PACKAGE_DATA / "mt_bench_questions.jsonl", 500)) == 80


# ---------------------------------------------------------------- the stage on scripted backends

class FakeEmbedder:
    """Unit vectors from the first letter: answers that start alike are alike."""

    def encode(self, texts, normalize_embeddings=True):
        import numpy as np

        out = np.zeros((len(texts), 26))
        for i, t in enumerate(texts):
            out[i, (ord(t[:1].lower() or "a") - ord("a")) % 26] = 1.0
        return out


def test_judge_preferring_b_gives_ci_above_half(run, monkeypatch):
    monkeypatch.setattr("selfevolve.drift.load_embedder", lambda: (FakeEmbedder(), "fake"))
    cfg = cfg_for(run, max_prompts=40, embeddings=True)
    models = Models({"round-002": "CANDIDATE answer"})
    s = compare(cfg, "r1", "r2", run=run, backend=models, judge=ScriptedBackend(prefers("CANDIDATE")), log=lambda m: None)
    r = s["result"]
    assert (r["n"], r["wins"], r["ties"], r["losses"]) == (40, 40, 0, 0)
    assert r["win_rate"] == 1.0 and r["ci_low"] > 0.5 and r["verdict"] == "B better"
    out = run.round(2).eval_dir("round-001_vs_round-002")
    for name in ("summary.json", "report.md", "winrate.png", "lengths.png", "generations.jsonl", "judgments.jsonl"):
        assert (out / name).is_file(), name
    assert read_summary(out / "summary.json")["result"]["wins"] == 40
    assert "**B = round-002 wins 40, ties 0, loses 0**" in (out / "report.md").read_text()
    # drift monitors per side; perplexity from the backend's log-probs (-1 base... -2 for adapters)
    assert s["drift"]["a"]["perplexity_human"] == pytest.approx(math.e ** 2)
    assert s["drift"]["b"]["embedding_spread"] == 0.0  # every answer starts alike
    assert "Embedding spread: fake." in s["notes"]
    # the reverse comparison is a clear loss for B
    s2 = compare(cfg, "r2", "r1", run=run, backend=models, judge=ScriptedBackend(prefers("CANDIDATE")), log=lambda m: None)
    assert s2["result"]["ci_high"] < 0.5 and s2["result"]["verdict"] == "A better"


def test_coin_flip_judge_ci_contains_half(run):
    cfg = cfg_for(run, max_prompts=40)
    rng = random.Random(0)
    coin = ScriptedBackend(lambda m, s, n: verdict(rng.choice(["A", "B"])))  # flips even within a prompt
    s = compare(cfg, "r1", "r2", run=run, backend=Models(), judge=coin, log=lambda m: None)
    assert s["result"]["ci_low"] <= 0.5 <= s["result"]["ci_high"]
    assert s["result"]["verdict"] == "no significant difference"
    # a judge that is consistent per prompt but picks the side by a (seeded) coin: scores 0/1
    rng2 = random.Random(1)
    picks = {}

    def per_prompt(messages, schema, n):
        a, b = replies(messages)
        key = tuple(sorted((a, b)))
        picks.setdefault(key, rng2.choice(sorted((a, b))))
        return verdict("A" if picks[key] == a else "B")

    s = compare(cfg, "r1", "r2", run=run, backend=Models(), judge=ScriptedBackend(per_prompt), log=lambda m: None)
    r = s["result"]
    assert r["ties"] == 0 and r["wins"] > 0 and r["losses"] > 0
    assert r["ci_low"] <= 0.5 <= r["ci_high"]


def test_self_comparison_is_never_a_win(run):
    cfg = cfg_for(run, max_prompts=12)
    models = Models()
    always_a = ScriptedBackend(lambda m, s, n: verdict("A"))  # maximal position bias
    s = compare(cfg, "r1", "round-001", run=run, backend=models, judge=always_a, log=lambda m: None)
    r = s["result"]
    assert (r["wins"], r["losses"], r["ties"], r["inconsistent"]) == (0, 0, 12, 12)
    assert r["win_rate"] == 0.5 and r["verdict"] == "no significant difference"
    assert models.chat_calls.count(str(run.round(1).adapter.resolve())) == 1  # answers generated once
    assert any("same model" in n for n in s["notes"])
    s = compare(cfg, "base", "base", run=run, backend=Models(), judge=ScriptedBackend(lambda m, sc, n: verdict("B")),
                log=lambda m: None)
    assert s["result"]["wins"] == 0 and (run.dir / "eval" / "base_vs_base" / "summary.json").is_file()


def test_report_across_rounds(run):
    cfg = cfg_for(run, max_prompts=8)
    judge = ScriptedBackend(prefers("CANDIDATE"))
    compare(cfg, "base", "r1", run=run, backend=Models({"round-001": "CANDIDATE one"}), judge=judge, log=lambda m: None)
    # the scripted models answer round-001 differently in the two comparisons, which the same real model never
    # does greedily: the first one's kept answers (the run's answers/) are not this one's
    shutil.rmtree(run.answers)
    compare(cfg, "r1", "r2", run=run, backend=Models({"round-002": "CANDIDATE two"}), judge=judge, log=lambda m: None)
    md, png, summaries = write_report(run)
    text = md.read_text()
    assert len(summaries) == 2 and png.is_file() and png.stat().st_size > 0
    assert "| 1 | round-001 | base | 8 | 8 / 0 / 0 |" in text
    assert "| 2 | round-002 | round-001 | 8 | 8 / 0 / 0 |" in text


# ---------------------------------------------------------------- held-out conversations

def chat(cid, *users):
    """A conversation record as collect writes it: user turns ``users``, each answered."""
    msgs = []
    for u in users:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": f"reply to {u}"}]
    return {"id": cid, "messages": msgs, "source": "gateway", "meta": {}}


def hold_out(rnd, *convs):
    from selfevolve.records import write_jsonl

    rnd.dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(rnd.heldout, list(convs))


@pytest.fixture
def heldout_run(run):
    """Rounds 1-3, each with held-out chats; c1 goes on in round 2 (collected again, whole, with a new turn)."""
    fake_adapter(run.round(3).adapter)
    hold_out(run.round(1), chat("c1", "q1a", "q1b"), chat("c2", "q2a"))
    hold_out(run.round(2), chat("c1", "q1a", "q1b", "q1c"), chat("c3", "q3a"))
    hold_out(run.round(3), chat("c4", "q4a"))
    return run


def generated(run, label):
    rnd = int(label.split("_vs_")[1].split("-")[1]) if "_vs_round" in label else None
    folder = run.round(rnd).eval_dir(label) if rnd else run.eval_dir(label)
    return [json.loads(line) for line in open(folder / "generations.jsonl")]


def test_heldout_from_the_run_up_to_the_candidates_round(heldout_run):
    run = heldout_run
    cfg = cfg_for(run, max_prompts=2, max_heldout=100)
    assert cfg.compare.heldout == "run"  # the default
    judge = ScriptedBackend(prefers("CANDIDATE"))
    s = compare(cfg, "r1", "r2", run=run, backend=Models({"round-002": "CANDIDATE"}), judge=judge, log=lambda m: None)
    ids = {g["id"] for g in generated(run, "round-001_vs_round-002") if g["source"] == "heldout"}
    # rounds 1 and 2, not 3 (c4); c1's turns once each, its new third turn from round 2 included
    assert ids == {"heldout-c1#0", "heldout-c1#2", "heldout-c1#4", "heldout-c2#0", "heldout-c3#0"}
    assert s["prompts"]["sources"] == {"mt_bench": 2, "heldout": 5} and s["prompts"]["n"] == 7
    assert s["prompts"]["heldout"] == "run" and s["prompts"]["heldout_conversations"] == 3
    assert s["prompts"]["heldout_files"] == [str(run.round(n).heldout.relative_to(run.dir)) for n in (1, 2)]
    assert s["by_source"]["heldout"] == {"n": 5, "wins": 5, "ties": 0, "losses": 0, "win_rate": 1.0}
    assert "heldout 5" in (run.round(2).eval_dir("round-001_vs_round-002") / "report.md").read_text()
    assert not any("no held-out" in n for n in s["notes"])
    # each user turn comes with the conversation before it, and ends with that turn
    g = {g["id"]: g for g in generated(run, "round-001_vs_round-002")}["heldout-c1#4"]
    assert [m["content"] for m in g["messages"]] == ["q1a", "reply to q1a", "q1b", "reply to q1b", "q1c"]
    # the judge was shown the same context
    assert any(m[-1]["content"].count("q1c") for m, _ in judge.calls)

    s = compare(cfg, "base", "r1", run=run, backend=Models(), judge=judge, log=lambda m: None)
    assert s["prompts"]["sources"]["heldout"] == 3  # round 1 only: c1 (2 turns), c2
    s = compare(cfg, "base", "base", run=run, backend=Models(), judge=judge, log=lambda m: None)
    assert s["prompts"]["sources"]["heldout"] == 6  # both sides base: every round
    ids = {g["id"] for g in generated(run, "base_vs_base") if g["source"] == "heldout"}
    assert "heldout-c4#0" in ids
    # a side given by path counts with its round
    s = compare(cfg, "base", str(run.round(3).adapter), run=run, backend=Models(), judge=judge, log=lambda m: None)
    assert s["prompts"]["sources"]["heldout"] == 6


def test_heldout_cap_is_breadth_first_and_stable(heldout_run):
    run = heldout_run
    cfg = cfg_for(run, max_prompts=0, max_heldout=4)
    files = [r.heldout for r in run.rounds()]
    got = load_prompts(cfg.compare, run, ())
    assert got.heldout_files == files and got.heldout_conversations == 4
    ids = [p["id"] for p in got.prompts]
    assert len(ids) == 4 and sorted(ids) == ["heldout-c1#0", "heldout-c2#0", "heldout-c3#0", "heldout-c4#0"]
    assert [p["id"] for p in heldout_prompts(files[::-1], 4)[0]] == ids  # independent of file order
    assert len(heldout_prompts(files, 5)[0]) == 5 and heldout_prompts(files, 5)[0][-1]["id"] == "heldout-c1#2"
    # a pick from the larger pool stays picked from a smaller one that holds it
    two = [p["id"] for p in heldout_prompts(files, 2)[0]]
    assert two == ids[:2] and [p["id"] for p in heldout_prompts(files[:2], 2)[0]] == [
        i for i in ids if i != "heldout-c4#0"][:2]
    cfg.compare.max_heldout = 0
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(cfg.compare, run, ())


def test_heldout_dedup_by_id(tmp_path):
    path = tmp_path / "held.jsonl"
    noid = {"messages": chat("x", "same words")["messages"]}
    rows = [chat("a", "one"), chat("a", "one"), chat("b", "two", "three"), noid, dict(noid)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts, n_conv = heldout_prompts(path, 100)
    ids = [p["id"] for p in prompts]
    assert len(ids) == len(set(ids)) == 4 and n_conv == 3  # a, b (2 turns), the record without id once
    assert all(p["source"] == "heldout" and p["messages"][-1]["role"] == "user" for p in prompts)
    assert len(heldout_prompts([path, path], 100)[0]) == 4


def test_no_heldout_conversations_yet_is_a_note(run):
    judge = ScriptedBackend(prefers("CANDIDATE"))
    s = compare(cfg_for(run, max_prompts=4), "r1", "r2", run=run, backend=Models(), judge=judge, log=lambda m: None)
    assert s["prompts"]["sources"] == {"mt_bench": 4} and s["prompts"]["heldout_files"] == []
    assert any("no held-out conversations in the run yet" in n for n in s["notes"])
    assert "no held-out conversations in the run yet" in (
        run.round(2).eval_dir("round-001_vs_round-002") / "report.md").read_text()
    hold_out(run.round(1))  # an empty file (every conversation of the round went to training)
    s = compare(cfg_for(run, max_prompts=4), "r1", "r2", run=run, backend=Models(), judge=judge, log=lambda m: None)
    assert s["prompts"]["n"] == 4 and any("no held-out conversations in the run yet" in n for n in s["notes"])
    s = compare(cfg_for(run, max_prompts=4, heldout=""), "r1", "r2", run=run, backend=Models(), judge=judge,
                log=lambda m: None)  # off: no note
    assert s["prompts"]["heldout"] is None and not any("held-out conversations" in n for n in s["notes"])
    with pytest.raises(ValueError, match="no prompts"):
        compare(cfg_for(run, max_prompts=0), "r1", "r2", run=run, backend=Models(), judge=judge, log=lambda m: None)


def test_heldout_from_a_file(heldout_run, tmp_path):
    run = heldout_run
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(chat("f1", "file question", "follow-up")) + "\n")
    cfg = cfg_for(run, max_prompts=3, heldout=str(path), max_heldout=10)
    s = compare(cfg, "r1", "r2", run=run, backend=Models(), judge=ScriptedBackend(prefers("x")), log=lambda m: None)
    assert s["prompts"]["sources"] == {"mt_bench": 3, "heldout": 2}  # the file only, not the run's
    assert s["prompts"]["heldout"] == str(path) and s["prompts"]["heldout_files"] == [str(path)]
    assert {g["id"] for g in generated(run, "round-001_vs_round-002")} >= {"heldout-f1#0", "heldout-f1#2"}
    with pytest.raises(FileNotFoundError, match="compare.heldout"):
        load_prompts(cfg_for(run, heldout=str(tmp_path / "missing.jsonl")).compare, run, ())


def test_defaults_take_heldout_from_the_run():
    from pathlib import Path

    from selfevolve.config import load_config

    for cfg in (Config(), load_config(Path(__file__).resolve().parent.parent / "configs/default.yaml")):
        assert cfg.compare.heldout == "run" and 0 < cfg.compare.max_heldout <= 16
        assert cfg.compare.embeddings


# ---------------------------------------------------------------- statistics and drift

# ---------------------------------------------------------------- the real model

@pytest.mark.integration
def test_compare_on_vllm_with_a_lora_adapter(vllm_backend, default_cfg, tmp_path):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = RunLayout.of(tmp_path / "runs", "it")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(default_cfg.model.path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))  # random A and B: the adapter changes outputs
    model.save_pretrained(str(run.round(1).adapter))
    del model, base

    cfg = copy.deepcopy(default_cfg)
    cfg.run.root, cfg.run.name = str(run.dir.parent), run.dir.name
    cfg.compare.max_prompts, cfg.compare.max_tokens, cfg.compare.bootstrap_samples = 4, 48, 300
    cfg.compare.pairwise = True  # this test is about the judge; off by default for a `same` judge
    s = compare(cfg, "base", "r1", run=run, backend=vllm_backend, judge=vllm_backend, log=lambda m: None)
    r = s["result"]
    assert r["n"] == 4 and r["wins"] + r["ties"] + r["losses"] == 4
    assert s["prompts"]["sources"] == {"mt_bench": 4}  # compare.heldout: run, and this run holds none yet
    assert any("no held-out conversations in the run yet" in n for n in s["notes"])
    assert 0 <= r["ci_low"] <= r["win_rate"] <= r["ci_high"] <= 1
    gens = [json.loads(line) for line in open(run.round(1).eval_dir("base_vs_round-001") / "generations.jsonl")]
    assert any(g["a"] != g["b"] for g in gens)  # the adapter is applied per call
    for side in ("a", "b"):
        d = s["drift"][side]
        assert 0 < d["distinct_1"] <= 1 and d["perplexity_human"] > 1
    assert s["drift"]["a"]["perplexity_human"] != s["drift"]["b"]["perplexity_human"]
    for name in ("summary.json", "report.md", "winrate.png", "lengths.png"):
        assert (run.round(1).eval_dir("base_vs_round-001") / name).is_file()

    same = compare(cfg, "r1", "r1", run=run, backend=vllm_backend, judge=vllm_backend, log=lambda m: None)
    assert same["result"]["wins"] == same["result"]["losses"] == 0
    assert same["result"]["verdict"] == "no significant difference"


def test_an_order_biased_judge_is_flagged(run):
    s = compare(cfg_for(run, max_prompts=6), "base", "r1", run=run, backend=Models(),
                judge=ScriptedBackend(lambda m, sc, n: verdict("A")), log=lambda m: None)
    assert s["result"]["inconsistent"] == 6 and any("flipped with the order" in n for n in s["notes"])
