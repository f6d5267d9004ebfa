"""Backends: one protocol for every stage that generates.

``chat(batch, sampling, schema=None, adapter=None) -> list[Generation]`` takes a batch of message lists,
``logprobs(contexts, completions, adapter=None) -> list[list[float]]`` scores completions given their
chat context. Which backend runs is configuration (``backend.kind``); heavy imports happen inside
:func:`make_backend` so that ``import selfevolve`` stays fast.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from .base import Backend, Generation, Sampling

__all__ = ["Backend", "Generation", "Sampling", "borrow", "borrow_judge", "make_backend"]


def make_backend(cfg, model_path: str | None = None) -> Backend:
    """Build the backend ``cfg.backend.kind`` names for ``cfg.model`` (or ``model_path``)."""
    kind = cfg.backend.kind
    path = model_path or cfg.model.path
    if kind == "vllm" and cfg.backend.use_server == "auto" and model_path in (None, cfg.model.path):
        served = find_served(cfg)
        if served is not None:
            return served
    if kind == "vllm":
        from ..memplan import check_round
        from .vllm_backend import VLLMBackend

        check_round(cfg, serving=_serving(cfg))  # a plan that cannot fit is refused before the engine starts
        return VLLMBackend(path, cfg.backend, max_model_len=cfg.model.max_model_len, slots=cfg.lora_slots)
    if kind == "openai":
        from .openai_backend import OpenAIBackend

        backend = OpenAIBackend(cfg.backend)
        backend.check("backend")
        return backend
    if kind == "hf":
        from .hf_backend import HFBackend

        return HFBackend(path, seed=cfg.backend.seed)
    if kind == "ray":
        from .ray_backend import RayBackend

        return RayBackend(path, cfg.backend, ray_cfg=cfg.ray, max_model_len=cfg.model.max_model_len,
                          slots=cfg.lora_slots)
    raise ValueError(f"backend.kind: unknown backend '{kind}'")


def find_served(cfg) -> Backend | None:
    """This run's served engine when `selfevolve serve` is up (selfevolve/backends/served_backend.py), else None."""
    from ..layout import RunLayout
    from .served_backend import ServedBackend, find_server

    found = find_server(RunLayout.of(cfg.run.root, cfg.run.name))
    if found is None:
        return None
    print(f"backend: the served engine at {found[0]} (no second engine; backend.use_server: never to start one)")
    return ServedBackend(*found, cfg.backend)


def _serving(cfg) -> str:
    """``running`` when ``selfevolve serve`` of this run left its serve.json (its engine's memory is then out of
    the measured free memory; the plan's advice mentions it), else ``none``."""
    from ..layout import RunLayout

    return "running" if RunLayout.of(cfg.run.root, cfg.run.name).serve_info.exists() else "none"


@contextmanager
def borrow(cfg, given: Backend | None = None, build: Callable[[], Backend] | None = None) -> Iterator[Backend]:
    """``given`` as it is (its owner closes it), else one built now (``build()``, by default
    :func:`make_backend` of ``cfg``) and closed when the block ends: a caller closes only what it built."""
    if given is not None:
        yield given
        return
    backend = build() if build is not None else make_backend(cfg)
    try:
        yield backend
    finally:
        backend.close()


@contextmanager
def borrow_judge(cfg, given: Backend | None, backend: Backend | None) -> Iterator[Backend | None]:
    """The judge: ``given`` as it is; else ``backend`` (the engine being judged: ``judge.kind: same``, not
    closed here); else ``judge.kind: openai``'s client of ``cfg.judge.backend``, built now and closed at the end."""
    if given is not None or cfg.judge.kind == "same":
        yield given if given is not None else backend
        return

    def openai():
        from .openai_backend import OpenAIBackend

        judge = OpenAIBackend(cfg.judge.backend)
        judge.check("judge.backend")  # a clear error now, not every verdict unreadable
        return judge

    with borrow(cfg, None, openai) as judge:
        yield judge
