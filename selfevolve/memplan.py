"""GPU memory plan of a round: does every engine and the training fit, checked before any of them starts.

On one GPU box a round can hold three things at once: the served engine (``selfevolve serve``, a vLLM server
taking ``serve.gpu_memory_utilization`` of every GPU it runs on), iterate's in-process engine (revise, curate,
compare: ``backend.gpu_memory_utilization``) and LoRA training. vLLM takes its whole share at start and refuses
to start when less is free ("Free memory on device ... is less than desired GPU memory utilization"), so two
engines asking 0.85 each cannot both start, and training beside a 0.85 engine has ~15% of the GPU left.

The plan puts numbers on each step and refuses a plan that cannot fit with what to change: a lower or higher
``gpu_memory_utilization``, a smaller micro-batch, gradient checkpointing. During training iterate's engine is
closed, or asleep with ``backend.enable_sleep_mode`` (vLLM ``sleep(level=1)``: weights offloaded to CPU RAM, KV
cache dropped; ``wake_up`` for compare) leaving :data:`SLEEP_RESIDUAL`. The served engine keeps serving, so
training fits beside it only through the split of ``gpu_memory_utilization``.

Estimates are per GPU, in bytes (selfevolve/memplan_sizes.py: the model's sizes from its ``config.json``, the
GPU's memory as torch measures it). On CPU there is no plan: vLLM's CPU engine has its own KV-cache size
(``backend.cpu_kvcache_gb``) and sleep mode exists on CUDA / ROCm / XPU only.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from .errors import ConfigError
# Re-exported: callers and tests import the sizes from here, and check_round looks cuda_gpu / model_shape up in
# this module (so a test can replace them here).
from .memplan_sizes import (CUDA_CONTEXT, ENGINE_OVERHEAD, GIB, LOGIT_BYTES, SLEEP_RESIDUAL, TRAIN_OVERHEAD,
                            WEIGHT_BYTES, Gpu, ModelShape, cuda_gpu, engine_need, gib, model_shape, train_need)

__all__ = ["CUDA_CONTEXT", "ENGINE_OVERHEAD", "GIB", "LOGIT_BYTES", "SLEEP_RESIDUAL", "TRAIN_OVERHEAD", "WEIGHT_BYTES",
           "Gpu", "MemoryPlanError", "ModelShape", "Plan", "Step", "check_devices", "check_parallel", "check_round",
           "cuda_gpu", "engine_need", "gib", "model_shape", "plan_round", "serve_engine_args", "train_need"]


class MemoryPlanError(ConfigError):
    """A plan that cannot fit: the message lists each step that does not and what to change."""


# ---------------------------------------------------------------- the plan

@dataclass
class Step:
    name: str
    need: int
    available: int
    fixes: list[str] = field(default_factory=list)
    parts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.need <= self.available


@dataclass
class Plan:
    gpu: Gpu
    steps: list[Step] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(s.ok for s in self.steps)

    def table(self) -> str:
        head = f"memory plan on {self.gpu.name or 'GPU'} ({gib(self.gpu.total)}, {gib(self.gpu.free)} free now)"
        rows = [f"  {'ok ' if s.ok else 'NO '} {s.name}: needs {gib(s.need)}, has {gib(s.available)}"
                for s in self.steps]
        return "\n".join([head, *rows])

    def check(self) -> "Plan":
        """Raise :class:`MemoryPlanError` naming each step that does not fit and what to change."""
        bad = [s for s in self.steps if not s.ok]
        if bad:
            fixes = [f"  - {f}" for s in bad for f in s.fixes]
            raise MemoryPlanError("the GPU memory plan does not fit:\n" + self.table() + "\nchange one of:\n"
                                  + "\n".join(dict.fromkeys(fixes)))
        return self


def _share(x: float) -> str:
    return f"{max(0.0, math.floor(x * 100) / 100):.2f}"


def _serve_fix(cfg, serving: str, short: int, total: int) -> list[str]:
    """Lower the served engine's share by the shortfall, when there is one to lower and enough is left."""
    new = cfg.serve.gpu_memory_utilization - short / total
    if serving == "none" or new < 0.05:
        return []
    return [f"serve.gpu_memory_utilization <= {_share(new)} (restart `selfevolve serve`)"]


def _engine_steps(who: str, key: str, util: float, need: dict, gpu: Gpu, avail: int, beside) -> list[Step]:
    """Two steps of one engine: its share is free at start, and the model fits in its share."""
    share, least, room = int(util * gpu.total), sum(need.values()), avail - CUDA_CONTEXT
    lower = [f"{key}.gpu_memory_utilization <= {_share(room / gpu.total)}"] if room >= least else []
    start = Step(f"{who} starts with {key}.gpu_memory_utilization={util}", share, room, lower + beside(share - room))
    holds = Step(f"{who} holds the model in its share", least, share,
                 [f"{key}.gpu_memory_utilization >= {_share(least / gpu.total + 0.005)}",
                  f"model.max_model_len lower (one sequence of it needs "
                  f"{gib(need['kv_cache (one max_model_len sequence)'])} of KV cache)",
                  f"{key}.tensor_parallel_size higher (weights and KV cache split over the GPUs)"], need)
    return [start, holds]


def _train_fixes(shape: ModelShape, t, need: int, room: int, residual: int) -> list[str]:
    """Each change that alone makes training fit in ``room``."""
    fixes = []
    if residual and need <= room + residual:
        fixes.append(f"backend.enable_sleep_mode: false (the engine is closed for training instead of asleep "
                     f"holding {gib(residual)}; it restarts for compare)")

    def fits(b: int, m: int, **kw) -> bool:
        return sum(train_need(shape, t, batch_size=b, max_length=m, **kw).values()) <= room

    b = max((b for b in range(1, t.batch_size) if fits(b, t.max_length)), default=0)
    if b:
        fixes.append(f"train.batch_size <= {b} (a higher train.grad_accum keeps the effective batch)")
    else:
        lo, hi = 0, t.max_length  # bisect the longest sequence one example may have
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(1, mid) else (lo, mid - 1)
        if lo >= 64:
            fixes.append(f"train.batch_size: 1 and train.max_length <= {lo}")
    if not t.gradient_checkpointing and fits(t.batch_size, t.max_length, checkpointing=True):
        fixes.append("train.gradient_checkpointing: true")
    return fixes


def plan_round(cfg, gpu: Gpu, shape: ModelShape, *, serving: str = "none", engine: bool = True) -> Plan:
    """The plan of a round on ``gpu``. ``serving``: ``starting`` (``selfevolve serve`` is about to start its
    engine: it takes its share first, then the round must fit beside it unless ``serve.plan_round`` is off),
    ``running`` (its engine is already out of ``gpu.free``) or ``none``. ``engine`` False: iterate's engine is
    already closed or asleep (the train stage measures then), so training alone is planned."""
    plan, avail, s, b = Plan(gpu), gpu.free, cfg.serve, cfg.backend
    slots = dict(max_model_len=cfg.model.max_model_len, max_rank=cfg.lora_slots.max_rank)
    if serving == "starting":
        need = engine_need(shape, tensor_parallel=s.tensor_parallel_size, pipeline_parallel=s.pipeline_parallel_size,
                           max_loras=cfg.lora_slots.serve, **slots)
        plan.steps += _engine_steps("the served engine", "serve", s.gpu_memory_utilization, need, gpu, avail,
                                    lambda short: [])
        if not s.plan_round:
            return plan
        avail -= int(s.gpu_memory_utilization * gpu.total)
    residual = 0
    if b.kind == "vllm" and engine:
        need = engine_need(shape, tensor_parallel=b.tensor_parallel_size, pipeline_parallel=b.pipeline_parallel_size,
                           max_loras=cfg.lora_slots.engine, **slots)
        plan.steps += _engine_steps("iterate's engine", "backend", b.gpu_memory_utilization, need, gpu, avail,
                                    lambda short: _serve_fix(cfg, serving, short, gpu.total))
        if b.enable_sleep_mode:
            residual = SLEEP_RESIDUAL[1] if b.tensor_parallel_size == 1 else SLEEP_RESIDUAL["tp"]
    t, room = cfg.train, avail - residual
    parts = train_need(shape, t)
    need = sum(parts.values())
    fixes = _train_fixes(shape, t, need, room, residual) + _serve_fix(cfg, serving, need - room, gpu.total)
    plan.steps.append(Step(f"training (batch {t.batch_size} x {t.max_length} tokens)", need, room, fixes, parts))
    return plan


# ---------------------------------------------------------------- checks before an engine starts

def check_parallel(section, key: str, *, in_process: bool = False) -> None:
    """The vLLM sizes of a config section (``backend``, ``serve``), with no device at hand: each at least 1,
    and one data-parallel rank for the in-process engine."""
    for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
        value = getattr(section, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}.{name}: must be a whole number >= 1, got {value!r}")
    if in_process and section.data_parallel_size != 1:
        raise ConfigError(f"{key}.data_parallel_size: the in-process engine is one vllm.LLM, which runs one "
                          f"data-parallel rank (got {section.data_parallel_size}); several engines: "
                          f"{key}.kind: ray, or serve.data_parallel_size for the served engine")


def _xpu() -> bool:
    import torch

    return hasattr(torch, "xpu") and torch.xpu.is_available()


def check_devices(key: str, tp: int, pp: int, dp: int, sleep: bool, gpu: Gpu | None) -> None:
    """Parallel sizes against the visible GPUs, sleep mode against the platform: before an engine starts."""
    if gpu is None:
        if sleep and not _xpu():
            raise ConfigError(f"{key}.enable_sleep_mode: vLLM's sleep mode exists on CUDA, ROCm and XPU only; "
                              "on CPU the engine is closed to free its memory (set it false)")
        return
    if tp * pp * dp > gpu.count:
        raise ConfigError(f"{key}: tensor_parallel_size x pipeline_parallel_size x data_parallel_size = "
                          f"{tp} x {pp} x {dp} = {tp * pp * dp} GPUs, but {gpu.count} are visible")
    if sleep and "expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        raise ConfigError(f"{key}.enable_sleep_mode: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True keeps "
                          "vLLM's sleep from freeing anything (vllm-project/vllm#11743); unset it")


def check_round(cfg, *, serving: str = "none", engine: bool = True, log=None) -> Plan | None:
    """Measure the GPU and check the round's plan (None on CPU, where only sleep mode is refused)."""
    gpu = cuda_gpu()
    b = cfg.backend
    if b.kind == "vllm":
        check_devices("backend", b.tensor_parallel_size, b.pipeline_parallel_size, b.data_parallel_size,
                      b.enable_sleep_mode, gpu)
    if serving == "starting":
        s = cfg.serve
        check_devices("serve", s.tensor_parallel_size, s.pipeline_parallel_size, s.data_parallel_size,
                      s.enable_sleep_mode, gpu)
    if gpu is None:
        return None
    plan = plan_round(cfg, gpu, model_shape(cfg.model.path), serving=serving, engine=engine).check()
    if log is not None:
        log(plan.table())
    return plan


def serve_engine_args(cfg, *, log=None) -> list[str]:
    """``selfevolve serve``: check the plan (the served engine, then a round beside it unless
    ``serve.plan_round`` is off) and return the vLLM server's arguments for the ``serve`` fields. On CPU none:
    there ``--gpu-memory-utilization`` would be a share of the machine's RAM (vLLM's CPU worker reads it so)."""
    s = cfg.serve
    if check_round(cfg, serving="starting", log=log) is None:  # no CUDA device
        return []
    args = ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
    for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
        if getattr(s, name) != 1:
            args += [f"--{name.replace('_', '-')}", str(getattr(s, name))]
    return args + (["--enable-sleep-mode"] if s.enable_sleep_mode else [])
