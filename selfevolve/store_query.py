"""The capture store's reads: one conversation with everything stored about it, and the export of
conversations as records.py records (what the collect stage consumes).

Functions of an open connection: selfevolve/store.py's ``ChatStore`` calls them holding its lock, and owns
every write. What an export holds (pseudonyms, per-message consent, ``served``): selfevolve/store.py.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Callable

from .records import CUT, ROLES, conversation
from .store_schema import prefix_flags


def full_conversation(db: sqlite3.Connection, row: sqlite3.Row) -> dict:
    """One ``conversations`` row with its exchanges and feedback, as plain values."""
    cid = row["id"]
    exchanges = [dict(r) for r in db.execute(
        "SELECT message_index, adapter, requested_model, consent, finish_reason, stream, started_at, finished_at,"
        " answer FROM exchanges WHERE conversation_id=? ORDER BY id", (cid,))]
    feedback = [dict(r) for r in db.execute(
        "SELECT message_index, rating, comment, created_at FROM feedback WHERE conversation_id=? ORDER BY id",
        (cid,))]
    for e in exchanges:
        e["consent"], e["stream"] = bool(e["consent"]), bool(e["stream"])
    return {"id": cid, "messages": json.loads(row["messages"]), "user_hash": row["user_hash"],
            "adapter": row["adapter"], "consent": bool(row["consent"]), "created_at": row["created_at"],
            "updated_at": row["updated_at"], "seq": row["seq"], "exchanges": exchanges, "feedback": feedback}


def changed_rows(db: sqlite3.Connection, since_id: int | None, since_time: float | None,
                 consented_only: bool) -> list[sqlite3.Row]:
    """The conversations changed after ``since_id`` (a seq) and/or ``since_time``, by seq."""
    where, args = [], []
    if since_id is not None:
        where.append("seq > ?")
        args.append(int(since_id))
    if since_time is not None:
        where.append("updated_at > ?")
        args.append(float(since_time))
    if consented_only:
        where.append("consent = 1")
    sql = "SELECT * FROM conversations" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
    return db.execute(sql, args).fetchall()


def export_record(db: sqlite3.Connection, row: sqlite3.Row, pseudonym: Callable[[str], str],
                  consented_only: bool) -> dict | None:
    """One conversation as a records.py record; None when ``consented_only`` and a message of it is not."""
    full = full_conversation(db, row)
    flags = prefix_flags(db, full["user_hash"], full["messages"])
    consent = full["consent"] and all(c for c, _ in flags)
    if consented_only and not consent:
        return None
    keep = [i for i, m in enumerate(full["messages"]) if m["role"] in ROLES]
    new_index = {old: new for new, old in enumerate(keep)}  # indices after dropping tool messages
    messages = [full["messages"][i] for i in keep]
    adapters = {str(new_index[e["message_index"]]): e["adapter"]
                for e in full["exchanges"] if e["message_index"] in new_index}
    served = sorted(new_index[i] for i in keep if flags[i][1] and full["messages"][i]["role"] == "assistant")
    msgs = full["messages"]
    cut = sorted({new_index[e["message_index"]] for e in full["exchanges"]  # the served answer did not end on its own
                  if e["finish_reason"] in CUT and e["message_index"] in new_index
                  and new_index[e["message_index"]] in served and msgs[e["message_index"]]["content"] == e["answer"]})
    feedback = [{"message_index": new_index[f["message_index"]], "rating": f["rating"], "comment": f["comment"]}
                for f in full["feedback"] if f["message_index"] in new_index]
    return conversation(
        full["id"], messages, source="gateway", seq=full["seq"], user=pseudonym(full["user_hash"]),
        consent=consent, adapter=full["adapter"], adapters=adapters, served=served, cut=cut, feedback=feedback,
        created_at=full["created_at"], updated_at=full["updated_at"])


def conversation_ids(db: sqlite3.Connection, user_hashes: list[str]) -> list[str]:
    """Every conversation of these users, by seq."""
    marks = ",".join("?" * len(user_hashes))
    return [r[0] for r in db.execute(
        f"SELECT id FROM conversations WHERE user_hash IN ({marks}) ORDER BY seq", list(user_hashes))]
