"""Hostile adapters are refused with a clear reason, and what vLLM loads is the checked copy.

Each variant starts from a well-formed adapter for the real embedded base model (PEFT's own adapter_config.json,
tensors shaped from the base model's safetensors header, small random values), changes one thing, and must be
refused by :func:`stage_adapter` with the reason named. The unchanged adapter must pass (no variant is refused
for a reason the good one shares), and so must a real PEFT adapter saved from the loaded model (integration).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from selfevolve.adapters import BaseModel, DeployError, _open_folder, stage_adapter
from selfevolve.layout import RunLayout

from adapter_fixtures import lora_tensors, peft_config, write_adapter

MODEL = Path(__file__).resolve().parents[1] / ".cache/models/SmolLM2-135M-Instruct"
W, C = "adapter_model.safetensors", "adapter_config.json"
Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
V0 = "base_model.model.model.layers.0.self_attn.v_proj"  # (192, 576): a transposed pair cannot fit it
K0 = "base_model.model.model.layers.0.self_attn.k_proj"
E = "base_model.model.model.embed_tokens"


@pytest.fixture(scope="module")
def base():
    if not (MODEL / "model.safetensors").is_file():
        pytest.fail(f"{MODEL} is missing: run `make setup` first")
    return BaseModel.from_path(MODEL)


@pytest.fixture(scope="module")
def good(base):
    cfg = peft_config(str(MODEL))
    return cfg, lora_tensors(base, cfg)


@pytest.fixture
def run(tmp_path):
    r = RunLayout.of(tmp_path / "runs", "t")
    r.dir.mkdir(parents=True)
    return r


def _tensors(f, transform):
    """Rewrite the weights: ``transform(dict of arrays) -> dict of arrays``."""
    from safetensors.numpy import load_file

    save_file(transform(load_file(str(f / W))), str(f / W))


def _f(shape, fill=0.0):
    return np.full(shape, fill, np.float32)


def _edit(transform):
    """A variant that rewrites the weights: ``transform(dict of arrays) -> dict of arrays``."""
    return lambda f, t: _tensors(f, transform)


def _add(key, shape, fill=0.01):
    """A variant that adds (or replaces) one tensor."""
    return _edit(lambda d: {**d, key: _f(shape, fill)})


def _entry(shape, nbytes):
    return {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}


def _config(f, **changes):
    cfg = json.loads((f / C).read_text())
    cfg.update(changes)
    (f / C).write_text(json.dumps(cfg))


def _raw_header(f, entries: dict):
    """A safetensors file written by hand: header ``entries`` (may lie about shapes), zero data of its spans."""
    header = json.dumps(entries).encode()
    size = max(e["data_offsets"][1] for e in entries.values())
    (f / W).write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * size)


def _symlink_out(f, tmp_path):
    target = tmp_path / "outside.safetensors"
    target.write_bytes((f / W).read_bytes())
    (f / W).unlink()
    os.symlink(target, f / W)


def _hardlink_out(f, tmp_path):
    target = tmp_path / "outside.safetensors"
    target.write_bytes((f / W).read_bytes())  # a well-formed adapter: only the link is wrong
    (f / W).unlink()
    os.link(target, f / W)


def _rank(t, r):  # a consistent pair of another rank
    return {k: (v[:r] if ".lora_A." in k else v[:, :r]) for k, v in t.items()}


VARIANTS = {
    # files and links
    "corrupt-random": (lambda f, t: (f / W).write_bytes(os.urandom(4096)), "safetensors"),
    "truncated": (lambda f, t: (f / W).write_bytes((f / W).read_bytes()[:-100]), "safetensors"),
    "trailing-bytes": (lambda f, t: (f / W).write_bytes((f / W).read_bytes() + b"\0" * 8), "after the last tensor"),
    "huge-header-length": (lambda f, t: (f / W).write_bytes((1 << 40).to_bytes(8, "little") + b"{}"), "header length"),
    "pickle-bin": (lambda f, t: (f / "adapter_model.bin").write_bytes(b"\x80\x04cos\nsystem\n."), "pickle"),
    "pickle-pt-only": (lambda f, t: ((f / W).rename(f / "adapter_model.pt")), "pickle"),
    "weights-missing": (lambda f, t: (f / W).unlink(), "adapter_model.safetensors is missing"),
    "config-missing": (lambda f, t: (f / C).unlink(), "adapter_config.json is missing"),
    "symlink-out-of-run": (_symlink_out, "outside the run"),
    "hard-link-out-of-run": (_hardlink_out, "hard links"),
    "weights-is-a-folder": (lambda f, t: ((f / W).unlink(), (f / W).mkdir()), "not a regular file"),
    "extra-embedding-file": (lambda f, t: save_file({"weight": np.zeros((4, 576), np.float32)},
                                                   str(f / "new_embeddings.safetensors")), "new_embeddings.safetensors"),
    "extra-tokenizer": (lambda f, t: (f / "tokenizer.json").write_text("{}"), "tokenizer.json"),
    "extra-subfolder": (lambda f, t: (f / "nested-adapter").mkdir(), "nested-adapter"),
    # adapter_config.json
    "config-not-json": (lambda f, t: (f / C).write_text("{r: 8"), "does not parse"),
    "other-peft-type": (lambda f, t: _config(f, peft_type="IA3"), "not LORA"),
    "rank-zero": (lambda f, t: _config(f, r=0), "no valid rank"),
    "rank-bool": (lambda f, t: _config(f, r=True), "no valid rank"),
    "rank-over-max": (lambda f, t: _config(f, r=64), "exceeds lora_slots.max_rank=16"),
    "rank-pattern-over-max": (lambda f, t: _config(f, rank_pattern={"q_proj": 32}), "exceeds"),
    "other-base-model": (lambda f, t: _config(f, base_model_name_or_path="HuggingFaceTB/SmolLM2-360M-Instruct"),
                         "base_model_name_or_path"),
    "no-base-model": (lambda f, t: _config(f, base_model_name_or_path=None), "base_model_name_or_path"),
    "alpha-1e9": (lambda f, t: _config(f, lora_alpha=1e9), "lora_alpha"),
    "alpha-nan": (lambda f, t: (f / C).write_text((f / C).read_text().replace('"lora_alpha": 16', '"lora_alpha": NaN')),
                  "finite positive"),
    "alpha-negative": (lambda f, t: _config(f, lora_alpha=-16), "finite positive"),
    "alpha-string": (lambda f, t: _config(f, lora_alpha="16"), "finite positive"),
    "alpha-pattern-huge": (lambda f, t: _config(f, alpha_pattern={"v_proj": 1e6}), "alpha_pattern"),
    "dora": (lambda f, t: _config(f, use_dora=True), "DoRA"),
    "modules-to-save-lm-head": (lambda f, t: _config(f, modules_to_save=["lm_head"]), "modules_to_save"),
    "lora-bias": (lambda f, t: _config(f, lora_bias=True), "lora_bias"),
    "bias-all": (lambda f, t: _config(f, bias="all"), "bias"),
    "trainable-tokens": (lambda f, t: _config(f, trainable_token_indices=[1, 2]), "trainable_token_indices"),
    "pissa-init": (lambda f, t: _config(f, init_lora_weights="pissa_niter_4"), "init_lora_weights"),
    "layer-replication": (lambda f, t: _config(f, layer_replication=[[0, 4], [2, 6]]), "layer_replication"),
    "targets-embeddings": (lambda f, t: _config(f, target_modules=["q_proj", "v_proj", "embed_tokens"]), "embeddings"),
    "targets-regex-lm-head": (lambda f, t: _config(f, target_modules=".*"), "embeddings or the output head"),
    # tensors
    "config-rank-not-tensor-rank": (lambda f, t: _config(f, r=16), "gives rank 16"),
    "tensor-rank-not-config-rank": (_edit(lambda d: _rank(d, 4)), "gives rank 8"),
    "rank-pattern-mismatch": (lambda f, t: _config(f, rank_pattern={"model.layers.0.self_attn.q_proj": 4}),
                              "gives rank 4"),
    "wrong-in-features": (_add(f"{Q0}.lora_A.weight", (8, 512)), "the base layer is (576, 576)"),
    "transposed-pair": (_edit(lambda d: {**d, f"{V0}.lora_A.weight": d[f"{V0}.lora_B.weight"].T.copy(),
                                         f"{V0}.lora_B.weight": d[f"{V0}.lora_A.weight"].T.copy()}),
                        "the base layer is (192, 576)"),
    "lora-b-missing": (_edit(lambda d: {k: v for k, v in d.items() if k != f"{Q0}.lora_B.weight"}), "lora_B missing"),
    "module-not-in-base": (_edit(lambda d: {k.replace("layers.0.", "layers.99."): v for k, v in d.items()}),
                           "does not have"),
    "module-not-targeted": (_edit(lambda d: {**d, f"{K0}.lora_A.weight": _f((8, 576)), f"{K0}.lora_B.weight": _f((192, 8))}),
                            "does not name"),
    "embedding-lora": (_add(f"{E}.lora_embedding_A", (8, 49152)), "unexpected tensor"),
    "embedding-lora-a-b": (_add(f"{E}.lora_A.weight", (8, 49152)), "embeddings"),
    "lm-head-saved-module": (_add("base_model.model.lm_head.modules_to_save.default.weight", (4, 576)), "unexpected tensor"),
    "dora-magnitude": (_add(f"{Q0}.lora_magnitude_vector", (576,)), "unexpected tensor"),
    "lora-bias-tensor": (_add(f"{Q0}.lora_B.bias", (576,)), "unexpected tensor"),
    "negative-shapes": (lambda f, t: _raw_header(f, {f"{Q0}.lora_A.weight": _entry([-8, -576], 8 * 576 * 4)}),
                        "dimensions must be >= 1"),
    "zero-shapes": (lambda f, t: _raw_header(f, {f"{Q0}.lora_A.weight": _entry([0, 576], 0),
                                                 f"{Q0}.lora_B.weight": _entry([576, 0], 0)}), "dimensions must be >= 1"),
    "float-shape": (lambda f, t: _raw_header(f, {f"{Q0}.lora_A.weight": _entry([8.0, 576], 8 * 576 * 4)}),
                    "dimensions must be >= 1"),
    "integer-weights": (_edit(lambda d: {k: v.astype(np.int32) for k, v in d.items()}), "not floating point"),
    "nan-weights": (_add(f"{Q0}.lora_A.weight", (8, 576), np.nan), "NaN"),
    "huge-weights": (_add(f"{Q0}.lora_B.weight", (576, 8), 1e6), "magnitude"),
    "no-lora-tensors": (_edit(lambda d: {"__dummy": _f((1,))}), "unexpected tensor"),
}
"""What the README's security section counts: each is tried and must be refused."""


def test_the_good_adapter_passes_and_is_staged_private(run, base, good):
    folder = write_adapter(run.round(1).adapter, *good)
    (folder / "README.md").write_text("PEFT's model card")
    staged = stage_adapter(run, folder, 16, base, label="se-r001")
    assert staged.parent == run.staged_adapters and staged.name.startswith("se-r001-")
    assert sorted(os.listdir(staged)) == [C, W]  # the model card stays behind
    assert os.stat(run.staged_adapters).st_mode & 0o777 == 0o700 and os.stat(staged).st_mode & 0o777 == 0o700
    for name in (C, W):
        assert (staged / name).read_bytes() == (folder / name).read_bytes()
        assert os.stat(staged / name).st_mode & 0o777 == 0o400


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hostile_adapter_is_refused(run, base, good, tmp_path, variant):
    mutate, needle = VARIANTS[variant]
    folder = write_adapter(run.round(1).adapter, *good)
    mutate(folder, tmp_path)
    with pytest.raises(DeployError) as e:
        stage_adapter(run, folder, 16, base, label="se-r001")
    assert needle in str(e.value), str(e.value)
    assert not run.staged_adapters.exists() or list(run.staged_adapters.iterdir()) == []  # nothing left staged


def test_folder_swapped_for_a_link_is_not_followed(run, base, good, tmp_path):
    """The folder is opened from the run directory down without following links: a round folder that became a
    link after the path was resolved is refused at open."""
    outside = write_adapter(tmp_path / "outside" / "adapter", *good)
    run.round(1).dir.mkdir()
    os.symlink(outside, run.round(1).adapter)
    with pytest.raises(DeployError, match="changed into a link"):
        _open_folder(run.dir.resolve(), run.round(1).adapter)  # as if it had resolved before the swap


def test_the_staged_copy_is_what_was_checked(run, base, good):
    """Check-then-load: changing the round's folder after staging changes nothing vLLM reads."""
    folder = write_adapter(run.round(1).adapter, *good)
    digest = hashlib.sha256((folder / W).read_bytes()).hexdigest()
    staged = stage_adapter(run, folder, 16, base, label="se-r001")
    (folder / W).write_bytes(os.urandom(1000))  # swapped after the check
    (folder / C).write_text(json.dumps({**good[0], "lora_alpha": 1e9}))
    assert hashlib.sha256((staged / W).read_bytes()).hexdigest() == digest
    assert json.loads((staged / C).read_text())["lora_alpha"] == 16


@pytest.mark.integration
def test_a_real_peft_adapter_passes(run, base, tmp_path):
    """A PEFT adapter saved from the loaded base model (as train saves one) is accepted and staged whole."""
    from helpers import build_random_adapter

    folder = build_random_adapter(str(MODEL), run.round(1).adapter, seed=1)
    staged = stage_adapter(run, folder, 16, base, label="se-r001")
    assert (staged / W).read_bytes() == (folder / W).read_bytes()
    _config(folder, lora_alpha=1e9)
    with pytest.raises(DeployError, match="lora_alpha"):
        stage_adapter(run, folder, 16, base, label="se-r001")
