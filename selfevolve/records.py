"""The records every stage reads and writes, and JSONL I/O that never leaves a half-written file.

Records are JSON objects typed as TypedDicts: a record read from disk, a record written by a stage and a
record in a test are the same plain dict, and this module is the one place that says which keys each has
and builds them (:func:`conversation`, :func:`revision`, :func:`sft_example`, :func:`dpo_example`).
Roles are ``system`` / ``user`` / ``assistant``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, TypedDict

from . import faults

ROLES = ("system", "user", "assistant")
CUT = ("length", "repetition")
"""Finish reasons of an output that did not end on its own: cut at its token limit, or stopped in a loop."""


class Message(TypedDict):
    role: str
    content: str


class Conversation(TypedDict, total=False):
    id: str
    messages: list[Message]
    source: str
    meta: dict
    """Gateway chats: seq, adapters per answer, hashed user, consent, feedback, timestamps."""


class Revision(TypedDict, total=False):
    """One assistant turn revised with hindsight (``revisions.jsonl``; selfevolve/revise.py writes it)."""
    id: str                 # <conversation id>#<message index>
    conversation_id: str
    turn: int               # index of the assistant message in the conversation
    status: str             # ok | failed
    reason: str             # why it failed
    strategy: str           # chat | json
    model: str
    context: list[Message]  # the messages before the turn (ending with the user message it answers)
    original: str           # what the assistant said
    original_cut: bool      # the served model's answer did not end on its own (a gateway chat's meta.cut)
    aftermath: list[Message]  # what followed: the hindsight
    criticism: str
    verdict: str            # keep | revise: the model's own opinion, a second opinion only
    revised: str            # the new answer, written as a first reply
    attempts: int
    truncated: bool         # cut at revise.max_tokens
    output_tokens: int


class SftExample(TypedDict):
    """A training example in TRL's conversational prompt/completion shape, plus our id and round."""
    id: str
    round: int
    prompt: list[Message]
    completion: list[Message]


class DpoExample(TypedDict):
    """A preference pair in TRL's prompt/chosen/rejected shape, plus our id and round."""
    id: str
    round: int
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


def conversation(cid: str, messages: list[dict], source: str = "", **meta: Any) -> dict:
    rec = {"id": cid, "messages": [{"role": m["role"], "content": m["content"]} for m in messages], "source": source}
    if meta:
        rec["meta"] = meta
    return rec


def revision(conv: dict, t: int, *, strategy: str, model: str, attempts: int, truncated: bool,
             output_tokens: int) -> Revision:
    """The frame of turn ``t``'s revision record; the strategy's parse adds criticism, verdict and revised."""
    msgs = conv["messages"]
    cut = t in ((conv.get("meta") or {}).get("cut") or ())
    return {"id": turn_id(conv["id"], t), "conversation_id": conv["id"], "turn": t, "strategy": strategy,
            "model": model, "context": msgs[:t], "original": msgs[t]["content"], "original_cut": cut,
            "aftermath": msgs[t + 1:], "attempts": attempts, "truncated": truncated, "output_tokens": output_tokens}


def _messages(msgs: list[dict]) -> list[Message]:
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def sft_example(rec_id: str, round_no: int, context: list[dict], completion: str) -> SftExample:
    return {"id": rec_id, "round": round_no, "prompt": _messages(context),
            "completion": [{"role": "assistant", "content": completion}]}


def dpo_example(rec_id: str, round_no: int, context: list[dict], chosen: str, rejected: str) -> DpoExample:
    return {"id": rec_id, "round": round_no, "prompt": _messages(context),
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


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


def write_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` via tmp + fsync + rename: readers see the old file or the new one.

    ``mode``: the file's permissions (less what the umask takes away), given when the tmp file is created
    (O_EXCL | O_NOFOLLOW), so a 0o600 secret is never readable by others, not even for an instant. A symbolic
    link at ``path`` is replaced by the new file, never written through (rename acts on the name itself)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, mode)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write {path.name}: temp written, not renamed")
        os.replace(tmp, path)
        faults.point(f"write {path.name}: renamed")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself survives a power loss only once the folder is synced
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextmanager
def replace_dir(dest: str | Path) -> Iterator[Path]:
    """Swap a whole folder into place: the block builds it at the yielded path (a temporary sibling of ``dest``
    that does not exist yet); when the block ends normally it replaces ``dest`` (two renames), readers see the
    old folder or the new one, never half of one. An exception in the block removes the temporary folder and
    leaves ``dest`` as it was. Leftovers of a crash (``.NAME.tmp`` / ``.NAME.old``) are removed first."""
    dest = Path(dest)
    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not tmp.is_dir():
        raise RuntimeError(f"replace_dir: nothing was written at {tmp}")
    faults.point(f"swap {dest.name}: built, not renamed")
    if dest.exists():
        dest.rename(old)
        faults.point(f"swap {dest.name}: old moved aside")
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


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
            text = "".join(dumps(r) + "\n" for r in records)
            f.write(text[: len(text) // 2])  # two writes: a failpoint between them leaves a torn last line
            f.flush()
            faults.point(f"journal {self.path.name}: torn mid-line")
            f.write(text[len(text) // 2:])
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(records)
        faults.point(f"journal {self.path.name}: appended")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@contextmanager
def atomic_jsonl(path: str | Path) -> Iterator[Any]:
    """Stream records to ``path`` as JSONL without holding them: ``with atomic_jsonl(p) as write: write(rec)``.
    Lines go to a temporary file beside ``path`` (created O_EXCL), which is fsynced and renamed over ``path``
    when the block ends normally; an exception removes it and leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            yield lambda rec: f.write(dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write {path.name}: temp written, not renamed")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
"""The temp names of :func:`write_atomic` / :func:`atomic_jsonl` (``.NAME.<12 hex>.tmp``)."""


def sweep_tmp(folder: Path) -> int:
    """Remove the temp files a killed writer left under ``folder`` (never read, but they pile up); only for a
    caller that holds the lock of everything written there. Returns how many went."""
    gone = 0
    for p in Path(folder).rglob(".*.tmp") if Path(folder).is_dir() else ():
        if TMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            gone += 1
    return gone

