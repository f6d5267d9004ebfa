"""Reading chat-log files as found in the wild into raw records (selfevolve/formats.py normalises them): a JSON
document (a list, a wrapper dict or one record), JSON Lines, or an HF dataset saved on disk.

Reading never fails on content: a line that does not parse is an :class:`Item` with ``error`` set, which the
import turns into a rejected record with that reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TURN_KEYS = ("conversations", "items", "messages")
"""Keys that hold a record's turns (a wrapper document's records never carry them at the top)."""
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class Item:
    """One top-level record as read; ``error`` is set when its text never parsed (raw is the text)."""
    source: str
    raw: Any
    error: str | None = None


def read_path(path: Path, fmt: str) -> list[Item]:
    """The raw records of one path: a directory is a saved HF dataset, a file JSON or JSON Lines."""
    if path.is_dir():
        if fmt not in ("auto", "hf"):
            raise ValueError(f"{path}: a directory is read as an HF dataset (fmt 'auto' or 'hf'), not {fmt!r}")
        return _read_hf(path)
    if fmt == "hf":
        raise ValueError(f"{path}: fmt 'hf' expects a directory written by datasets' save_to_disk")
    return _read_file(path)


def _read_file(path: Path) -> list[Item]:
    """A JSON document (list, wrapper dict or one record), else JSON Lines; never fails on content."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    if path.suffix.lower() != ".jsonl" and text.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            pass  # not one JSON document: read it line by line
        else:
            found = _unwrap(value)
            if found is None:
                return [Item(f"{path.name}#0", value)]
            return [Item(f"{path.name}#{i}", r) for i, r in enumerate(found)]
    return _read_jsonl(text, path.name)


def _unwrap(value: Any) -> list | None:
    """The records of a JSON document, or None when the document is itself one record."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("data"), list):
            return value["data"]
        convs = value.get("conversations")
        # a wrapper holds records; a ShareGPT record holds turns, which never carry these keys
        if isinstance(convs, list) and convs and isinstance(convs[0], dict) and any(k in convs[0] for k in TURN_KEYS):
            return convs
    return None


def _read_jsonl(text: str, name: str) -> list[Item]:
    """One item per non-empty line; a line that does not parse is an item with ``error``."""
    items = []
    # split on "\n" only: str.splitlines would also cut at U+2028 inside JSON strings
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip().lstrip("\ufeff").strip()
        if not line:
            continue
        try:
            items.append(Item(f"{name}:{n}", json.loads(line)))
        except (ValueError, RecursionError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
            items.append(Item(f"{name}:{n}", line, error=f"invalid JSON: {msg}"))
    return items


def _read_hf(path: Path) -> list[Item]:
    """Every row of a saved Dataset, or of every split of a saved DatasetDict."""
    if not any((path / m).exists() for m in HF_MARKERS):
        raise ValueError(f"{path}: not a saved HF dataset (none of {', '.join(HF_MARKERS)})")
    try:
        import datasets  # heavy: imported only when a dataset directory is actually read
    except ImportError as e:
        raise ImportError(f"{path}: reading a saved HF dataset needs the 'datasets' package") from e
    items: list[Item] = []
    try:
        ds = datasets.load_from_disk(str(path))
        splits = list(ds.items()) if isinstance(ds, datasets.DatasetDict) else [("", ds)]
        for split, part in splits:
            prefix = f"{path.name}/{split}" if split else path.name
            items.extend(Item(f"{prefix}#{i}", row) for i, row in enumerate(part))
    except Exception as e:  # a damaged dataset is bad content: one rejected record, not a crash
        items.append(Item(path.name, None, error=f"unreadable dataset: {type(e).__name__}"))
    return items
