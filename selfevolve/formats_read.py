"""Reading chat-log files as found in the wild into raw records, one at a time (selfevolve/formats.py normalises
them): a JSON array, a JSON document (a wrapper dict or one record; selfevolve/formats_json.py), JSON Lines, or
an HF dataset saved on disk.

Reading never fails on content: a record that cannot be read is an :class:`Item` with ``error`` set to a reason
``code: detail`` (``invalid_json``, ``invalid_utf8``, ``record_too_large``, ``unreadable_dataset``), which the
import turns into a rejected record. Nothing holds a whole file: JSON Lines are read a line at a time, a JSON
array a block at a time (memory: the largest record plus one block), a dataset row by row. The exception is a
wrapper document (``{"data": [...]}``), parsed whole.
"""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import BinaryIO, Iterator

from .formats_items import (BLOCK, MAX_RAW, SURROGATE, TURN_KEYS, Decoder, ImportLimits, Item, error_msg,
                            safe_text)
from .formats_json import Text, read_array, read_document

__all__ = ["BLOCK", "HF_MARKERS", "MAX_RAW", "SURROGATE", "TURN_KEYS", "ImportLimits", "Item", "check_path",
           "read_path", "safe_text"]

HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def read_path(path: Path, fmt: str, limits: ImportLimits) -> Iterator[Item]:
    """The raw records of one path: a directory is a saved HF dataset, a file JSON or JSON Lines."""
    check_path(path, fmt)
    return _read_hf(path) if path.is_dir() else _read_file(path, limits)


def check_path(path: Path, fmt: str) -> None:
    """Raise (before anything is read or written) for a path that cannot be read in ``fmt`` at all."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        if fmt not in ("auto", "hf"):
            raise ValueError(f"{path}: a directory is read as an HF dataset (fmt 'auto' or 'hf'), not {fmt!r}")
        if not any((path / m).exists() for m in HF_MARKERS):
            raise ValueError(f"{path}: not a saved HF dataset (none of {', '.join(HF_MARKERS)})")
    elif fmt == "hf":
        raise ValueError(f"{path}: fmt 'hf' expects a directory written by datasets' save_to_disk")


def _read_file(path: Path, limits: ImportLimits) -> Iterator[Item]:
    """A JSON array (streamed), a JSON document, else JSON Lines."""
    name = safe_text(path.name)
    with open(path, "rb") as f:
        if path.suffix.lower() != ".jsonl":
            text = Text(f)
            first = text.skip(" \t\r\n\ufeff")
            if first == "[":
                text.pos += 1
                yield from read_array(text, name, limits)
                return
            if first == "{":
                items = read_document(text, name)
                if items is not None:
                    yield from items
                    return
            f.seek(0)  # not one JSON document: read it line by line
        yield from _read_lines(f, name, limits)


# ---------------------------------------------------------------- JSON Lines

def _read_lines(f: BinaryIO, name: str, limits: ImportLimits) -> Iterator[Item]:
    """One item per non-empty line (split on "\\n" only: U+2028 may sit inside a JSON string)."""
    dec, cap = Decoder(), limits.max_record_bytes
    n = 0
    while line := f.readline(cap + 2):
        n += 1
        src = f"{name}:{n}"
        if len(line) == cap + 2 and not line.endswith(b"\n"):  # over the cap: skip the rest unread
            size = len(line) + _skip_line(f)
            yield Item(src, line[:MAX_RAW].decode("utf-8", "backslashreplace"),
                       f"record_too_large: line of {size:,} bytes (max {cap:,})")
            continue
        line = line.strip()
        if line.startswith(codecs.BOM_UTF8):
            line = line[3:]
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            yield Item(src, line[:MAX_RAW].decode("utf-8", "backslashreplace"),
                       f"invalid_utf8: byte 0x{line[e.start]:02x} at byte {e.start} of the line")
            continue
        if not text:
            continue
        if len(line) > cap:
            yield Item(src, text[:MAX_RAW], f"record_too_large: line of {len(line):,} bytes (max {cap:,})")
            continue
        try:
            value = dec.decode(text)
        except (ValueError, RecursionError) as e:
            yield Item(src, text, f"invalid_json: {error_msg(e)}")
            continue
        yield Item(src, text, f"invalid_json: {dec.bad}") if dec.bad else Item(src, value)


def _skip_line(f: BinaryIO) -> int:
    """Read past the end of the current line; the bytes skipped."""
    skipped = 0
    while chunk := f.readline(BLOCK):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


# ---------------------------------------------------------------- HF datasets

def _read_hf(path: Path) -> Iterator[Item]:
    """Every row of a saved Dataset, or of every split of a saved DatasetDict (Arrow files are memory-mapped:
    rows are read one at a time)."""
    try:
        import datasets  # heavy: imported only when a dataset directory is actually read
    except ImportError as e:
        raise ImportError(f"{path}: reading a saved HF dataset needs the 'datasets' package") from e
    name = safe_text(path.name)
    try:
        ds = datasets.load_from_disk(str(path))
        splits = list(ds.items()) if isinstance(ds, datasets.DatasetDict) else [("", ds)]
        for split, part in splits:
            prefix = f"{name}/{split}" if split else name
            for i, row in enumerate(part):
                yield Item(f"{prefix}#{i}", row)
    except Exception as e:  # a damaged dataset is bad content: one rejected record, not a crash
        yield Item(name, None, f"unreadable_dataset: {type(e).__name__}")
