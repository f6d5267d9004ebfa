"""``selfevolve publish``: the folder for real (files, cards with the round's figures, refusals), the push with
huggingface_hub's API replaced by a recorder (no network here), and the published adapter loaded with PEFT."""
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from selfevolve import manifest
from selfevolve.cli import app
from selfevolve.config import Config
from selfevolve.errors import ConfigError
from selfevolve.layout import RunLayout
from selfevolve.publish import PublishConfig, PublishError, publish
from selfevolve.records import sha256_file, write_json, write_jsonl

from test_report import PROBES, summary

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / ".cache/models/SmolLM2-135M-Instruct"


def curated(rid, label, use):
    return {"id": rid, "context": [{"role": "user", "content": f"q {rid}"}], "original": "old", "revised": "new",
            "signal": {"label": label}, "use": use}


def sft(rid, rnd):
    return {"id": rid, "round": rnd, "prompt": [{"role": "user", "content": f"q {rid}"}],
            "completion": [{"role": "assistant", "content": "new"}]}


def make_round(run: RunLayout, n=1, *, promote=True, adapter=None, gate=True) -> None:
    """A trained, compared and gated round as the stages leave it (the adapter: fake bytes unless given)."""
    rnd = run.round(n)
    if adapter is None:
        rnd.adapter.mkdir(parents=True)
        (rnd.adapter / "adapter_config.json").write_text('{"r": 8}')
        (rnd.adapter / "adapter_model.safetensors").write_bytes(b"weights")
    write_jsonl(rnd.curated, [curated("c1#1", "corrected", "revised"), curated("c2#1", "corrected", "revised"),
                              curated("c3#1", "confirmed", "original")])
    write_jsonl(rnd.train_sft, [sft("c1#1", n), sft("c2#1", n), sft("c3#1", n)])
    write_jsonl(rnd.train_dpo, [{**sft("c1#1", n), "chosen": [], "rejected": []}])
    write_json(rnd.train_meta, {
        "round": n, "base_model": str(MODEL), "adapter_sha256": sha256_file(rnd.adapter_weights), "device": "cpu",
        "dtype": "fp32", "seconds": 61.5, "data_sha256": {"train_sft": "ab" * 32},
        "examples": {"train_sft": 3, "train_dpo": 1}, "config": {"learning_rate": 0.0002, "epochs": 2},
        "metrics": {"sft": {"steps": 6, "first_loss": 2.3, "final_loss": 1.1, "train_loss": 1.5, "tokens": 1234,
                            "tokens_per_s": 64.0}}})
    manifest.record_stage(rnd.manifest, "curate", inputs=[], outputs=[rnd.curated], started=0.0,
                          counts={"read": 10, "kept": 3, "dropped_per_filter": {"structural": 4, "signal": 3}},
                          order=["structural", "signal"])
    s = summary("base", rnd.dir.name, n, probes=PROBES)
    path = rnd.eval_dir(s["label"]) / "summary.json"
    write_json(path, s)
    manifest.record_stage(rnd.manifest, "compare", inputs=[], outputs=[path], counts={}, started=0.0)
    if gate:
        decision = {"promote": promote, "reason": "round-001 vs base: taught 3→7/10" if promote else
                    "round-001 vs base: blocked by kept 8→7/8",
                    "checks": [{"name": "taught", "ok": True, "text": "taught 3→7/10"},
                               {"name": "kept", "ok": promote, "text": "kept 8→7/8"}]}
        manifest.record_stage(rnd.manifest, "gate", inputs=[path], outputs=[], counts={}, started=0.0,
                              decision=decision)


@pytest.fixture
def setup(tmp_path):
    run = RunLayout.of(tmp_path / "runs", "t")
    cfg = Config()
    cfg.run.root, cfg.run.name, cfg.model.path = str(run.dir.parent), "t", str(MODEL)
    return cfg, run


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_folder_has_adapter_data_and_cards_with_the_rounds_figures(setup):
    cfg, run = setup
    make_round(run)
    res = publish(cfg, run, 1, log=lambda m: None)
    folder = run.dir / "publish" / "round-001"
    assert res.folder == folder and res.url is None and not res.forced
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (folder / "adapter" / name).read_bytes() == (run.round(1).adapter / name).read_bytes()
    for name in ("train_sft.jsonl", "train_dpo.jsonl"):
        assert (folder / "dataset" / name).read_bytes() == (run.round(1).dir / name).read_bytes()
    card = (folder / "README.md").read_text()
    fm = front_matter(card)
    assert fm["base_model"] == "SmolLM2-135M-Instruct" and fm["library_name"] == "peft"
    assert fm["license"] == "apache-2.0" and {"peft", "lora", "selfevolve"} <= set(fm["tags"])
    assert "| taught | 10 | 3 → 7 (30.0% → 70.0%) | +40.0% (+10.0%…+70.0%) | 4 / 0 | 0.125 |" in card
    assert "| reworded | 10 | 2 → 5 (20.0% → 50.0%)" in card and "| kept | 8 | 8 → 7 (100.0% → 87.5%)" in card
    assert "Pairwise judge: not asked" in card and "| distinct-2 | 0.610 | 0.580 |" in card
    assert "**Promoted**: round-001 vs base: taught 3→7/10" in card and "- ✓ kept: kept 8→7/8" in card
    assert "sft: 6 steps, loss 2.3000 → 1.1000 (mean 1.5000), 1,234 tokens, 64 tokens/s" in card
    assert '"learning_rate": 0.0002' in card and "3 SFT examples and 1 preference pairs" in card
    assert 'PeftModel.from_pretrained(base, "<this folder>", subfolder="adapter")' in card
    assert "converted from `SmolLM2-135M-Instruct.Q4_1.gguf`" in card  # the base is a conversion, not the hub's
    data_card = (folder / "dataset" / "README.md").read_text()
    dfm = front_matter(data_card)
    assert [c["data_files"] for c in dfm["configs"]] == ["train_sft.jsonl", "train_dpo.jsonl"]
    assert "| corrected | 2 |" in data_card and "| confirmed | 1 |" in data_card
    assert "| revised | 2 |" in data_card and "| original | 1 |" in data_card
    assert "Filters, in order: structural, signal. Round 1 read 10 turns, kept 3 (dropped: structural 4, signal 3)" \
        in data_card
    assert "Chat content from users who consented; see the privacy section" in data_card


def test_republishing_replaces_the_folder_whole(setup, tmp_path):
    cfg, run = setup
    make_round(run)
    out = tmp_path / "elsewhere"
    publish(cfg, run, 1, out=out, log=lambda m: None)
    (out / "stale.txt").write_text("from an earlier publish")
    publish(cfg, run, 1, out=out, log=lambda m: None)
    assert not (out / "stale.txt").exists() and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob(".elsewhere.*"))  # no temporary sibling left behind


def test_hub_id_base_model(setup):
    cfg, run = setup
    make_round(run)
    cfg.model.path = "Qwen/Qwen2.5-1.5B-Instruct"  # not a local folder: a hub id, as the GPU config has it
    publish(cfg, run, 1, log=lambda m: None)
    assert front_matter((run.dir / "publish/round-001/README.md").read_text())["base_model"] == \
        "Qwen/Qwen2.5-1.5B-Instruct"
    assert "converted from" not in (run.dir / "publish/round-001/README.md").read_text()


def test_refusals(setup):
    cfg, run = setup
    make_round(run, promote=False)
    with pytest.raises(PublishError, match="did not promote it.*--force"):
        publish(cfg, run, 1, log=lambda m: None)
    assert not (run.dir / "publish").exists()
    said = []
    res = publish(cfg, run, 1, force=True, log=said.append)
    assert res.forced and any("publishing anyway" in m for m in said)
    card = (res.folder / "README.md").read_text()
    assert "**Published without promotion** (`--force`)" in card and "**Not promoted**" in card
    assert "- ✗ kept: kept 8→7/8" in card
    (run.round(1).adapter_weights).write_bytes(b"other weights")  # not the adapter train_meta describes
    with pytest.raises(PublishError, match="sha256 differs"):
        publish(cfg, run, 1, force=True, log=lambda m: None)
    with pytest.raises(PublishError, match="does not exist"):
        publish(cfg, run, 9, force=True, log=lambda m: None)


def test_no_adapter_or_no_gate(setup):
    cfg, run = setup
    make_round(run, gate=False)
    with pytest.raises(PublishError, match="no gate decision"):
        publish(cfg, run, 1, log=lambda m: None)
    assert publish(cfg, run, 1, force=True, log=lambda m: None).forced
    (run.round(1).adapter / "adapter_config.json").unlink()
    with pytest.raises(PublishError, match="has no adapter"):
        publish(cfg, run, 1, force=True, log=lambda m: None)  # --force never publishes a missing adapter


class FakeHub:
    """Records the HfApi calls publish makes (no network on this machine)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw["repo_id"], kw))
        return "commit"


def test_push_creates_the_repo_and_uploads_the_folder(setup, monkeypatch):
    cfg, run = setup
    make_round(run)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hub = FakeHub()
    res = publish(cfg, run, 1, repo="me/smol-round-1", api=hub, log=lambda m: None)
    assert res.url == "https://huggingface.co/me/smol-round-1"
    (c_name, c_repo, c_kw), (u_name, u_repo, u_kw) = hub.calls
    assert (c_name, c_repo, u_name, u_repo) == ("create_repo", "me/smol-round-1", "upload_folder", "me/smol-round-1")
    assert c_kw == {"token": "hf_test_token", "private": True, "repo_type": "model", "exist_ok": True}
    assert u_kw["folder_path"] == str(res.folder) and u_kw["token"] == "hf_test_token" and "round 1" in \
        u_kw["commit_message"]
    assert 'PeftModel.from_pretrained(base, "me/smol-round-1", subfolder="adapter")' in \
        (res.folder / "README.md").read_text()
    # publish.repo from the config, made public from the command line
    cfg.publish = PublishConfig(repo="me/from-config")
    hub = FakeHub()
    publish(cfg, run, 1, private=False, api=hub, log=lambda m: None)
    assert hub.calls[0][1] == "me/from-config" and hub.calls[0][2]["private"] is False


def test_a_failed_push_is_a_publish_error(setup, monkeypatch):
    cfg, run = setup
    make_round(run)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    class Refusing(FakeHub):
        def upload_folder(self, **kw):
            raise PermissionError("403 Forbidden")

    with pytest.raises(PublishError, match="push to me/x failed .PermissionError: 403 Forbidden.; the folder"):
        publish(cfg, run, 1, repo="me/x", api=Refusing(), log=lambda m: None)
    assert (run.dir / "publish/round-001/adapter/adapter_model.safetensors").is_file()
    with pytest.raises(PublishError, match="not a Hub repo id"):
        publish(cfg, run, 1, repo="no-owner", api=FakeHub(), log=lambda m: None)


def test_cli_without_a_token_exits_2_and_keeps_the_folder(setup, monkeypatch, tmp_path):
    import huggingface_hub.constants

    cfg, run = setup
    make_round(run)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login
    args = ["publish", "--round", "1", "--repo", "me/x", "--set", f"run.root={run.dir.parent}",
            "--set", "run.name=t", "--set", f"model.path={MODEL}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "no Hugging Face token" in res.output and "HF_TOKEN" in res.output
    assert (run.dir / "publish/round-001/README.md").is_file()
    res = CliRunner().invoke(app, args[:3] + args[5:])  # no repo: the folder only
    assert res.exit_code == 0 and "wrote" in res.output


def test_publish_config_validates():
    PublishConfig(repo="me/name").validate("publish")
    with pytest.raises(ConfigError, match="publish.repo"):
        PublishConfig(repo="not a repo").validate("publish")


def test_published_adapter_loads_with_peft(setup):
    """A real PEFT adapter, published, loads from the folder as the card says, with the weights it was saved with
    (about 10 s: under the 15 s that would make it an integration test)."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from helpers import build_random_adapter

    cfg, run = setup
    build_random_adapter(str(MODEL), run.round(1).adapter, seed=3)
    make_round(run, adapter=run.round(1).adapter)
    folder = publish(cfg, run, 1, log=lambda m: None).folder
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(MODEL)), str(folder),
                                      subfolder="adapter")
    saved = load_file(str(run.round(1).adapter_weights))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(saved) == len(loaded) > 0
    for name, tensor in saved.items():
        key = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[key], tensor), name
