"""Adapters for tests that load no model: a tiny stand-in base model (config + safetensors, the header is all the
checks read) and well-formed PEFT LoRA folders for it or for the real embedded base (PEFT's own config writer,
tensors shaped from the base model's safetensors header)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from selfevolve.adapters import BaseModel

TINY_BASE = "tiny-base"
"""Folder name of :func:`tiny_base` (an adapter's ``base_model_name_or_path`` names it by this last component)."""
TINY_SHAPES = {"model.embed_tokens.weight": (32, 16), "model.layers.0.self_attn.q_proj.weight": (16, 16),
               "model.layers.0.self_attn.k_proj.weight": (8, 16), "model.layers.0.self_attn.v_proj.weight": (8, 16),
               "model.layers.0.mlp.down_proj.weight": (16, 24), "model.layers.0.input_layernorm.weight": (16,)}


def tiny_base(parent: Path) -> Path:
    """``parent/tiny-base``: a Llama-shaped stand-in base model (one layer, hidden size 16)."""
    folder = Path(parent) / TINY_BASE
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(s, np.float32) for k, s in TINY_SHAPES.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 16}))
    return folder


def tiny_adapter(folder: Path, r: int = 4, config: dict | None = None) -> Path:
    """A small well-formed PEFT LoRA folder for :func:`tiny_base` (q_proj of layer 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    pre = "base_model.model.model.layers.0.self_attn.q_proj"
    rng = np.random.default_rng(0)
    save_file({f"{pre}.lora_A.weight": rng.normal(0, 0.02, (r, 16)).astype(np.float32),
               f"{pre}.lora_B.weight": rng.normal(0, 0.02, (16, r)).astype(np.float32)},
              str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
           "base_model_name_or_path": TINY_BASE, "bias": "none", "modules_to_save": None, "use_dora": False}
    (folder / "adapter_config.json").write_text(json.dumps(config if config is not None else cfg))
    return folder


def peft_config(base_path: str, **overrides) -> dict:
    """adapter_config.json as PEFT writes it (``LoraConfig.to_dict``, JSON round-trip) for ``base_path``."""
    from peft import LoraConfig

    kwargs = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    cfg = LoraConfig(**kwargs, base_model_name_or_path=base_path)
    d = json.loads(json.dumps(cfg.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
    d.update(overrides)
    return d


def lora_tensors(base: BaseModel, cfg: dict, seed: int = 0, scale: float = 0.02) -> dict:
    """``{PEFT tensor name: array}`` for every module of ``base`` that ``cfg['target_modules']`` names, with
    ``cfg['r']`` (PEFT's naming: ``base_model.model.<module>.lora_A.weight`` is (r, in), ``lora_B`` (out, r))."""
    rng = np.random.default_rng(seed)
    out = {}
    for module, (o, i) in sorted(base.shapes.items()):
        if module.rsplit(".", 1)[-1] in cfg["target_modules"]:
            out[f"base_model.model.{module}.lora_A.weight"] = rng.normal(0, scale, (cfg["r"], i)).astype(np.float32)
            out[f"base_model.model.{module}.lora_B.weight"] = rng.normal(0, scale, (o, cfg["r"])).astype(np.float32)
    return out


def write_adapter(folder: Path, cfg: dict, tensors: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder
