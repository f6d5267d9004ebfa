"""How the served CPU engines and a round's own compute share this machine's cores.

`selfevolve serve` gives each vLLM CPU engine its own cores (``VLLM_CPU_OMP_THREADS_BIND``) and writes them to
serve.json; a round run beside it (its generation goes to the served engine) does its own compute (training,
perplexity, embeddings) on the other cores, one torch thread per core. Why (scripts/bench_cpu_split.py,
docs/bench/cpu_split.md): with torch's default threads on every core, each parallel region waits for the thread
that shares a core with vLLM's busy worker, and LoRA steps ran many times slower while the engine generated. The
engine core's busy-wait (``sched_yield``) costs a competitor little: it yields at once.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Callable, Iterator

from .backends.served_backend import find_server
from .train_phases import on_cuda

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def engine_cores(n: int) -> list[str]:
    """Each of ``n`` CPU engines' compute cores, as ``VLLM_CPU_OMP_THREADS_BIND`` values. One engine: the last
    half of this process's cores (core 1 of 2 here); the rest stay for the gateway, the engine's scheduler and a
    round's own compute. Several: an equal share each (vLLM's ``auto`` would put every
    engine on the same cores). A value set in the environment wins; fewer cores than engines (or one core for
    one engine): ``nobind``."""
    if os.environ.get(BIND_ENV):
        return [os.environ[BIND_ENV]] * n
    cores = sorted(os.sched_getaffinity(0))
    if n == 1:
        return [",".join(map(str, cores[len(cores) - len(cores) // 2:]))] if len(cores) >= 2 else ["nobind"]
    if len(cores) < n:
        return ["nobind"] * n
    k = len(cores) // n
    return [",".join(map(str, cores[i * k:(i + 1) * k])) for i in range(n)]


def parse_cores(value: str) -> list[int]:
    """The core ids of a ``VLLM_CPU_OMP_THREADS_BIND`` value ("1", "0,2", "4-7", "0-1|2-3"); [] for ``auto`` /
    ``nobind`` (vLLM decides, or nothing is bound)."""
    if value.strip() in ("", "auto", "nobind"):
        return []
    out: set[int] = set()
    for part in value.replace("|", ",").split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def training_cores(engine: list[int]) -> list[int]:
    """This process's cores that no served engine computes on."""
    return sorted(set(os.sched_getaffinity(0)) - set(engine))


def served_engine_cores(run) -> list[int]:
    """The cores this run's served CPU engines compute on, as serve.json names them; [] when none are named (no
    server, engines elsewhere, an unreadable file)."""
    try:
        return json.loads(run.serve_info.read_text()).get("engine_cores") or []
    except (OSError, ValueError, AttributeError):
        return []


def beside_server(cfg, run) -> list[int] | None:
    """The cores a round's own compute should use: on CPU with this run's server up and ``backend.split_cores``,
    those its engines leave free; None (as it is) on CUDA, without a server or engines of its own, or when no
    core is left."""
    if not cfg.backend.split_cores:
        return None
    engine = served_engine_cores(run)
    if not engine or find_server(run) is None or on_cuda():  # a stale serve.json: nothing to share with
        return None
    return training_cores(engine) or None


def apart_from_engines(run) -> bool:
    """Whether this process computes apart from the run's served engines, so that its own torch work can run
    while they generate without slowing them: on CUDA (they compute on the GPU), or on CPU when this thread's
    cores (:func:`pinned` set them) are none of the cores serve.json names for its engines."""
    if on_cuda():
        return True
    engine = served_engine_cores(run)
    return bool(engine) and not set(os.sched_getaffinity(0)) & set(engine)


@contextlib.contextmanager
def pinned(cores: list[int] | None, log: Callable[[str], None] = print) -> Iterator[None]:
    """Run the block on ``cores`` only (every thread of this process), with as many torch threads; None or []:
    as it is. Both are restored."""
    if not cores:
        yield
        return
    # imported here rather than left to the first stage that needs it: a torch imported later takes its thread
    # count from the affinity only when OpenMP was not loaded at start (vLLM's CPU platform puts libgomp in
    # LD_PRELOAD, and then torch took 2 threads on 1 pinned core: the eleventh session's CI run)
    import torch

    # torch._C's own setter: an in-process vLLM CPU engine that ran in this process replaced
    # torch.set_num_threads with a no-op for good (vllm/v1/worker/cpu_worker.py)
    set_threads, threads = torch._C.set_num_threads, torch.get_num_threads()
    before = _set_affinity(cores)
    set_threads(len(cores))
    log(f"this process computes on cores {cores} ({len(cores)} torch thread(s)): the served engine on the others")
    try:
        yield
    finally:
        for tid, mask in before.items():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, mask)
        set_threads(threads)


def _set_affinity(cores: list[int]) -> dict[int, set[int]]:
    """Every thread of this process on ``cores`` (an affinity is per thread on Linux, and OpenMP's pool was
    made before); returns each one's mask before."""
    before = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        with contextlib.suppress(OSError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
    return before
