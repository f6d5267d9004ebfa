"""The records every stage reads and writes, and JSONL I/O that never leaves a half-written file.

A conversation is a plain dict ``{"id": str, "messages": [{"role", "content"}], "source": str}``
with roles ``system`` / ``user`` / ``assistant``; stages pass dicts (not classes) so that a record
read from disk, a record written by a stage and a record in a test are the same thing.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

ROLES = ("system", "user", "assistant")


def conversation(cid: str, messages: list[dict], source: str = "", **meta: Any) -> dict:
    rec = {"id": cid, "messages": [{"role": m["role"], "content": m["content"]} for m in messages], "source": source}
    if meta:
        rec["meta"] = meta
    return rec


def assistant_turns(conv: dict) -> list[int]:
    """Indices of the assistant messages that answer a user message (the turns we can revise)."""
    msgs = conv["messages"]
    return [i for i, m in enumerate(msgs) if m["role"] == "assistant" and i > 0 and msgs[i - 1]["role"] == "user"]


def turn_id(conv_id: str, index: int) -> str:
    """Stable id of one assistant turn: the conversation id and the message index."""
    return f"{conv_id}#{index}"


def content_id(messages: list[dict]) -> str:
    """Id derived from content, for records that arrive without one (stable across reruns)."""
    h = hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return h[:16]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- JSONL I/O

def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via tmp + fsync + rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(rec: dict) -> str:
    return json.dumps(rec, ensure_ascii=False)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    lines = [dumps(r) for r in records]
    write_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


class Journal:
    """Append-only JSONL for work in progress, safe against kill -9.

    Each batch is appended and fsynced; on open, a torn last line (the process died mid-write)
    is cut off, so the journal only ever holds whole records. The stage renames it into place
    (via :func:`write_jsonl`) once everything is done.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data[: data.rfind(b"\n") + 1]  # everything up to the last complete line
            if len(keep) != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(len(keep))
            for line in keep.decode("utf-8").splitlines():
                if line.strip():
                    self.records.append(json.loads(line))

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(records)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
