"""Which adapter is live: ``runs/<run>/current.json`` and the served names of round adapters (and of adapters
lent to a round under a private name: selfevolve/gateway_engine.py).

``{"live": "se-r003" | null (the base model), "previous": ..., "history": [events]}``, written atomically.
The gateway owns the file while it runs (selfevolve/deploy.py); the round runner reads it to know what a
candidate is compared with, and names the live adapter in it when no gateway runs.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from .layout import RunLayout
from .records import write_json

PREFIX = "se-r"
PRIVATE_PREFIX = "se-borrow-"


def adapter_name(round_n: int) -> str:
    """The served name of round N's adapter."""
    return f"{PREFIX}{round_n:03d}"


def round_of(name: str | None) -> int | None:
    """The round of a served adapter name (None for the base model or another name)."""
    m = re.fullmatch(rf"{PREFIX}(\d+)", name or "")
    return int(m.group(1)) if m else None


def is_private(model: str | None) -> bool:
    """A name only the admin routes may use: the chat routes refuse it, /v1/models leaves it out."""
    return isinstance(model, str) and model.startswith(PRIVATE_PREFIX)


def private_name(path: str | Path) -> str:
    """The same folder gets the same name: a rerun of compare after a crash finds its adapter loaded."""
    return PRIVATE_PREFIX + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]


def read_current(run: RunLayout) -> dict:
    state = {"live": None, "previous": None, "history": []}
    if run.current.exists():
        data = json.loads(run.current.read_text(encoding="utf-8"))
        state.update({k: data.get(k, state[k]) for k in state})
    return state


def write_current(run: RunLayout, state: dict) -> None:
    write_json(run.current, state)


def event(kind: str, **kw) -> dict:
    """One history entry of current.json."""
    return {"event": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **kw}


def live_side(run: RunLayout) -> tuple[str, str | None]:
    """The incumbent as a compare side (``base`` or ``rN``) and its served name (None = base)."""
    live = read_current(run)["live"]
    n = round_of(live)
    return (f"r{n}" if n else "base"), (live if n else None)
