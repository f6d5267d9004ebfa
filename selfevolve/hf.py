"""The one way to load an HF causal LM and its tokenizer (transformers), for train, the transformers backend and
the tests' random adapters. vLLM loads the served model itself; ``model_prep`` reads a GGUF file its own way.

transformers is imported inside the functions: ``import selfevolve`` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(path: str | Path, **kwargs: Any):
    """``AutoTokenizer.from_pretrained(path)``; a tokenizer without a pad token gets its eos token as one
    (batches need padding, and TRL's collators and ``generate`` read ``pad_token_id``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: Any = "float32", **kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)``.

    ``dtype``: a torch dtype, its name (``"float32"``, ``"bfloat16"``) or ``"auto"`` (the checkpoint's own).
    fp32 by default: CPU kernels are fastest and exact in it; train passes bf16 on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
