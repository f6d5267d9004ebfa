"""The whole curate stage on the real model: revise a few sample chats, curate them, feed TRL."""
import json
from dataclasses import replace

import pytest

from selfevolve.curate import curate_round
from selfevolve.layout import RunLayout
from selfevolve.records import read_jsonl, write_jsonl
from selfevolve.revise import run_revise

pytestmark = pytest.mark.integration


def test_curate_on_real_model(vllm_backend, default_cfg, sample_chats, tmp_path):
    from datasets import load_from_disk

    cfg = replace(default_cfg, curate=replace(default_cfg.curate))
    cfg.curate.judge = replace(cfg.curate.judge, enabled=True)  # auto would leave the 135M judge off
    cfg.curate.claims = replace(cfg.curate.claims, enabled=True)  # and the claims judge, before the pairwise one
    cfg.curate.order = [n for n in cfg.curate.order if n != "claims"]  # (which keeps few: claims would see none)
    cfg.curate.order.insert(cfg.curate.order.index("judge"), "claims")
    run = RunLayout(tmp_path / "run")
    rnd = run.round(1)
    convs = sample_chats[10:18]
    write_jsonl(rnd.conversations, convs)
    run_revise(convs, vllm_backend, cfg.revise, rnd.revisions, rnd.revisions_journal, show_progress=False)
    revisions = read_jsonl(rnd.revisions)

    s = curate_round(cfg, rnd, run, backend=vllm_backend, judge=vllm_backend, show_progress=False)

    kept, rejected = read_jsonl(rnd.curated), read_jsonl(rnd.rejected)
    assert s.read == len(revisions) == len(kept) + len(rejected) == s.kept + s.dropped
    assert all(r["filter"] in cfg.curate.order and r["reason"] for r in rejected)
    assert {r["id"] for r in kept} | {r["id"] for r in rejected} == {r["id"] for r in revisions}
    # Every record that reached the judge was judged in both orders by the real model.
    funnel = dict((name, seen) for name, seen, _ in s.funnel)
    for name in ("judge", "claims"):  # and every record that reached the claims judge got its verdict
        judged = [r for r in kept + rejected if name in r.get("scores", {})]
        assert len(judged) == funnel.get(name, 0)
    assert funnel["claims"] > 0  # records reached it: the real model answered its prompt in the schema
    assert all(r["claims"]["verdict"] == "keep" for r in kept if "claims" in r)
    sft, dpo = load_from_disk(str(rnd.dataset("train_sft"))), load_from_disk(str(rnd.dataset("train_dpo")))
    assert {"prompt", "completion"} <= set(sft.column_names) and len(sft) == s.kept
    assert {"prompt", "chosen", "rejected"} <= set(dpo.column_names) and len(dpo) == s.kept
    card = rnd.card.read_text()
    assert f"{s.read}" in card and rnd.lengths_plot.stat().st_size > 1000 and rnd.filters_plot.exists()
    manifest = json.loads(rnd.manifest.read_text())
    assert manifest["stages"]["curate"]["counts"]["read"] == s.read


def test_curated_datasets_feed_trl_without_conversion(default_cfg, tmp_path):
    """The on-disk shapes curate writes go straight into SFTTrainer and DPOTrainer (tokenized, one step)."""
    from datasets import load_from_disk
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from selfevolve.curate import save_dataset, to_dpo, to_sft

    recs = [{"id": f"c{i}#1", "context": [{"role": "user", "content": f"What is {i} plus {i}?"}],
             "original": f"{i} plus {i} is {i + i + 1}.", "revised": f"{i} plus {i} is {i + i}."} for i in range(4)]
    save_dataset([to_sft(r, 1) for r in recs], "sft", tmp_path / "sft")
    save_dataset([to_dpo(r, 1) for r in recs], "dpo", tmp_path / "dpo")
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True, save_strategy="no")
    sft = SFTTrainer(model=default_cfg.model.path, train_dataset=load_from_disk(str(tmp_path / "sft")),
                     args=SFTConfig(output_dir=str(tmp_path / "o1"), max_length=128, **common))
    assert sft.train().training_loss > 0
    dpo = DPOTrainer(model=default_cfg.model.path, train_dataset=load_from_disk(str(tmp_path / "dpo")),
                     args=DPOConfig(output_dir=str(tmp_path / "o2"), max_length=128, **common))
    assert dpo.train().training_loss > 0
