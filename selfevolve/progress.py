"""A progress bar with rate and ETA (rich), shared by the long stages."""
from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextmanager
def bar(description: str, total: int, unit: str = "items", enabled: bool = True):
    """Yields ``advance(n, **fields)``. Shows done/total, items/s, the ``tok_s`` field, elapsed and ETA."""
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=not enabled, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="", extra="")

        def advance(n: int = 1, extra: str = "") -> None:
            progress.advance(task, n)
            speed = progress.tasks[0].speed
            rate = f"{speed:.2f} {unit}/s" if speed else ""
            progress.update(task, rate=rate, extra=extra)

        yield advance
