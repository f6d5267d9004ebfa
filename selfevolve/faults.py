"""Failpoints: a real ``kill -9`` at a chosen durable step of a round, to prove that a rerun recovers.

Killing ``selfevolve iterate`` at random wall-clock times almost never lands inside the sub-second stages
(collect, gate, deploy), so the steps that make a round durable call :func:`point` instead: the temp file of
an atomic write (before and after its rename), the revise journal's append (torn mid-line and whole), each
Trainer step and checkpoint, the swap of a whole folder. The round runner names the stage that is running
(:func:`stage`). Off by default: with ``SELFEVOLVE_FAULT`` unset, :func:`point` is one dict lookup.

``SELFEVOLVE_FAULT=<stage>:<k>``  the k-th point reached while <stage> runs in this process sends SIGKILL to
    this process (no handler, no cleanup, no flush: what a power cut or the OOM killer leaves). When the stage
    ends with fewer than k points (a rerun that resumed skips work), the kill lands at its end instead, so a
    chain of reruns always dies where it was told to, in that stage.
``SELFEVOLVE_FAULT=<stage>:@<text>``  the same at the first point of <stage> whose name contains <text>
    (``deploy:@current.json: temp``), or at the stage's end when none does.
``SELFEVOLVE_FAULT=count:<file>``  kill nothing; write the points each stage reached, in order, to <file>
    (JSON ``{stage: [point names]}``), rewritten as each stage ends. The crash test samples kill points from it.

The kill is announced on stderr first (``faults: kill -9 at revise:7 (journal torn ...)``) so a log says
where a process died. tests/test_crash_integration.py and scripts/bench_crash.py drive it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

ENV = "SELFEVOLVE_FAULT"
_current: list[str] = []  # the stage running now (a stack: a stage never nests, but a test may)
_seen: dict[str, list[str]] = {}  # stage -> names of the points it reached, in order (this process)


def parse(spec: str) -> tuple[str, str | int]:
    """``("count", path)``, ``(stage, k)`` or ``(stage, "@text")``; a clear error for anything else."""
    name, sep, arg = spec.partition(":")
    if not sep or not name or not arg:
        raise ValueError(f"{ENV}={spec!r}: expected <stage>:<k> or count:<file>")
    if name == "count" or (arg.startswith("@") and len(arg) > 1):
        return name, arg
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"{ENV}={spec!r}: k must be a positive integer or @<text of a point's name>")
    return name, int(arg)


def _spec() -> tuple[str, str | int] | None:
    spec = os.environ.get(ENV)
    return parse(spec) if spec else None


def _kill(where: str) -> None:
    sys.stderr.write(f"faults: kill -9 at {where}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """A durable step: counted while a stage runs; the process dies here when ``SELFEVOLVE_FAULT`` says so."""
    spec = _spec()
    if spec is None or not _current:
        return
    stage_name = _current[-1]
    seen = _seen.setdefault(stage_name, [])
    seen.append(name)
    target, k = spec
    if target == stage_name and (len(seen) == k or (isinstance(k, str) and k[1:] in name)):
        _kill(f"{stage_name}:{len(seen)} ({name})")


def _write_counts(path: str) -> None:
    # Plain write, not records.write_atomic: that one calls point() (and the reader runs after the process ends).
    Path(path).write_text(json.dumps(_seen, indent=1) + "\n", encoding="utf-8")


@contextmanager
def stage(name: str):
    """The round runner's marker around one stage: points count against ``name`` while the block runs."""
    spec = _spec()
    _current.append(name)
    _seen.setdefault(name, [])
    try:
        yield
    finally:
        _current.pop()
    if spec is None:
        return
    target, k = spec
    if target == "count":
        _write_counts(str(k))
    elif target == name:  # fewer points than k (or none named so) in this run: die at the stage's end
        _kill(f"{name}:end (after {len(_seen[name])} points, k={k})")


def trainer_callback():
    """A transformers ``TrainerCallback`` with a point after every step and after every checkpoint save (the
    Trainer writes ``trainer_state.json`` last, so a kill after ``on_save`` leaves a complete checkpoint)."""
    from transformers import TrainerCallback

    class FaultPoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            point(f"train step {state.global_step}")

        def on_save(self, args, state, control, **kwargs):
            point(f"checkpoint-{state.global_step} saved")

    return FaultPoints()
