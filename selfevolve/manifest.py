"""The round manifest: per stage, its status, times, counts and the sha256 of its inputs and outputs.

A stage is complete when its entry says so and every listed output still has the recorded hash;
that is what lets a rerun skip finished work and redo anything damaged.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .records import sha256_file, write_json


def load(path: Path) -> dict:
    if not path.exists():
        return {"stages": {}}
    return json.loads(path.read_text())


def hashes(paths: list[Path], base: Path | None = None) -> dict[str, str]:
    """sha256 per file, keyed by its path relative to ``base`` (the round folder) when it lies inside it."""
    out = {}
    for p in paths:
        if p.is_file():
            inside = base is not None and p.resolve().is_relative_to(base.resolve())
            out[p.resolve().relative_to(base.resolve()).as_posix() if inside else p.name] = sha256_file(p)
    return out


def record_stage(path: Path, stage: str, *, inputs: list[Path], outputs: list[Path], counts: dict,
                 started: float, status: str = "complete", **extra) -> dict:
    manifest = load(path)
    entry = {
        "status": status,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.time() - started, 2),
        "inputs": hashes(inputs, path.parent),
        "outputs": hashes(outputs, path.parent),
        "counts": counts,
        **extra,
    }
    manifest["stages"][stage] = entry
    write_json(path, manifest)
    return entry


def is_complete(path: Path, stage: str, inputs: list[Path] | None) -> bool:
    """True when ``stage`` finished, its inputs are the ones it ran on (``None``: not compared), and its
    outputs are intact."""
    entry = load(path)["stages"].get(stage)
    if not entry or entry.get("status") != "complete":
        return False
    if inputs is not None and hashes(inputs, path.parent) != entry["inputs"]:
        return False
    folder = path.parent
    return all((folder / name).is_file() and sha256_file(folder / name) == digest
               for name, digest in entry["outputs"].items())
