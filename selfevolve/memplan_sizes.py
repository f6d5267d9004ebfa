"""What a round's parts need and what a GPU has, per GPU, in bytes: the numbers selfevolve/memplan.py plans with.

Estimates come from the model's ``config.json`` (no weights read) and err high: the training activations assume
a full micro-batch of ``train.batch_size`` sequences of ``train.max_length`` tokens (the Trainer pads to the
longest), and the logits of a large vocabulary dominate (Qwen2.5: 151,936 per token). The GPU is measured with
``torch.cuda.mem_get_info``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

GIB = 1024 ** 3
WEIGHT_BYTES = 2
"""bf16 on a GPU: vLLM serves a float32 checkpoint in bf16, and train loads the base in bf16 on CUDA."""
CUDA_CONTEXT = int(0.75 * GIB)
"""A new process's CUDA context (~0.3–0.6 GiB) plus slack, which vLLM's start-up check already sees as used."""
ENGINE_OVERHEAD = 2 * GIB
"""vLLM's own use inside its share besides weights and KV cache: the profiled activation peak, CUDA graphs, the
non-torch memory (NCCL, cuBLAS workspaces). Measured logs show 0.3–1.5 GiB for 1–8B models; 2 is the margin."""
SLEEP_RESIDUAL = {1: 1 * GIB, "tp": int(2.5 * GIB)}
"""What an engine asleep at level 1 still holds per GPU (CUDA context, graph pool): ~0.8 GiB at tensor parallel 1,
~2.4 GiB at 2 (NVIDIA-NeMo/RL#223)."""
LOGIT_BYTES = 12
"""Bytes per vocabulary entry per token at the loss: bf16 logits, their fp32 copy, fp32 log-softmax kept for the
backward pass (the gradient reuses freed blocks)."""
TRAIN_OVERHEAD = int(1.5 * GIB)
"""Training's CUDA context, cuBLAS workspace and allocator fragmentation."""


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# ---------------------------------------------------------------- the model, from its config.json

@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_hf_config(cls, c: dict, name: str = "") -> "ModelShape":
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        return cls(name or c.get("_name_or_path", ""), c["hidden_size"], c["num_hidden_layers"], heads,
                   c.get("num_key_value_heads") or heads, head_dim, c["intermediate_size"], c["vocab_size"],
                   bool(c.get("tie_word_embeddings", False)))

    def _linear(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer, by its Llama/Qwen name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def params(self) -> int:
        """Parameters (biases and norms left out: < 0.1%)."""
        per_layer = sum(a * b for a, b in self._linear().values())
        return self.layers * per_layer + self.vocab * self.hidden * (1 if self.tied else 2)

    def lora_params(self, rank: int, modules) -> int:
        return self.layers * sum(rank * (a + b) for m, (a, b) in self._linear().items() if m in modules)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * WEIGHT_BYTES

    def activation_bytes_per_token_layer(self) -> int:
        """What one decoder layer keeps for the backward pass per token, bf16: attention (norm in/out, q, k, v,
        output) 5h + 2kv, SwiGLU MLP (norm in/out, gate, up, act, product) 2h + 4i, and the inputs LoRA's dropout
        copies for its 7 modules 6h + i. Above the classic 34h bytes for a GPT layer: errs high."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        return (13 * h + 2 * kv + 5 * i) * 2


def model_shape(path: str) -> ModelShape:
    """The shape of ``model.path``: its config.json, from the folder or (a hub id) the hub's cache."""
    local = Path(path) / "config.json"
    if local.is_file():
        return ModelShape.from_hf_config(json.loads(local.read_text()), str(path))
    from huggingface_hub import hf_hub_download

    try:
        return ModelShape.from_hf_config(json.loads(Path(hf_hub_download(path, "config.json")).read_text()), path)
    except Exception as e:  # offline, a typo: the engine could not load it either
        raise ConfigError(f"model.path: cannot read {path}'s config.json for the memory plan ({e})") from None


# ---------------------------------------------------------------- what each part needs, per GPU

def engine_need(shape: ModelShape, *, max_model_len: int, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                max_rank: int = 16, max_loras: int = 2) -> dict[str, int]:
    """The least share of a GPU a vLLM engine can start with: its weights, one sequence of ``max_model_len``
    in the KV cache (vLLM refuses less), its LoRA slots (each ``max_rank`` on every linear layer), overhead."""
    shards = tensor_parallel * pipeline_parallel
    modules = shape._linear().keys()
    return {"weights": shape.params * WEIGHT_BYTES // shards,
            "kv_cache (one max_model_len sequence)": shape.kv_bytes_per_token * max_model_len // shards,
            "lora slots": max_loras * shape.lora_params(max_rank, modules) * WEIGHT_BYTES // shards,
            "overhead": ENGINE_OVERHEAD}


def train_need(shape: ModelShape, t, *, batch_size: int | None = None, max_length: int | None = None,
               checkpointing: bool | None = None) -> dict:
    """LoRA training per GPU (each DDP process holds the whole model): bf16 weights, fp32 LoRA weights + grads +
    AdamW's two moments (16 bytes each), activations of a full micro-batch, its logits, overhead."""
    tokens = (batch_size or t.batch_size) * (max_length or t.max_length)
    layer = shape.activation_bytes_per_token_layer()
    if t.gradient_checkpointing if checkpointing is None else checkpointing:
        # each layer's input kept, one layer's activations recomputed at a time
        acts = tokens * (shape.layers * shape.hidden * 2 + layer)
    else:
        acts = tokens * shape.layers * layer
    return {"weights": shape.params * WEIGHT_BYTES,
            "lora + grads + adam": shape.lora_params(t.lora.r, t.lora.target_modules) * 16,
            "activations": acts, "logits": tokens * shape.vocab * LOGIT_BYTES, "overhead": TRAIN_OVERHEAD}


# ---------------------------------------------------------------- the GPU, measured on this machine

@dataclass(frozen=True)
class Gpu:
    total: int
    """Bytes per GPU (``torch.cuda.mem_get_info``'s total: e.g. 139.80 GiB on an H200)."""
    free: int
    """Bytes free now on the GPU the round starts on."""
    count: int = 1
    """GPUs visible to this process."""
    name: str = ""


def cuda_gpu() -> Gpu | None:
    """The current CUDA (or ROCm) device's memory (``torch.cuda.mem_get_info``), None without one: no plan on
    CPU (nor on XPU, whose memory this module does not read)."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return Gpu(total, free, torch.cuda.device_count(), torch.cuda.get_device_name())
