"""Normalising one raw record into a conversation (selfevolve/formats.py has the rules in its docstring and
drives the import): roles, text, the caps of :class:`ImportLimits`, and the reason ``code: detail`` of a record
that cannot be one."""
from __future__ import annotations

import math
from typing import Any

from . import records
from .formats_items import SURROGATE, TURN_KEYS, ImportLimits, safe_text

FORMATS = ("auto", "sharegpt", "openai", "hf")
ROLE_ALIASES = {
    **dict.fromkeys(("human", "user", "prompter"), "user"),
    **dict.fromkeys(("gpt", "chatgpt", "bing", "bard", "assistant", "model", "bot"), "assistant"),
    "system": "system",
}
DROPPED_ROLES = ("tool", "function")


class Reject(Exception):
    """Raised inside normalisation: the record is rejected with the reason ``code: detail``."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {safe_text(detail)}")


def reason_code(reason: str) -> str:
    """The stable code of a reason: ``unknown_role: messages[0].role is 'robot'`` → ``unknown_role``."""
    return reason.split(":", 1)[0]


def _turns(raw: Any, fmt: str, limits: ImportLimits) -> tuple[str, list]:
    """(key, turn list) of the record."""
    if not isinstance(raw, dict):
        raise Reject("not_a_record", f"the record is {'null' if raw is None else type(raw).__name__}")
    keys = ("messages",) if fmt == "openai" else TURN_KEYS
    present = [k for k in keys if raw.get(k) is not None]
    lists = [(k, raw[k]) for k in present if isinstance(raw[k], list)]
    if not lists:
        raise Reject("no_turns", f"'{present[0]}' is not a list" if present else f"no {'/'.join(keys)} list")
    # HF rows can carry both columns, one of them empty: take the first list that holds turns
    key, turns = next(((k, t) for k, t in lists if t), lists[0])
    if len(turns) > limits.max_turns:
        raise Reject("too_many_turns", f"{len(turns):,} turns (max {limits.max_turns:,})")
    return key, turns


def _text(value: Any, where: str, limits: ImportLimits) -> str:
    """Turn content as text: datasets hold None, numbers and OpenAI content parts, not only strings."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, float) and not math.isfinite(value):
        raise Reject("invalid_number", f"{where} is {value}")
    elif isinstance(value, (bool, int, float)):
        text = str(value)
    elif isinstance(value, list):
        parts = []
        for p in value:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:  # images, audio, ...: dropping them would change what the answer refers to
                raise Reject("non_text", f"{where} holds {_kind(p)}")
        text = "\n".join(parts).strip()
    else:
        raise Reject("non_text", f"{where} holds {_kind(value)}")
    if len(text) > limits.max_turn_chars:
        raise Reject("turn_too_long", f"{where} has {len(text):,} characters (max {limits.max_turn_chars:,})")
    if not text.isascii() and SURROGATE.search(text):
        raise Reject("invalid_unicode", f"lone surrogate in {where}")
    return text


def _kind(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return repr(value["type"][:40])
    return "null" if value is None else f"a {type(value).__name__}"


def messages(raw: Any, fmt: str, limits: ImportLimits) -> tuple[list[dict], int]:
    """The record's turns as {"role", "content"} dicts, before the conversation-level rules; and the number
    of turns the record holds."""
    key, turns = _turns(raw, fmt, limits)
    out = []
    if isinstance(raw.get("system"), str):  # LLaMA-Factory style ShareGPT: system prompt beside the turns
        out.append({"role": "system", "content": _text(raw["system"], "system", limits)})
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise Reject("bad_turn", f"{where} is {_kind(turn)}, not an object")
        role_key = "from" if turn.get("from") is not None else "role"
        role = turn.get(role_key)
        if role is None:
            raise Reject("missing_role", f"{where} has no from/role")
        name = role.strip().lower() if isinstance(role, str) else None
        if name in DROPPED_ROLES:
            continue
        if name not in ROLE_ALIASES:
            raise Reject("unknown_role", f"{where}.{role_key} is {repr(role)[:40]}")
        value_key = "value" if turn.get("value") is not None else "content"
        out.append({"role": ROLE_ALIASES[name], "content": _text(turn.get(value_key), f"{where}.{value_key}", limits)})
    return out, len(turns)


def finalize(msgs: list[dict], limits: ImportLimits) -> list[dict]:
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
        raise Reject("no_exchange", "no user turn answered by an assistant turn")
    if len(result) > limits.max_turns:  # rejoined chunks can pass the cap each piece kept
        raise Reject("too_many_turns", f"{len(result):,} turns once rejoined (max {limits.max_turns:,})")
    return result


def record_id(raw: dict, messages: list[dict]) -> str:
    """The record's id as text, or one derived from its content when it has none."""
    rid = raw.get("id")
    if rid is not None and not isinstance(rid, (str, int, float)):  # bool is an int: True -> "True", as before
        raise Reject("bad_id", f"id is {_kind(rid)}")
    if rid is None or not str(rid).strip():
        return records.content_id(messages)
    rid = str(rid)
    if not rid.isascii() and SURROGATE.search(rid):
        raise Reject("invalid_unicode", "lone surrogate in id")
    return rid


def normalize_record(raw: Any, source: str, fmt: str = "auto",
                     limits: ImportLimits | None = None) -> tuple[dict | None, str | None]:
    """One raw record -> (conversation, None) or (None, reason). Never raises on content."""
    check_fmt(fmt)
    limits = limits or ImportLimits()
    try:
        msgs = finalize(messages(raw, fmt, limits)[0], limits)
        return records.conversation(record_id(raw, msgs), msgs, safe_text(source)), None
    except Reject as e:
        return None, str(e)


def check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
