"""Import chat logs as found in the wild: ShareGPT JSON/JSONL, OpenAI-messages JSONL, HF datasets on disk.

Every record read ends either as a conversation (:func:`records.conversation`) or as a rejected item
with a reason, so ``read == accepted + rejected`` always holds and one bad line never stops an import.

Normalisation rules (downstream stages revise assistant turns that answer a user turn):

- roles map to system / user / assistant (``ROLE_ALIASES``, case-insensitive); any other role rejects
  the record. ``tool`` / ``function`` messages are dropped, and so is an assistant message that only
  carries ``tool_calls`` (its text is empty);
- text is stripped; empty turns are dropped; adjacent turns of one side are merged with a blank line;
- a system message is kept only at the start (several leading ones are merged); a later one is dropped;
- assistant turns before the first user turn (a greeting) are dropped;
- the result must hold a user message answered by an assistant message.

FastChat's ``split_long_conversation`` writes the pieces of one chat as ids ``base_0``, ``base_1``, ...
ShareGPT-shaped records (not OpenAI ``messages``/``role`` records) whose ids share such a base with
another record in the same call are rejoined in numeric order and normalised as one conversation.

Reading the files is selfevolve/formats_read.py; this module normalises what it read.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import records
from .formats_read import TURN_KEYS, Item, read_path

FORMATS = ("auto", "sharegpt", "openai", "hf")
ROLE_ALIASES = {
    **dict.fromkeys(("human", "user", "prompter"), "user"),
    **dict.fromkeys(("gpt", "chatgpt", "bing", "bard", "assistant", "model", "bot"), "assistant"),
    "system": "system",
}
DROPPED_ROLES = ("tool", "function")
MAX_RAW = 2000


class Reject(Exception):
    """Raised inside normalisation; its message is the reason the record is rejected."""


@dataclass
class ImportReport:
    read: int = 0  # top-level records read, before rejoining split chunks
    accepted: int = 0  # source records that ended in an output conversation
    rejected: int = 0
    conversations: int = 0  # output conversations, after rejoining
    reasons: Counter = field(default_factory=Counter)

    def summary(self, top: int = 3) -> str:
        line = (f"read {self.read} = accepted {self.accepted} + rejected {self.rejected} "
                f"(conversations {self.conversations})")
        if self.reasons:
            line += "; top reasons: " + ", ".join(f"{r} ({n})" for r, n in self.reasons.most_common(top))
        return line


# ---------------------------------------------------------------- normalising

def _turns(raw: Any, fmt: str) -> list:
    if not isinstance(raw, dict):
        raise Reject(f"top-level value is not a record ({'null' if raw is None else type(raw).__name__})")
    keys = ("messages",) if fmt == "openai" else TURN_KEYS
    present = [k for k in keys if raw.get(k) is not None]
    lists = [raw[k] for k in present if isinstance(raw[k], list)]
    if not lists:
        raise Reject(f"'{present[0]}' is not a list" if present else f"no {'/'.join(keys)} list")
    # HF rows can carry both columns, one of them empty: take the first list that holds turns
    return next((turns for turns in lists if turns), lists[0])


def _text(value: Any) -> str:
    """Turn content as text: datasets hold None, numbers and OpenAI content parts, not only strings."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, list):
        parts = []
        for p in value:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:  # images, audio, ...: dropping them would change what the answer refers to
                raise Reject("non-text content")
        return "\n".join(parts).strip()
    raise Reject("non-text content")


def _messages(raw: Any, fmt: str) -> list[dict]:
    """The record's turns as {"role", "content"} dicts, before the conversation-level rules."""
    turns = _turns(raw, fmt)
    out = []
    if isinstance(raw.get("system"), str):  # LLaMA-Factory style ShareGPT: system prompt beside the turns
        out.append({"role": "system", "content": raw["system"].strip()})
    for turn in turns:
        if not isinstance(turn, dict):
            raise Reject("turn is not an object")
        role = turn.get("from") if turn.get("from") is not None else turn.get("role")
        if role is None:
            raise Reject("missing role")
        if not isinstance(role, str):
            raise Reject(f"role is not a string ({type(role).__name__})")
        name = role.strip().lower()
        if name in DROPPED_ROLES:
            continue
        if name not in ROLE_ALIASES:
            raise Reject(f"unknown role {name[:40]!r}")
        value = turn["value"] if turn.get("value") is not None else turn.get("content")
        out.append({"role": ROLE_ALIASES[name], "content": _text(value)})
    return out


def _finalize(msgs: list[dict]) -> list[dict]:
    """Apply the conversation-level rules of the module docstring; Reject if no exchange is left."""
    out: list[tuple[str, list[str]]] = []
    for m in msgs:
        role, text = m["role"], m["content"]
        if not text:
            continue
        if role == "system" and any(r != "system" for r, _ in out):
            continue
        if role == "assistant" and not any(r == "user" for r, _ in out):
            continue
        if out and out[-1][0] == role:
            out[-1][1].append(text)
        else:
            out.append((role, [text]))
    result = [{"role": r, "content": "\n\n".join(parts)} for r, parts in out]
    if not any(a["role"] == "user" and b["role"] == "assistant" for a, b in zip(result, result[1:])):
        raise Reject("no user→assistant exchange")
    return result


def _record_id(raw: dict, messages: list[dict]) -> str:
    rid = raw.get("id")
    if rid is None or not str(rid).strip():
        return records.content_id(messages)
    return str(rid)


def normalize_record(raw: Any, source: str, fmt: str = "auto") -> tuple[dict | None, str | None]:
    """One raw record -> (conversation, None) or (None, reason). Never raises on content."""
    _check_fmt(fmt)
    try:
        messages = _finalize(_messages(raw, fmt))
    except Reject as e:
        return None, str(e)
    return records.conversation(_record_id(raw, messages), messages, source), None


# ---------------------------------------------------------------- FastChat split chunks

def _sharegpt_shaped(raw: dict) -> bool:
    msgs = raw.get("messages")
    return (raw.get("conversations") is not None or raw.get("items") is not None
            or (isinstance(msgs, list) and bool(msgs) and isinstance(msgs[0], dict) and "from" in msgs[0]))


def _split_key(raw: Any, fmt: str) -> tuple[str, tuple] | None:
    """(base, numeric sort key) when the record looks like FastChat chunk "base_N" of a ShareGPT chat."""
    if fmt == "openai" or not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        return None
    if not _sharegpt_shaped(raw):
        return None
    base, _, num = raw["id"].rpartition("_")
    if not (base and num.isascii() and num.isdigit()):
        return None
    digits = num.lstrip("0")
    return base, (len(digits), digits)  # numeric order without int(): no digit-count limit to hit


def _units(items: list[Item], fmt: str) -> list[tuple[str | None, list[Item]]]:
    """Items in output order: (base, sorted chunks) for a split group, (None, [item]) otherwise."""
    keys = [None if it.error else _split_key(it.raw, fmt) for it in items]
    counts = Counter(k[0] for k in keys if k)
    groups: dict[str, list[int]] = {}
    units: list[tuple[str | None, list[Item]]] = []
    for i, (it, key) in enumerate(zip(items, keys)):
        if key and counts[key[0]] > 1:
            if key[0] not in groups:
                groups[key[0]] = []
                units.append((key[0], []))  # filled below, placed where the group first appears
            groups[key[0]].append(i)
        else:
            units.append((None, [it]))
    for n, (base, members) in enumerate(units):
        if base is not None:
            order = sorted(groups[base], key=lambda i: keys[i][1])  # stable: repeated numbers keep file order
            units[n] = (base, [items[i] for i in order])
    return units


def _normalize_unit(base: str | None, unit: list[Item], fmt: str) -> tuple[dict | None, str | None]:
    if base is None:
        it = unit[0]
        return (None, it.error) if it.error else normalize_record(it.raw, it.source, fmt)
    try:
        msgs = [m for it in unit for m in _messages(it.raw, fmt)]
        return records.conversation(base, _finalize(msgs), unit[0].source), None
    except Reject as e:
        return None, str(e)


# ---------------------------------------------------------------- driver

def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _clip(raw: Any) -> Any:
    """The raw value kept for a rejected item: itself when small, else its JSON text cut to MAX_RAW."""
    if isinstance(raw, str):
        return raw[:MAX_RAW]
    try:
        text = json.dumps(raw, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        return f"<unprintable {type(raw).__name__}>"
    return json.loads(text) if len(text) <= MAX_RAW else text[:MAX_RAW]  # round trip: JSON-safe types


def _dedupe_ids(convs: list[dict]) -> None:
    """Later repeats of an id become "id-2", "id-3", ... skipping names any record already uses."""
    taken = {c["id"] for c in convs}
    seen: set[str] = set()
    next_k: dict[str, int] = {}
    for c in convs:
        cid = c["id"]
        if cid in seen:
            k = next_k.get(cid, 2)
            while f"{cid}-{k}" in taken:
                k += 1
            next_k[cid] = k + 1
            c["id"] = f"{cid}-{k}"
            taken.add(c["id"])
        seen.add(c["id"])


def load_conversations(paths: list[str | Path], fmt: str = "auto") -> tuple[list[dict], list[dict], ImportReport]:
    """Read and normalise every path. Returns (conversations, rejected, report).

    Rejected items are ``{"source", "reason", "record"}``. Raises only for a missing path, an unknown
    ``fmt`` or a path that cannot be read in ``fmt`` (a directory that is no saved dataset).
    """
    _check_fmt(fmt)
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
    items = [it for p in paths for it in read_path(p, fmt)]
    report = ImportReport(read=len(items))
    convs: list[dict] = []
    rejected: list[dict] = []
    for base, unit in _units(items, fmt):
        conv, reason = _normalize_unit(base, unit, fmt)
        if conv is None:
            report.rejected += len(unit)
            report.reasons[reason] += len(unit)
            rejected.extend({"source": it.source, "reason": reason, "record": _clip(it.raw)} for it in unit)
        else:
            report.accepted += len(unit)
            convs.append(conv)
    _dedupe_ids(convs)
    report.conversations = len(convs)
    return convs, rejected, report
