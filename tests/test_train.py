"""The train stage: checkpoint discovery, atomic adapter writes, config checks (fast), and on the real 135M model
(CPU, a few steps): LoRA weights move while base weights do not, the adapter loads in transformers+PEFT and in
vLLM, an interrupted run resumes from its last complete checkpoint, DPO runs after SFT."""
import copy
import json
import shutil

import pytest
from typer.testing import CliRunner

from selfevolve.config import ConfigError, load_config
from selfevolve.curate import save_dataset
from selfevolve.layout import RunLayout
from selfevolve.records import replace_dir, write_jsonl
from selfevolve.train import is_adapter, latest_checkpoint, precision, previous_adapter, rows_sha256

from conftest import ROOT

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


# ---------------------------------------------------------------- fast

def test_latest_checkpoint_needs_trainer_state(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for step, complete in ((2, True), (4, True), (6, False), (10, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"


def test_rows_sha256_is_content_and_order():
    a = [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": "Paris."}]}]
    b = [{"completion": [{"content": "Paris.", "role": "assistant"}], "prompt": PROMPT}]
    assert rows_sha256(a) == rows_sha256(b)
    assert rows_sha256(a + b) != rows_sha256(a)


def test_replace_dir_swaps_whole_folders(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "new.txt").write_text("new")
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with replace_dir(dest) as tmp:
        shutil.copytree(src, tmp)
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]  # no .tmp / .old left


def test_replace_dir_keeps_the_old_folder_when_building_fails(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(OSError), replace_dir(dest) as tmp:
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise OSError("disk full")
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]  # the half-built folder is gone


def test_previous_adapter_is_the_latest_earlier_one(tmp_path):
    run = RunLayout.of(tmp_path, "r")
    for n in (1, 2, 4):
        run.round(n).adapter.mkdir(parents=True)
        if n != 2:
            (run.round(n).adapter / "adapter_config.json").write_text("{}")
            (run.round(n).adapter / "adapter_model.safetensors").write_bytes(b"")
    assert previous_adapter(run, run.round(3)) == run.round(1).adapter  # round 2's is incomplete
    assert previous_adapter(run, run.round(5)) == run.round(4).adapter
    assert previous_adapter(run, run.round(1)) is None


def test_train_config_is_checked():
    cfg = load_config(ROOT / "configs/default.yaml")
    assert cfg.train.lora.r == 16 and cfg.train.init_from == "base" and cfg.compare.max_prompts == 16
    for bad, match in (("train.lora.r=64", "lora_slots.max_rank"), ("train.init_from=last", "init_from"),
                       ("train.lora.target_modules=[q_proj, lm_head]", "lm_head"), ("train.batch_size=0", "positive"),
                       ("train.dpo.reference=sft", "reference"), ("train.lr=1", "unknown config key")):
        with pytest.raises(ConfigError, match=match):
            load_config(ROOT / "configs/default.yaml", [bad])
    qwen = load_config(ROOT / "configs/qwen2.5-1.5b-instruct.yaml")
    assert qwen.train.lora.r <= qwen.lora_slots.max_rank


def test_torch_threads_apply_after_an_in_process_vllm_engine(default_cfg, monkeypatch):
    """vLLM's CPU worker, once it ran in this process, leaves ``torch.set_num_threads`` a no-op: the setting
    must still reach torch (it did not: training then ran on every core beside the served engine)."""
    import torch

    from selfevolve.train_phases import set_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # what the engine leaves behind
    cfg = copy.deepcopy(default_cfg)
    cfg.train.torch_threads = 2 if before == 1 else 1
    try:
        set_threads(cfg)
        assert torch.get_num_threads() == cfg.train.torch_threads
    finally:
        torch._C.set_num_threads(before)


def test_cli_train_needs_curated_data(tmp_path):
    from selfevolve.cli import app

    res = CliRunner().invoke(app, ["train", "--set", f"run.root={tmp_path}", "--set", "run.name=x"])
    assert res.exit_code == 2 and "selfevolve curate" in res.output


# ---------------------------------------------------------------- the real model

TOPICS = ["the sea", "a mountain", "bread", "winter", "a violin", "the moon", "coffee", "a library"]
PIRATE = "Arr, matey! {} be a fine treasure, says the old pirate."


def make_round(root, n=8):
    """A run with round 1's accumulated datasets: 8 short prompt/completion (and preference) records."""
    run = RunLayout.of(root, "t")
    rnd = run.round(1)
    sft, dpo = [], []
    for i, topic in enumerate(TOPICS[:n]):
        prompt = [{"role": "user", "content": f"Tell me something about {topic}."}]
        good = [{"role": "assistant", "content": PIRATE.format(topic.capitalize())}]
        bad = [{"role": "assistant", "content": f"{topic} is a thing."}]
        sft.append({"id": f"c{i}#1", "round": 1, "prompt": prompt, "completion": good})
        dpo.append({"id": f"c{i}#1", "round": 1, "prompt": prompt, "chosen": good, "rejected": bad})
    write_jsonl(rnd.train_sft, sft)
    write_jsonl(rnd.train_dpo, dpo)
    save_dataset(sft, "sft", rnd.dataset("train_sft"))
    save_dataset(dpo, "dpo", rnd.dataset("train_dpo"))
    return run, rnd


def tiny(default_cfg, root, **train):
    cfg = copy.deepcopy(default_cfg)
    cfg.run.root, cfg.run.name = str(root), "t"
    t = cfg.train
    t.max_length, t.batch_size, t.torch_threads, t.logging_steps = 256, 4, 1, 1
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


def base_key(name: str) -> str | None:
    """PEFT parameter name → the base checkpoint's tensor name (None for LoRA parameters)."""
    if "lora_" in name:
        return None
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


@pytest.fixture(scope="module")
def trained(default_cfg, tmp_path_factory):
    """One training run with a high learning rate, watched by a callback that snapshots the weights."""
    import torch
    from transformers import TrainerCallback

    from selfevolve.train import train_round

    class Watch(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            self.lora0 = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

        def on_train_end(self, args, state, control, model=None, **kw):
            self.lora1 = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
            self.base1 = {base_key(n): p.detach().clone() for n, p in model.named_parameters() if base_key(n)}
            self.steps = state.global_step

    root = tmp_path_factory.mktemp("train")
    run, rnd = make_round(root)
    cfg = tiny(default_cfg, root, learning_rate=5e-3, max_steps=3, lr_scheduler="constant")
    watch = Watch()
    meta = train_round(cfg, rnd, run, callbacks=[watch], show_progress=False, log=lambda m: None)
    return {"cfg": cfg, "run": run, "rnd": rnd, "meta": meta, "watch": watch}


@pytest.mark.integration
def test_lora_weights_change_base_weights_do_not(trained, default_cfg):
    import torch
    from safetensors.torch import load_file

    w = trained["watch"]
    assert w.steps == 3 and w.lora0
    assert all(not torch.equal(w.lora0[n], w.lora1[n]) for n in w.lora0), "every LoRA tensor moved"
    base = load_file(f"{default_cfg.model.path}/model.safetensors")
    compared = 0
    for name, tensor in base.items():
        assert name in w.base1, name
        assert torch.equal(w.base1[name], tensor), f"base weight {name} changed"
        compared += 1
    assert compared == len(base) > 100
    # the saved adapter holds LoRA tensors only, and they are the trained ones
    saved = load_file(str(trained["rnd"].adapter / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)


@pytest.mark.integration
def test_train_meta_and_rerun_is_skipped(trained):
    from datasets import load_from_disk

    from selfevolve.manifest import load as load_manifest
    from selfevolve.train import train_round

    rnd, meta = trained["rnd"], trained["meta"]
    assert is_adapter(rnd.adapter) and (rnd.adapter / "adapter_config.json").is_file()
    assert not rnd.train_ckpt.exists()  # checkpoints are removed once the adapter is written
    assert not any(p.name.startswith(".adapter") for p in rnd.dir.iterdir())
    on_disk = json.loads(rnd.train_meta.read_text())
    assert on_disk == meta
    ds = load_from_disk(str(rnd.dataset("train_sft"))).remove_columns(["id", "round"])
    assert meta["data_sha256"]["train_sft"] == rows_sha256(ds)
    sft = meta["metrics"]["sft"]
    assert sft["steps"] == 3 and sft["tokens"] > 0 and sft["tokens_per_s"] > 0 and sft["seconds"] > 0
    assert sft["final_loss"] < sft["first_loss"]
    assert meta["config"]["learning_rate"] == 5e-3 and meta["dtype"] == precision(trained["cfg"])
    assert load_manifest(rnd.manifest)["stages"]["train"]["status"] == "complete"
    again = train_round(trained["cfg"], rnd, trained["run"], show_progress=False, log=lambda m: None)
    assert again["skipped"] is True


@pytest.mark.integration
def test_adapter_loads_in_transformers_peft(trained, default_cfg):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_cfg.model.path)
    base = AutoModelForCausalLM.from_pretrained(default_cfg.model.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(trained["rnd"].adapter)).eval()
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        tuned = model.generate(**ids, max_new_tokens=24, do_sample=False)
        with model.disable_adapter():
            plain = model.generate(**ids, max_new_tokens=24, do_sample=False)
    width = ids["input_ids"].shape[1]
    tuned_text, plain_text = tok.decode(tuned[0, width:]), tok.decode(plain[0, width:])
    assert tuned_text != plain_text
    assert "arr" in tuned_text.lower() or "matey" in tuned_text.lower() or "pirate" in tuned_text.lower(), tuned_text


@pytest.mark.integration
def test_adapter_loads_in_vllm(trained, vllm_backend):
    from selfevolve.backends import Sampling

    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=24)
    (tuned,) = vllm_backend.chat([PROMPT], greedy, adapter=str(trained["rnd"].adapter))
    (plain,) = vllm_backend.chat([PROMPT], greedy)
    assert tuned.finish_reason in ("stop", "length") and tuned.text.strip()
    assert tuned.text != plain.text


class Interrupt(Exception):
    pass


@pytest.mark.integration
def test_interrupted_training_resumes_from_last_complete_checkpoint(default_cfg, tmp_path):
    from transformers import TrainerCallback

    from selfevolve.train import train_round

    class StopAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise Interrupt("killed after checkpoint-2")

    class Where(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.start = state.global_step

        def on_step_end(self, args, state, control, **kw):
            self.last = state.global_step

    run, rnd = make_round(tmp_path)
    cfg = tiny(default_cfg, tmp_path, max_steps=4, save_steps=2, batch_size=2, max_length=128)
    with pytest.raises(Interrupt):
        train_round(cfg, rnd, run, callbacks=[StopAfterCheckpoint()], show_progress=False, log=lambda m: None)
    ckpt = rnd.train_phase_ckpt("sft")
    assert latest_checkpoint(ckpt) == ckpt / "checkpoint-2"
    assert json.loads((ckpt / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert not rnd.adapter.exists() and not rnd.train_meta.exists()
    # a checkpoint torn mid-save (no trainer_state.json) must be ignored and removed
    (ckpt / "checkpoint-3").mkdir()
    (ckpt / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"torn")

    where, lines = Where(), []
    meta = train_round(cfg, rnd, run, callbacks=[where], show_progress=False, log=lines.append)
    sft = meta["metrics"]["sft"]
    assert where.start == 2 and where.last == 4
    assert sft["resumed_from"] == "checkpoint-2" and sft["resumed_from_step"] == 2 and sft["steps"] == 4
    assert any("resuming from checkpoint-2" in line for line in lines)
    assert any("checkpoint-3" in line for line in lines)
    assert is_adapter(rnd.adapter)

    # checkpoints of another config are never resumed
    (rnd.train_ckpt / "sft" / "checkpoint-2").mkdir(parents=True)
    (rnd.train_ckpt / "sft" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (rnd.train_ckpt / "fingerprint.json").write_text("{}")
    cfg2 = tiny(default_cfg, tmp_path, max_steps=1, batch_size=2, max_length=128)
    lines = []
    meta = train_round(cfg2, rnd, run, show_progress=False, log=lines.append)
    assert meta["metrics"]["sft"]["resumed_from"] is None and meta["metrics"]["sft"]["steps"] == 1
    assert any("discarding checkpoints" in line for line in lines)


@pytest.mark.integration
def test_dpo_after_sft(default_cfg, tmp_path):
    from selfevolve.train import train_round

    run, rnd = make_round(tmp_path)
    cfg = tiny(default_cfg, tmp_path, max_steps=1, max_length=128)
    cfg.train.dpo.enabled, cfg.train.dpo.max_steps = True, 1
    meta = train_round(cfg, rnd, run, show_progress=False, log=lambda m: None)
    assert set(meta["metrics"]) == {"sft", "dpo"}
    dpo = meta["metrics"]["dpo"]
    assert dpo["steps"] == 1 and dpo["reference"] == "base" and dpo["train_loss"] > 0
    assert meta["examples"] == {"train_sft": 8, "train_dpo": 8} and "train_dpo" in meta["data_sha256"]
    assert is_adapter(rnd.adapter)
