"""Training progress: a rich bar (step / total, tokens/s, loss) and the tokens/s a training session reached.

The logic is a plain class; :func:`callback_class` mixes it into a transformers ``TrainerCallback`` when first
asked for, so importing this module (and ``selfevolve.train``) does not import transformers.
"""
from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .progress import console


class Throughput:
    """A rich progress bar (step / total, tokens/s, loss) and the tokens/s of this session.

    Tokens are the Trainer's ``num_input_tokens_seen`` (non-padding tokens; with padding-free batches, all),
    which lives in the trainer state, so a resumed run keeps counting."""

    def __init__(self, phase: str, show: bool):
        self.phase, self.show = phase, show
        self.progress = self.task = None
        self.t0 = self.tokens0 = self.step0 = 0
        self.seconds = 0.0
        self.tokens = self.session_tokens = self.steps = 0
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()
        self.tokens0, self.step0 = state.num_input_tokens_seen, state.global_step
        if self.show:
            self.progress = Progress(
                TextColumn(f"[bold]train {self.phase}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console)
            self.progress.start()
            self.task = self.progress.add_task(self.phase, total=state.max_steps, completed=state.global_step,
                                               stats="")

    def _update(self, state):
        self.seconds = time.perf_counter() - self.t0
        self.tokens, self.steps = state.num_input_tokens_seen, state.global_step
        self.session_tokens = self.tokens - self.tokens0
        if self.progress is not None:
            loss = f"  loss {self.last_loss:.3f}" if self.last_loss is not None else ""
            self.progress.update(self.task, completed=state.global_step,
                                 stats=f"{self.tokens_per_s:,.0f} tok/s{loss}")

    @property
    def tokens_per_s(self) -> float:
        return self.session_tokens / self.seconds if self.seconds > 0 else 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self._update(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
        self._update(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._update(state)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def callback_class():
    """``ThroughputCallback``: :class:`Throughput` as a ``TrainerCallback`` (its methods first in the MRO; every
    other event is TrainerCallback's no-op). Called as ``callback_class()(phase, show_progress)``."""
    from transformers import TrainerCallback

    class ThroughputCallback(Throughput, TrainerCallback):
        __doc__ = Throughput.__doc__

    return ThroughputCallback
