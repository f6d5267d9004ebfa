"""Backends: one protocol for every stage that generates.

``chat(batch, sampling, schema=None, adapter=None) -> list[Generation]`` takes a batch of message lists,
``logprobs(contexts, completions, adapter=None) -> list[list[float]]`` scores completions given their
chat context. Which backend runs is configuration (``backend.kind``); heavy imports happen inside
:func:`make_backend` so that ``import selfevolve`` stays fast.
"""
from __future__ import annotations

from .base import Backend, Generation, Sampling

__all__ = ["Backend", "Generation", "Sampling", "make_backend"]


def make_backend(cfg, model_path: str | None = None) -> Backend:
    """Build the backend ``cfg.backend.kind`` names for ``cfg.model`` (or ``model_path``)."""
    kind = cfg.backend.kind
    path = model_path or cfg.model.path
    if kind == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(path, cfg.backend, max_model_len=cfg.model.max_model_len)
    if kind == "openai":
        from .openai_backend import OpenAIBackend

        return OpenAIBackend(cfg.backend)
    if kind == "hf":
        from .hf_backend import HFBackend

        return HFBackend(path, seed=cfg.backend.seed)
    raise ValueError(f"backend.kind: unknown backend '{kind}'")
