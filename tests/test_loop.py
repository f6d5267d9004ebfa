"""The round runner's orchestration on a scripted backend and a stand-in trainer: what is collected, which
stages run or are skipped, resume after a crash, the gate, offline deploy, status. (The real model, real
TRL and a real server run the same code in tests/test_loop_integration.py.)"""
import contextlib
import json

import pytest

from selfevolve import loop
from selfevolve.collect import collect_round, is_heldout
from selfevolve.config import Config
from selfevolve.layout import RunLayout
from selfevolve.manifest import load as load_manifest, record_stage
from selfevolve.records import read_jsonl, write_json, write_jsonl
from selfevolve.store import ChatStore

from fakes import ScriptedBackend


def chat(cid, question, answer, follow=None):
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if follow:
        msgs.append({"role": "user", "content": follow})
    return {"id": cid, "messages": msgs}


CHATS = [chat(f"c{i}", f"Question number {i}: what is {i} + {i}?", f"It is {i}.", "That is wrong.")
         for i in range(1, 9)]


def revise_script(messages, schema, n):
    if schema is None:  # the chat strategy's new answer: make it differ per question
        return "The correct sum is " + messages[-1]["content"].split(":")[0] + "."
    return json.dumps({"criticism": "It added wrong.", "verdict": "revise"})


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A config on files in tmp_path, the scripted backend, and a trainer that writes a small valid adapter."""
    import selfevolve.backends
    import selfevolve.train

    src = tmp_path / "chats.jsonl"
    write_jsonl(src, CHATS)
    cfg = Config()
    cfg.run.root = str(tmp_path / "runs")
    cfg.data.inputs = [str(src)]
    cfg.data.heldout_share = 0.0
    cfg.curate.order = ["structural", "leakage", "diversity"]
    cfg.signals.enabled = False  # the classifier has tests of its own (tests/test_signals.py)
    cfg.revise.turns = "all"  # with no signal every turn is unclear: revise them all, as before signals
    calls = {"backend": 0, "train": 0}

    def make_backend(_cfg, model_path=None):
        calls["backend"] += 1
        return ScriptedBackend(revise_script)

    def train_round(cfg, rnd, run=None, **kw):
        calls["train"] += 1
        write_fake_adapter(rnd.adapter)
        meta = {"round": rnd.number, "metrics": {"sft": {"steps": 1, "train_loss": 1.0, "tokens": 10,
                                                          "tokens_per_s": 1.0, "seconds": 0.1}}}
        write_json(rnd.train_meta, meta)
        record_stage(rnd.manifest, "train", inputs=[rnd.train_sft], outputs=[rnd.train_meta], counts={},
                     started=0.0)
        return meta

    monkeypatch.setattr(selfevolve.backends, "make_backend", make_backend)
    monkeypatch.setattr(selfevolve.train, "train_round", train_round)
    compares = []

    def compare(cfg, a, b, run=None, backend=None, **kw):
        compares.append((a, b))
        folder = run.round(int(b[1:])).eval_dir(f"{a}_vs_{b}")
        summary = {"dir": str(folder), "a": {"label": a}, "b": {"label": b},
                   "result": {"n": 10, "wins": 9, "ties": 1, "losses": 0, "inconsistent": 0, "invalid": 0,
                              "win_rate": env.win_rate, "ci_low": env.win_rate - 0.1,
                              "ci_high": min(env.win_rate + 0.1, 1), "confidence": 0.95, "verdict": "B better"}}
        write_json(folder / "summary.json", summary)
        return summary

    import selfevolve.compare
    import selfevolve.report

    monkeypatch.setattr(selfevolve.compare, "compare", compare)
    # the real report needs full comparison summaries (tests/test_compare.py covers it)
    monkeypatch.setattr(selfevolve.report, "write_report", lambda run: calls.__setitem__("report", run))

    class Env:
        pass

    env = Env()
    env.cfg, env.run, env.src, env.calls, env.compares, env.win_rate = (
        cfg, RunLayout.of(cfg.run.root, cfg.run.name), src, calls, compares, 0.9)
    env.log = []
    env.iterate = lambda **kw: loop.iterate(cfg, env.run, show_progress=False, log=env.log.append, **kw)
    return env


def write_fake_adapter(folder):
    """A well-formed LoRA for the configured base model (small random weights): deploy checks it against it."""
    from adapter_fixtures import lora_tensors, write_adapter
    from selfevolve.adapters import BaseModel

    base = Config().model.path
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
           "base_model_name_or_path": base}
    write_adapter(folder, cfg, lora_tensors(BaseModel.from_path(base), cfg))


# ---------------------------------------------------------------- collect

def test_collect_moves_served_turns_and_feedback_to_the_normalised_indices(tmp_path):
    run = RunLayout(tmp_path / "run")
    store = ChatStore(run.chats_db)
    try:
        user = store.hash_user("u1", None)
        # an empty system message (dropped by normalisation) and a client-written assistant turn merged with
        # the served one: only the served turn that stays whole may count as the model's own words
        first = [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
        store.record_exchange("g1", user, first, "hello", "base", True)
        forged = first + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"},
                          {"role": "assistant", "content": "FORGED"}]
        store.record_exchange("g1", user, forged, "more", "base", True)
        store.add_feedback("g1", "up", 2)
        exported = store.export_conversations()[0]
    finally:
        store.close()
    assert exported["meta"]["served"] == [2, 5]  # the store's own indices: the system message counts
    collect_round(run.round(1), run, [], gateway=True)
    conv = read_jsonl(run.round(1).conversations)[0]
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][3]["content"] == "FORGED\n\nmore"
    assert conv["meta"]["served"] == [1]  # "hello"; the merged FORGED + more is not the model's
    assert conv["meta"]["feedback"][0]["message_index"] == 1


def test_collect_takes_files_once_and_gateway_chats_after_the_watermark(tmp_path):
    run = RunLayout(tmp_path / "run")
    src = tmp_path / "a.jsonl"
    write_jsonl(src, CHATS[:3] + [{"id": "bad", "messages": [{"role": "user", "content": "no answer"}]}])
    store = ChatStore(run.chats_db)
    try:
        user = store.hash_user("u1", None)
        store.record_exchange("g1", user, [{"role": "user", "content": "hi"}], "hello", "base", True)
        store.record_exchange("g2", user, [{"role": "user", "content": "private"}], "ok", "base", False)  # no consent
        r1 = collect_round(run.round(1), run, [src], gateway=True)
        assert (r1.read, r1.rejected, r1.conversations) == (5, 1, 4)  # 4 file records + g1; g2 never leaves
        assert [c["id"] for c in read_jsonl(run.round(1).conversations)] == ["c1", "c2", "c3", "g1"]
        assert read_jsonl(run.round(1).import_rejected)[0]["reason"]

        # nothing new: the file was consumed, no chat since; nothing is written for round 2
        r2 = collect_round(run.round(2), run, [src], gateway=True)
        assert r2.empty and r2.skipped_files == [str(src)] and not run.round(2).dir.exists()

        # g1 goes on: it comes back whole, with the new turns (more hindsight for the first answer)
        store.record_exchange("g1", user, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                           {"role": "user", "content": "that was rude"}], "sorry", "se-r001", True)
        r2 = collect_round(run.round(2), run, [src], gateway=True)
        (g1,) = read_jsonl(run.round(2).conversations)
        assert (r2.read, r2.gateway_read) == (1, 1) and len(g1["messages"]) == 4
        assert load_manifest(run.round(2).manifest)["stages"]["collect"]["counts"]["db_seq"] == 3
    finally:
        store.close()


def test_heldout_split_is_stable_and_conserves_records(tmp_path):
    run = RunLayout(tmp_path / "run")
    src = tmp_path / "a.jsonl"
    many = [chat(f"k{i}", f"q{i}", f"a{i}") for i in range(200)]
    write_jsonl(src, many)
    rep = collect_round(run.round(1), run, [src], heldout_share=0.25)
    held = {c["id"] for c in read_jsonl(run.round(1).heldout)}
    train = {c["id"] for c in read_jsonl(run.round(1).conversations)}
    assert rep.heldout == len(held) and rep.conversations == len(train) and not held & train
    assert len(held) + len(train) == 200 and 25 <= len(held) <= 75
    assert all(is_heldout(i, 0.25) for i in held) and not any(is_heldout(i, 0.25) for i in train)
    assert not any(is_heldout(i, 0.0) for i in held)


# ---------------------------------------------------------------- the loop

def test_a_round_runs_every_stage_in_order_then_nothing_new(env):
    (res,) = env.iterate()
    assert res.round == 1 and list(res.stages) == list(loop.STAGES)
    assert all(s.ran for s in res.stages.values())
    stages = load_manifest(env.run.round(1).manifest)["stages"]
    assert [stages[s]["status"] for s in loop.STAGES] == ["complete"] * len(loop.STAGES)
    assert stages["gate"]["decision"]["promote"] is True and stages["compare"]["incumbent"] == "base"
    assert env.calls.pop("report") == env.run  # the across-rounds report is refreshed after each round
    assert env.compares == [("base", "r1")] and env.calls == {"backend": 1, "train": 1}  # one engine for all
    # no server: the adapter is made live in current.json for the next `selfevolve serve`
    assert stages["deploy"]["action"] == "offline"
    assert json.loads(env.run.current.read_text())["live"] == "se-r001"

    # the second iterate finds nothing new: no round, no engine, no training
    (again,) = env.iterate(rounds=3)
    assert again.round is None and again.status == "nothing new"
    assert env.calls == {"backend": 1, "train": 1} and len(env.run.rounds()) == 1


def test_new_chats_open_round_two_compared_with_the_live_adapter(env):
    env.iterate()
    more = env.src.parent / "more.jsonl"
    write_jsonl(more, [chat(f"n{i}", f"New question {i}: capital of country {i}?", f"City {i}.", "No.")
                       for i in range(4)])
    env.win_rate = 0.5  # CI 0.4-0.6: not above 0.5
    (res,) = env.iterate(inputs=[more])
    assert res.round == 2 and env.compares[-1] == ("r1", "r2")
    assert res.decision["promote"] is False and "<= gate.threshold" in res.decision["reason"]
    assert res.deployed["action"] == "none"
    assert json.loads(env.run.current.read_text())["live"] == "se-r001"  # the live adapter is untouched
    assert len(read_jsonl(env.run.round(2).train_sft)) > len(read_jsonl(env.run.round(2).sft))  # accumulated


def test_a_crashed_round_resumes_at_the_stage_that_failed(env, monkeypatch):
    import selfevolve.curate

    real = selfevolve.curate.curate_round

    def crash(*a, **kw):
        raise RuntimeError("killed")

    monkeypatch.setattr(selfevolve.curate, "curate_round", crash)
    with pytest.raises(RuntimeError, match="killed"):
        env.iterate()
    assert set(load_manifest(env.run.round(1).manifest)["stages"]) == {"collect", "signals", "revise"}
    monkeypatch.setattr(selfevolve.curate, "curate_round", real)
    (res,) = env.iterate()
    assert res.round == 1  # the same round, not a new one
    assert [s for s, v in res.stages.items() if not v.ran] == ["collect", "signals", "revise"]
    assert all(v.ran for s, v in res.stages.items() if s not in ("collect", "signals", "revise"))
    ids = [r["id"] for r in read_jsonl(env.run.round(1).revisions)]
    assert len(ids) == len(set(ids)) == len(CHATS)


def test_a_round_with_nothing_kept_trains_nothing(env):
    env.cfg.gate.min_new_examples = 100
    (res,) = env.iterate()
    assert env.calls["train"] == 0 and env.compares == []
    assert res.decision["promote"] is False and "nothing new to train on" in res.decision["reason"]
    assert loop.is_finished(env.run.round(1)) and not env.run.current.exists()


def test_gate_never_deploys_when_told(env):
    env.cfg.gate.deploy = "never"
    (res,) = env.iterate()
    assert res.decision["promote"] is True and res.deployed["action"] == "none"
    assert not env.run.current.exists()


def test_a_second_iterate_on_the_same_run_is_refused_while_one_runs(env):
    with loop.run_lock(env.run):
        with pytest.raises(loop.LoopError, match="another `selfevolve iterate`"):
            env.iterate()


def test_status_reads_rounds_and_live_adapter(env):
    env.iterate()
    st = loop.status(env.run)
    (row,) = st["rounds"]
    assert row["finished"] and row["promote"] and row["deploy"] == "offline" and st["live"] == "se-r001"
    assert row["turns"] == len(CHATS) and row["win_rate"] == 0.9


def test_cli_iterate_and_status(env, monkeypatch):
    from typer.testing import CliRunner

    from selfevolve.cli import app

    import yaml

    cfg_file = env.src.parent / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(env.cfg.to_dict()))
    out = CliRunner().invoke(app, ["iterate", "-c", str(cfg_file), "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "round 1: collect" in out.output and "deploy: offline, live se-r001" in out.output
    out = CliRunner().invoke(app, ["status", "-c", str(cfg_file), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["live"] == "se-r001"
    out = CliRunner().invoke(app, ["iterate", "-c", str(cfg_file), "--set", "gate.deploy=sometimes"])
    assert out.exit_code == 2 and "gate.deploy" in out.output


def test_alongside_works_in_a_thread_during_the_block_and_a_failure_is_only_said(env):
    from selfevolve.stage import ModelPool, StageContext

    said, seen = [], []
    ctx = StageContext(env.cfg, env.run, env.run.round(1), ModelPool(env.cfg), log=said.append)
    import threading

    inside = threading.Event()
    with loop.alongside(lambda c: seen.append((threading.current_thread().name, inside.wait(10))), ctx, True):
        inside.set()
    assert seen and seen[0][1] is True and seen[0][0] != "MainThread"  # ran while the block ran
    with loop.alongside(lambda c: 1 / 0, ctx, True):
        pass
    assert "ZeroDivisionError" in said[-1] and "does the work itself" in said[-1]
    with loop.alongside(lambda c: seen.append("no"), ctx, False):
        pass
    assert "no" not in seen
    # Ctrl-C during the block: it propagates at once, the work is not waited for (it was: a warm-up of minutes)
    release = threading.Event()
    with pytest.raises(KeyboardInterrupt):
        with loop.alongside(lambda c: release.wait(60), ctx, True):
            raise KeyboardInterrupt
    busy = [t for t in threading.enumerate() if t.name.startswith("alongside-")]
    assert busy and all(t.daemon for t in busy)  # still working when the interrupt reached the caller
    release.set()


def test_the_live_side_is_answered_beside_train_only_on_cores_of_its_own(env, monkeypatch):
    import threading

    import selfevolve.compare

    warmed = []
    monkeypatch.setattr(selfevolve.compare, "warm", lambda ctx: warmed.append(threading.current_thread().name))
    monkeypatch.setattr(loop, "beside_server", lambda cfg, run: None)  # no server (or sharing its cores)
    env.iterate()
    assert warmed == []
    more = env.src.parent / "more.jsonl"
    write_jsonl(more, [chat(f"n{i}", f"New question {i}: capital of country {i}?", f"City {i}.", "No.")
                       for i in range(4)])
    monkeypatch.setattr(loop, "beside_server", lambda cfg, run: [0])  # beside the served engine, core 0 free
    monkeypatch.setattr(loop, "pinned", lambda cores, log: contextlib.nullcontext())
    env.iterate(inputs=[more])
    assert len(warmed) == 1 and warmed[0].startswith("alongside-")  # once, in its own thread (while train ran)
