"""The one contract every stage of a round follows.

    # selfevolve/<stage>.py
    NAME = "curate"                          # the key in the round's manifest.json
    def run(ctx: StageContext) -> StageResult  # reads and writes files of ctx.rnd (selfevolve/layout.py)

``run`` does the stage's work and records the stage's own manifest entry, or returns :func:`recorded` when an
entry for the same inputs is complete and its outputs are intact (a rerun after a crash skips finished work).
A ``StageResult`` with ``stop`` set ends the round early with that reason (collect found nothing new).
``selfevolve/loop.py`` runs the stages of :data:`selfevolve.loop.ROUND` in order; the CLI runs one of them.
Stages never import each other: what one needs of another is a file in the round folder.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import manifest
from .layout import RoundLayout, RunLayout


class StageError(RuntimeError):
    """A stage cannot run (a missing input, a refused config, too many failures): the CLI prints it, exit 2."""


@dataclass
class StageResult:
    name: str
    counts: dict = field(default_factory=dict)
    """What the stage read, wrote and dropped (the manifest entry's ``counts``)."""
    line: str = ""
    """One line for a person (more lines only for a funnel worth reading)."""
    ran: bool = True
    """False when a complete manifest entry made the stage skip its work."""
    seconds: float = 0.0
    recorded_seconds: float | None = None
    """For a skipped stage: the seconds its recorded run took."""
    stop: str | None = None
    """Set when the round must end here (and why)."""
    data: dict = field(default_factory=dict)
    """Stage-specific results the loop reports (the gate's decision, deploy's action)."""


class ModelPool:
    """One helper to borrow or build a backend: stages ask ``ctx.models.get()`` and never close it; the
    owner (the round runner, or the CLI for one stage) closes it once. One engine start (~30 s on CPU) then
    serves revise, curate and compare."""

    def __init__(self, cfg, backend=None):
        self.cfg = cfg
        self._backend = backend
        self._owned = backend is None

    def get(self):
        if self._backend is None:
            from . import backends  # looked up at call time: tests replace backends.make_backend

            self._backend = backends.make_backend(self.cfg)
            self._owned = True
        return self._backend

    @property
    def started(self) -> bool:
        return self._backend is not None

    def close(self) -> None:
        if self._backend is not None and self._owned:
            self._backend.close()
            self._backend = None


@dataclass
class StageContext:
    cfg: Any
    run: RunLayout
    rnd: RoundLayout
    models: ModelPool
    inputs: list[Path] = field(default_factory=list)
    """Chat-log files to collect besides ``data.inputs`` (``--input``)."""
    show_progress: bool = True
    force: bool = False
    """Redo the stage even when its manifest entry is complete (``--force``)."""
    log: Callable[[str], None] = print

    def say(self, stage: str, line: str) -> None:
        self.log(f"[round {self.rnd.number}] {stage}: {line}")

    def entry(self, stage: str) -> dict | None:
        return manifest.load(self.rnd.manifest)["stages"].get(stage)

    def record(self, stage: str, *, inputs: list[Path], outputs: list[Path], counts: dict, started: float,
               line: str, status: str = "complete", **extra) -> StageResult:
        """Record the stage's manifest entry (with its summary line, so a skipped rerun can say it) and
        return its result."""
        manifest.record_stage(self.rnd.manifest, stage, inputs=inputs, outputs=outputs, counts=counts,
                              started=started, status=status, line=line, **extra)
        return StageResult(stage, counts, line, seconds=round(time.time() - started, 1))


def recorded(ctx: StageContext, stage: str, inputs: list[Path] | None, **same: Any) -> StageResult | None:
    """The recorded result when ``stage`` is complete for these ``inputs`` (None: any complete entry) with intact
    outputs and the entry's fields equal to ``same``; None when it must run."""
    if ctx.force:
        return None
    entry = ctx.entry(stage)
    if not entry or entry.get("status") != "complete" or any(entry.get(k) != v for k, v in same.items()):
        return None
    if inputs is not None and not manifest.is_complete(ctx.rnd.manifest, stage, inputs):
        return None
    return StageResult(stage, entry.get("counts", {}), entry.get("line", ""), ran=False,
                       recorded_seconds=entry.get("seconds"), data=entry)
