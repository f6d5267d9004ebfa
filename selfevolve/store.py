"""The gateway's capture store: conversations, the exchanges that grew them, and feedback (SQLite, WAL).

One row per conversation holds its *latest full message list* (a conversation grows turn by turn: the
request of turn 2 repeats turn 1, so the new list replaces the old one). Every finished exchange (one
request + the assistant answer) is a row of ``exchanges`` with the adapter that answered, the consent
flag and timestamps; feedback rows point at a conversation and an assistant message index.

Conversation ids: a client-sent id (``X-Conversation-Id`` / ``metadata.conversation_id``) is used as it is
(suffixed with the user hash when another user already owns it); otherwise the id is derived from the
hashed user and the first user message. When a request does not extend the stored conversation of that
id (same opening question, different history: a new chat or a regenerated answer) it becomes a branch
``<id>-2``, ``<id>-3`` ... so that one conversation never overwrites another.

Users are never stored in clear: ``user_hash = sha256(salt : user field | api key)``; the salt is made
once per database and kept in its ``meta`` table. Consent: an exchange without ``X-Consent-Train`` takes
``serve.consent_default``; a conversation counts as consented only while *every* exchange of it was
(a withdrawal sticks). ``export_conversations`` returns the records of selfevolve/records.py.

Every write bumps the conversation's ``seq`` (a store-wide counter): ``export_conversations(since_id=s)``
returns what changed after ``s``, and each record's ``meta.seq`` tells the collect stage where to resume.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from .records import ROLES, conversation

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    base_key TEXT NOT NULL,
    user_hash TEXT NOT NULL,
    messages TEXT NOT NULL,
    adapter TEXT NOT NULL,
    consent INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_base ON conversations(base_key);
CREATE INDEX IF NOT EXISTS conversations_seq ON conversations(seq);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations(updated_at);
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    message_index INTEGER NOT NULL,
    adapter TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    consent INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    stream INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS exchanges_conv ON exchanges(conversation_id);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    message_index INTEGER NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_conv ON feedback(conversation_id);
"""

MAX_ID_CHARS = 128


class StoreError(ValueError):
    """A request the store cannot honour (unknown conversation, bad rating); ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


class ChatStore:
    """Thread-safe (one connection behind a lock; SQLite in WAL mode). Safe to share across threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='salt'").fetchone()
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('salt', ?)", (secrets.token_hex(16),))
                row = self._db.execute("SELECT value FROM meta WHERE key='salt'").fetchone()
            self._salt = row["value"]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ identities

    def hash_user(self, user: str | None, api_key: str | None) -> str:
        """sha256 of the salted ``user`` field, or of the API key when the request names no user."""
        ident = f"user:{user}" if user else f"key:{api_key or ''}"
        return _sha(self._salt, ident)

    @staticmethod
    def base_key(user_hash: str, messages: list[dict]) -> str:
        first = next((m["content"] for m in messages if m["role"] == "user"), "")
        return _sha(user_hash, first)[:16]

    def resolve_id(self, user_hash: str, messages: list[dict], explicit: str | None = None) -> str:
        """The conversation a request (normalized messages, without the new answer) belongs to."""
        with self._lock:
            if explicit:
                cid = "".join(ch for ch in str(explicit) if ch.isprintable())[:MAX_ID_CHARS]
                if cid:
                    row = self._db.execute("SELECT user_hash FROM conversations WHERE id=?", (cid,)).fetchone()
                    if row is not None and row["user_hash"] != user_hash:
                        cid = f"{cid[:MAX_ID_CHARS - 9]}~{user_hash[:8]}"
                    return cid
            base = self.base_key(user_hash, messages)
            rows = self._db.execute(
                "SELECT id, messages FROM conversations WHERE base_key=? AND user_hash=? ORDER BY updated_at DESC",
                (base, user_hash)).fetchall()
            for row in rows:
                stored = json.loads(row["messages"])
                if len(stored) <= len(messages) and messages[: len(stored)] == stored:
                    return row["id"]
            if not rows:
                taken = self._db.execute("SELECT 1 FROM conversations WHERE id=?", (base,)).fetchone()
                if taken is None:
                    return base
            n = len(rows) + 1
            while self._db.execute("SELECT 1 FROM conversations WHERE id=?", (f"{base}-{n}",)).fetchone():
                n += 1
            return f"{base}-{n}"

    # ------------------------------------------------------------ writes

    def _next_seq(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM conversations").fetchone()[0]

    def record_exchange(self, conversation_id: str, user_hash: str, messages: list[dict], answer: str,
                        adapter: str, consent: bool, *, requested_model: str = "", finish_reason: str = "",
                        stream: bool = False, started_at: float | None = None) -> int:
        """Store one finished exchange; the conversation becomes ``messages + [answer]``. Returns the answer's
        message index."""
        now = time.time()
        full = list(messages) + [{"role": "assistant", "content": answer}]
        index = len(full) - 1
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT consent, created_at FROM conversations WHERE id=?",
                                       (conversation_id,)).fetchone()
                seq = self._next_seq()
                if row is None:
                    self._db.execute(
                        "INSERT INTO conversations(id, base_key, user_hash, messages, adapter, consent, created_at,"
                        " updated_at, seq) VALUES(?,?,?,?,?,?,?,?,?)",
                        (conversation_id, self.base_key(user_hash, messages), user_hash,
                         json.dumps(full, ensure_ascii=False), adapter, int(consent), started_at or now, now, seq))
                else:
                    self._db.execute(
                        "UPDATE conversations SET messages=?, adapter=?, consent=?, updated_at=?, seq=? WHERE id=?",
                        (json.dumps(full, ensure_ascii=False), adapter, int(bool(row["consent"]) and consent), now,
                         seq, conversation_id))
                self._db.execute(
                    "INSERT INTO exchanges(conversation_id, message_index, adapter, requested_model, consent,"
                    " finish_reason, stream, started_at, finished_at) VALUES(?,?,?,?,?,?,?,?,?)",
                    (conversation_id, index, adapter, requested_model, int(consent), finish_reason or "",
                     int(stream), started_at or now, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return index

    def add_feedback(self, conversation_id: str, rating: str, message_index: int | None = None,
                     comment: str = "") -> dict:
        """Feedback on an assistant message (default: the conversation's last one)."""
        if rating not in ("up", "down"):
            raise StoreError(f"rating must be 'up' or 'down', got {rating!r}")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT messages FROM conversations WHERE id=?", (conversation_id,)).fetchone()
                if row is None:
                    raise StoreError(f"unknown conversation {conversation_id!r}", 404)
                msgs = json.loads(row["messages"])
                if message_index is None:
                    message_index = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
                if not (0 <= message_index < len(msgs)) or msgs[message_index]["role"] != "assistant":
                    raise StoreError(f"message {message_index} of {conversation_id!r} is not an assistant message")
                now = time.time()
                self._db.execute(
                    "INSERT INTO feedback(conversation_id, message_index, rating, comment, created_at) VALUES(?,?,?,?,?)",
                    (conversation_id, message_index, rating, comment or "", now))
                self._db.execute("UPDATE conversations SET seq=? WHERE id=?", (self._next_seq(), conversation_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return {"conversation_id": conversation_id, "message_index": message_index, "rating": rating}

    # ------------------------------------------------------------ reads

    def get(self, conversation_id: str) -> dict | None:
        """Everything stored about one conversation (for tests and inspection)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM conversations WHERE id=?", (conversation_id,)).fetchone()
            if row is None:
                return None
            return self._full(row)

    def _full(self, row: sqlite3.Row) -> dict:
        cid = row["id"]
        exchanges = [dict(r) for r in self._db.execute(
            "SELECT message_index, adapter, requested_model, consent, finish_reason, stream, started_at, finished_at"
            " FROM exchanges WHERE conversation_id=? ORDER BY id", (cid,))]
        feedback = [dict(r) for r in self._db.execute(
            "SELECT message_index, rating, comment, created_at FROM feedback WHERE conversation_id=? ORDER BY id",
            (cid,))]
        for e in exchanges:
            e["consent"], e["stream"] = bool(e["consent"]), bool(e["stream"])
        return {"id": cid, "messages": json.loads(row["messages"]), "user_hash": row["user_hash"],
                "adapter": row["adapter"], "consent": bool(row["consent"]), "created_at": row["created_at"],
                "updated_at": row["updated_at"], "seq": row["seq"], "exchanges": exchanges, "feedback": feedback}

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]

    def export_conversations(self, since_id: int | None = None, since_time: float | None = None,
                             consented_only: bool = True) -> list[dict]:
        """Conversations changed after ``since_id`` (a ``meta.seq`` from an earlier export) and/or after
        ``since_time`` (epoch seconds), as records.py conversations ``{"id", "messages", "source", "meta"}``.
        Only system/user/assistant messages are exported; ``meta`` has seq, adapters per answer, the hashed
        user, consent, feedback and timestamps."""
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
        out = []
        with self._lock:
            for row in self._db.execute(sql, args).fetchall():
                full = self._full(row)
                keep = [i for i, m in enumerate(full["messages"]) if m["role"] in ROLES]
                new_index = {old: new for new, old in enumerate(keep)}  # indices after dropping tool messages
                messages = [full["messages"][i] for i in keep]
                adapters = {str(new_index[e["message_index"]]): e["adapter"]
                            for e in full["exchanges"] if e["message_index"] in new_index}
                feedback = [{"message_index": new_index[f["message_index"]], "rating": f["rating"],
                             "comment": f["comment"]} for f in full["feedback"] if f["message_index"] in new_index]
                out.append(conversation(
                    full["id"], messages, source="gateway", seq=full["seq"], user_hash=full["user_hash"],
                    consent=full["consent"], adapter=full["adapter"], adapters=adapters, feedback=feedback,
                    created_at=full["created_at"], updated_at=full["updated_at"]))
        return out


def export_conversations(db_path: str | Path, since_id: int | None = None, since_time: float | None = None,
                         consented_only: bool = True) -> list[dict]:
    """:meth:`ChatStore.export_conversations` of the store at ``db_path`` (``RunLayout.chats_db``); [] when the
    gateway has captured nothing yet. Safe while the gateway writes (WAL: readers never block the writer)."""
    if not Path(db_path).exists():
        return []
    store = ChatStore(db_path)
    try:
        return store.export_conversations(since_id=since_id, since_time=since_time, consented_only=consented_only)
    finally:
        store.close()
