"""``selfevolve forget`` (selfevolve/forget.py) on a real run: a SQLite store written through ChatStore, rounds
collected from it by the collect stage, per-turn files and HF datasets as the stages shape them, one round
trained on and one not."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from selfevolve import forget as forget_mod
from selfevolve import manifest
from selfevolve.cli import app
from selfevolve.collect import collect_round
from selfevolve.curate import save_dataset
from selfevolve.forget import forget
from selfevolve.layout import EvalLayout, RunLayout
from selfevolve.records import (assistant_turns, dpo_example, read_jsonl, revision, sft_example, turn_id,
                                write_jsonl)
from selfevolve.store import ChatStore

MARK = "ALICE-PRIVATE"  # in every message alice sends: no copy of it may survive where she is forgotten


def say(store, who, msgs, answer, cid=None):
    h = store.hash_user(who, None)
    cid = store.resolve_id(h, msgs, cid)
    store.record_exchange(cid, h, msgs, answer, "base", True)
    return cid


def stage_outputs(rnd, started=0.0):
    """signals, revisions, curated / rejected, sft, dpo and the accumulated train sets of a collected round, in the
    stages' record shapes, with their manifest entries and HF datasets (as the stages record them)."""
    convs = read_jsonl(rnd.conversations)
    signals, revisions = [], []
    for conv in convs:
        for t in assistant_turns(conv):
            signals.append({"id": turn_id(conv["id"], t), "label": "corrected", "confidence": 0.9})
            revisions.append({**revision(conv, t, strategy="chat", model="m", attempts=1, truncated=False,
                                         output_tokens=3), "status": "ok", "revised": "better " + conv["id"]})
    curated = revisions[::2]
    rejected = [{**r, "filter": "grounding", "reason": "no correction carried"} for r in revisions[1::2]]
    sft = [sft_example(r["id"], rnd.number, r["context"], r["revised"]) for r in curated]
    dpo = [dpo_example(r["id"], rnd.number, r["context"], r["revised"], r["original"]) for r in curated]
    earlier = [r for r in rnd.run.rounds() if r.number < rnd.number]
    data = {"sft": sft, "dpo": dpo, "train_sft": [x for r in earlier for x in read_jsonl(r.sft)] + sft,
            "train_dpo": [x for r in earlier for x in read_jsonl(r.dpo)] + dpo}
    write_jsonl(rnd.signals, signals)
    write_jsonl(rnd.revisions, revisions)
    write_jsonl(rnd.curated, curated)
    write_jsonl(rnd.rejected, rejected)
    for name, recs in data.items():
        write_jsonl(getattr(rnd, name), recs)
        save_dataset(recs, name.removeprefix("train_"), rnd.dataset(name))
    m = rnd.manifest
    manifest.record_stage(m, "signals", inputs=[rnd.conversations], outputs=[rnd.signals], counts={}, started=started)
    manifest.record_stage(m, "revise", inputs=[rnd.conversations, rnd.signals], outputs=[rnd.revisions], counts={},
                          started=started)
    manifest.record_stage(m, "curate", inputs=[rnd.revisions, rnd.signals], counts={}, started=started,
                          outputs=[rnd.curated, rnd.rejected, rnd.sft, rnd.dpo, rnd.train_sft, rnd.train_dpo])


def compare_outputs(rnd):
    """compare's files as it shapes them: probes from every round's curated turns, and one comparison's probes with
    answers, generations and judgments of an MT-Bench prompt and every held-out conversation's first turn."""
    rounds = [r for r in rnd.run.rounds() if r.number <= rnd.number]
    probes = [{"id": f"taught:{r['id']}", "kind": "taught", "question": r["context"][-1]["content"],
               "source": r["id"]} for x in rounds for r in read_jsonl(x.curated)]
    prompts = [{"id": "mt-1", "source": "mt_bench", "messages": [{"role": "user", "content": "Write a poem."}]}]
    prompts += [{"id": f"heldout-{c['id']}#0", "source": "heldout", "messages": c["messages"][:1]}
                for x in rounds for c in read_jsonl(x.heldout)]
    folder = EvalLayout(rnd.eval_dir(f"base_vs_{rnd.dir.name}"))
    write_jsonl(rnd.probes, probes)
    write_jsonl(folder.probes, [{**p, "answer_a": "a", "answer_b": "b"} for p in probes])
    write_jsonl(folder.generations, [{**p, "a": "x", "b": "y"} for p in prompts])
    write_jsonl(folder.judgments, [{"id": p["id"], "score": 0.5} for p in prompts])
    folder.summary.write_text("{}")
    manifest.record_stage(rnd.manifest, "compare", inputs=[rnd.curated, rnd.heldout], counts={}, started=0.0,
                          outputs=[folder.summary, rnd.probes])


@pytest.fixture
def run(tmp_path):
    """Round 1 trained on (an adapter); round 2 not yet (a half-done training checkpoint). Alice and bob chat in
    both; a chat file in round 2 uses alice's explicit conversation id too (collect renames hers ``-gw``)."""
    run = RunLayout(tmp_path / "runs" / "t")
    store = ChatStore(run.chats_db)
    # explicit ids: collect's held-out split hashes the id (derived ids depend on the random salt)
    a1 = say(store, "alice", [{"role": "user", "content": f"{MARK} my bank pin is 1234?"}], "noted", "alice-bank")
    say(store, "bob", [{"role": "user", "content": "capital of Peru?"}], "Lima", "b-peru")
    collect_round(run.round(1), run, [], gateway=True)
    stage_outputs(run.round(1))
    run.round(1).adapter.mkdir()
    run.round(1).adapter_weights.write_bytes(b"weights")
    manifest.record_stage(run.round(1).manifest, "train", inputs=[run.round(1).train_sft], counts={}, started=0.0,
                          outputs=[])

    say(store, "alice", [{"role": "user", "content": f"{MARK} my bank pin is 1234?"},
                         {"role": "assistant", "content": "noted"},
                         {"role": "user", "content": f"{MARK} it is 4321 now"}], "ok", a1)
    say(store, "alice", [{"role": "user", "content": f"{MARK} shared question"}], "answer", "shared-1")
    store.add_feedback("shared-1", "down", comment=f"{MARK} wrong")
    say(store, "alice", [{"role": "user", "content": f"{MARK} held out"}], "fine", "a-bank")  # lands in heldout
    say(store, "alice", [{"role": "user", "content": f"{MARK} unanswered"}], "", "a-empty")  # collect rejects it
    say(store, "bob", [{"role": "user", "content": "capital of Chile?"}], "Santiago", "b-chile")  # heldout
    say(store, "bob", [{"role": "user", "content": "capital of Chad?"}], "N'Djamena", "bob-1")
    store.close()
    chats = tmp_path / "file.jsonl"
    write_jsonl(chats, [{"id": "shared-1", "messages": [{"role": "user", "content": "from a file"},
                                                        {"role": "assistant", "content": "kept"}]}])
    collect_round(run.round(2), run, [chats], gateway=True, heldout_share=0.5)
    stage_outputs(run.round(2))
    compare_outputs(run.round(2))
    (run.round(2).train_ckpt / "sft" / "checkpoint-2").mkdir(parents=True)
    return run


def round_bytes(rnd) -> dict[str, bytes]:
    return {str(p.relative_to(rnd.dir)): p.read_bytes() for p in sorted(rnd.dir.rglob("*")) if p.is_file()}


def bob_records(rnd) -> dict[str, list]:
    """Every record of the round that is not alice's: her conversations are those with her mark (in this round or
    the one before, whose records train_sft accumulates); a turn record is hers when its conversation is."""
    hers = {c["id"] for r in rnd.run.rounds() for n in ("conversations", "heldout")
            for c in read_jsonl(getattr(r, n)) if MARK in json.dumps(c)}
    out = {n: [c for c in read_jsonl(getattr(rnd, n)) if c["id"] not in hers] for n in ("conversations", "heldout")}
    for n in ("signals", "revisions", "curated", "rejected", "sft", "dpo", "train_sft"):
        out[n] = [r for r in read_jsonl(getattr(rnd, n)) if r["id"].rsplit("#", 1)[0] not in hers]
    return out


def check_forgotten(run, round1_before, bob_before):
    r1, r2 = run.round(1), run.round(2)
    # trained on: the adapter is unchanged, the files are scrubbed (the next round's curate accumulates them)
    assert r1.adapter_weights.read_bytes() == round1_before[str(r1.adapter_weights.relative_to(r1.dir))]
    assert any(MARK.encode() in data for data in round1_before.values())
    for rnd in (r1, r2):
        for rel, data in round_bytes(rnd).items():
            assert MARK.encode() not in data, rel  # jsonl, manifest, the datasets' arrow files
    assert manifest.is_complete(r1.manifest, "train", [r1.train_sft])  # a trained round stays trained
    assert bob_records(r2) == bob_before
    folder = EvalLayout(r2.eval_dir("base_vs_round-002"))  # compare's files keep bob's and MT-Bench's records
    assert {r["id"] for r in read_jsonl(folder.generations)} == {"mt-1", "heldout-b-chile#0"}
    assert read_jsonl(r2.probes) and all("alice" not in r["source"] for r in read_jsonl(folder.probes))
    assert [c["id"] for c in read_jsonl(r2.conversations) + read_jsonl(r2.heldout)
            if c["source"] != "gateway"] == ["shared-1"]  # the file's record with alice's id stays
    assert not r2.train_ckpt.exists()
    for stage, inputs in (("signals", [r2.conversations]), ("revise", [r2.conversations, r2.signals]),
                          ("curate", [r2.revisions, r2.signals]), ("compare", [r2.curated, r2.heldout])):
        assert manifest.is_complete(r2.manifest, stage, inputs), stage  # nothing to redo on the old data
    import datasets

    for name in ("sft", "train_sft", "train_dpo"):
        rows = datasets.load_from_disk(str(r2.dataset(name))).to_list()
        assert rows == read_jsonl(getattr(r2, name))
    store = ChatStore(run.chats_db)
    assert all(MARK not in json.dumps(c) for c in store.export_conversations(consented_only=False))
    assert store.count() == 3  # bob's three
    store.close()
    for p in run.dir.glob("chats.sqlite*"):
        assert MARK.encode() not in p.read_bytes(), p.name  # secure_delete + checkpoint: no stale copy in the file


def test_forget_a_user_everywhere(run, capsys):
    r1, r2 = run.round(1), run.round(2)
    round1_before, bob_before = round_bytes(r1), bob_records(r2)
    alice_in_r2 = {n: sum(MARK in json.dumps(x) for x in read_jsonl(getattr(r2, n)))
                   for n in ("conversations", "heldout", "revisions", "train_sft")}
    alice_convs = [c for c in read_jsonl(r2.conversations) if MARK in json.dumps(c)]  # held-out ones: no turns
    alice_in_r2["signals"] = sum(len(assistant_turns(c)) for c in alice_convs)  # one signal per turn, no text
    assert (alice_in_r2["conversations"], alice_in_r2["heldout"]) == (2, 1)
    assert alice_in_r2["signals"] == alice_in_r2["revisions"] > 0 and alice_in_r2["train_sft"] >= 2

    # a comparison of sides that are not rounds lives in the run's own eval/ and holds held-out prompts too
    run_eval = EvalLayout(run.eval_dir("base_vs_base"))
    held = [{"id": f"heldout-{c['id']}#0", "source": "heldout", "messages": c["messages"][:1]}
            for c in read_jsonl(r2.heldout)]
    write_jsonl(run_eval.generations, [{**p, "a": "x", "b": "y"} for p in held])
    mine = sum(MARK in json.dumps(p) for p in held)
    assert mine and mine < len(held)
    run.answers.mkdir()  # compare's cache of greedy answers: it may answer her held-out turns
    (run.answers / "a.jsonl").write_text('{"key": "k", "text": "an answer", "finish_reason": "stop"}\n')
    dry = forget(run, users=["alice"], dry_run=True)
    assert round_bytes(r2) and dry.store == {"feedback": 1, "exchanges": 5, "conversations": 4}
    assert run.answers.exists()
    assert r2.train_ckpt.exists() and ChatStore(run.chats_db).count() == 7

    report = forget(run, users=["alice"])
    assert report.store["conversations"] == 4 and report.store["exchanges"] == 5 and report.store["feedback"] == 1
    assert report.files["round-002/import_rejected.jsonl"] == 1
    assert report.store["prefixes"] > 0
    for name, n in alice_in_r2.items():
        assert report.files.get(f"round-002/{getattr(r2, name).name}", 0) == n, name
    assert report.files["round-002/dataset/train_sft"] == alice_in_r2["train_sft"]
    assert {k: v for k, v in report.files.items() if k.endswith(".jsonl")} == \
        {k: v for k, v in dry.files.items() if k.endswith(".jsonl")}
    assert report.removed == ["round-002/train_ckpt", "answers"] and report.kept_trained["round-001"] > 0
    assert report.files["eval/base_vs_base/generations.jsonl"] == dry.files["eval/base_vs_base/generations.jsonl"] \
        == mine
    assert MARK not in run_eval.generations.read_text() and len(read_jsonl(run_eval.generations)) == len(held) - mine
    assert not run.answers.exists()
    check_forgotten(run, round1_before, bob_before)
    assert manifest.load(r2.manifest)["forgotten"][0]["records"]["signals.jsonl"] == alice_in_r2["signals"]

    again = forget(run, users=["alice"])  # nothing left to find
    assert not again.files and again.store["conversations"] == 0


def test_an_interrupted_forget_is_finished_by_running_it_again(run, monkeypatch):
    round1_before, bob_before = round_bytes(run.round(1)), bob_records(run.round(2))
    real, calls = forget_mod.write_atomic, []

    def crash_on_third(path, text, mode=0o644):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("kill")
        real(path, text, mode)

    monkeypatch.setattr(forget_mod, "write_atomic", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        forget(run, users=["alice"])
    monkeypatch.setattr(forget_mod, "write_atomic", real)
    assert ChatStore(run.chats_db).count() == 7  # the store goes last: the rerun still finds everything
    forget(run, users=["alice"])
    check_forgotten(run, round1_before, bob_before)


def test_forget_one_conversation_and_the_command(run):
    r1, r2 = run.round(1), run.round(2)
    first = "alice-bank"  # alice's, in both rounds
    mine = [r for r in read_jsonl(r2.train_sft) if r["id"].rsplit("#", 1)[0] == first]
    assert {r["round"] for r in mine} == {1, 2}  # round 1's record accumulated beside round 2's
    res = CliRunner().invoke(app, ["forget", "--conversation", first, "--set", f"run.root={run.dir.parent}",
                                   "--set", "run.name=t"])
    assert res.exit_code == 0, res.output
    assert "conversations 1," in res.output and "round-001: its adapter learnt from" in res.output
    assert f"round-002/train_sft.jsonl: {len(mine)} records" in res.output
    assert all(r["id"].rsplit("#", 1)[0] != first for r in read_jsonl(r2.train_sft))
    assert all(r["id"].rsplit("#", 1)[0] != first for r in read_jsonl(r1.sft))  # trained on: scrubbed too
    store = ChatStore(run.chats_db)
    assert store.get(first) is None and store.get("shared-1") is not None  # alice's other conversation stays
    store.close()

    run.answers.mkdir(exist_ok=True)
    res = CliRunner().invoke(app, ["forget", "--user", "nobody", "--set", f"run.root={run.dir.parent}",
                                   "--set", "run.name=t"])
    assert res.exit_code == 0 and "nothing found" in res.output
    assert run.answers.exists()  # nothing forgotten: the cache stays
    res = CliRunner().invoke(app, ["forget", "--set", f"run.root={run.dir.parent}"])
    assert res.exit_code == 2 and "--user or a --conversation" in res.output


def test_no_store_and_a_held_lock(tmp_path):
    from selfevolve.loop import LoopError, run_lock

    run = RunLayout(tmp_path / "runs" / "t")
    report = forget(run, conversations=["x"], log=lambda m: None)
    assert not report.found and report.store == {}
    with run_lock(run):
        with pytest.raises(LoopError):
            forget(run, users=["alice"], log=lambda m: None)
    shutil.rmtree(run.dir)
