"""The gateway's capture store: conversations, the exchanges that grew them, and feedback (SQLite, WAL).

One row per conversation holds its *latest full message list* (a conversation grows turn by turn: the
request of turn 2 repeats turn 1, so the new list replaces the old one). Every finished exchange (one
request + the assistant answer) is a row of ``exchanges`` with the answer the served model produced, the
adapter that answered, the consent flag and timestamps; feedback rows point at a conversation and an
assistant message index. Schema versions and migrations: selfevolve/store_schema.py; the reads behind
``get`` and the export: selfevolve/store_query.py.

Conversation ids: a client-sent id (``X-Conversation-Id`` / ``metadata.conversation_id``) is used as it is;
one that another user owns is refused (``StoreError``, status 403). Otherwise the id is derived from the
hashed user and the first user message; when a request does not extend the stored conversation of that id
(same opening question, different history: a new chat or a regenerated answer) it becomes a branch
``<id>-2``, ``<id>-3`` ... so that one conversation never overwrites another. ``resolve_id`` reserves the id
it returns in the same transaction, so two requests racing for one id never both get it.

Users are never stored in clear: ``user_hash = sha256(salt : user field | api key)``; the salt is made once
per store and kept in its own 0600 file beside the database (``RunLayout.chats_salt``), never in it.
Exports carry ``meta["user"]``, a pseudonym keyed with the salt (HMAC), not the hash the database holds.

Consent is per message: an exchange without ``X-Consent-Train`` takes ``serve.consent_default`` (false: opt-in),
and every message prefix an exchange carries keeps the lowest consent it was ever carried with by that user
(store_schema.prefixes). A conversation is exported only when every message in it is consented: a withdrawal
sticks, and a regenerated branch cannot bring back a message first sent without consent.

Every write bumps the conversation's ``seq`` (a store-wide counter): ``export_conversations(since_id=s)``
returns what changed after ``s``, and each record's ``meta.seq`` tells the collect stage where to resume.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import store_query
from .layout import salt_beside
from .store_schema import LATEST, UPSERT_PREFIX, StoreError, load_or_make_salt, migrate, prefix_hashes, secure_db_files

__all__ = ["ChatStore", "StoreError", "export_conversations", "MAX_ID_CHARS"]

MAX_ID_CHARS = 128
RESERVATION_TTL_S = 24 * 3600.0
"""A reserved id whose exchange never completed (vLLM failed, the client left) is freed after this long."""


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


class ChatStore:
    """Thread-safe (one connection behind a lock; SQLite in WAL mode). Safe to share across threads.
    ``salt_path``: the salt file (default: beside the database, ``chats.sqlite`` → ``chats.salt``)."""

    def __init__(self, path: str | Path, salt_path: str | Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.salt_path = Path(salt_path) if salt_path else salt_beside(self.path)
        secure_db_files(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA busy_timeout=10000")
                self._db.execute("PRAGMA secure_delete=ON")  # deleted conversations leave no readable bytes
                self.migrated_from = migrate(self._db, self.salt_path)
                if self.migrated_from < LATEST:  # e.g. the salt left the meta table: out of the WAL as well
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                secure_db_files(self.path)  # -wal/-shm made by an older version with the database's old mode
                n = self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
                self._salt = load_or_make_salt(self.salt_path, n)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self):
        """One write transaction under the lock (BEGIN IMMEDIATE: the write lock is taken up front)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------ identities

    def hash_user(self, user: str | None, api_key: str | None) -> str:
        """sha256 of the salted ``user`` field, or of the API key when the request names no user."""
        ident = f"user:{user}" if user else f"key:{api_key or ''}"
        return _sha(self._salt, ident)

    def identities(self, name: str) -> list[str]:
        """Every user hash ``name`` may stand for (``selfevolve forget --user``): the request's ``user`` field, an
        API key, or the user of a per-user key (the gateway hashes those as the key ``userkey:<name>``)."""
        return [self.hash_user(name, None), self.hash_user(None, name), self.hash_user(None, f"userkey:{name}")]

    def pseudonym(self, user_hash: str) -> str:
        """The user as exports name them (``meta["user"]``): an HMAC of the hash keyed with the salt, 16 hex
        digits. Stable per user (per-user caps), and neither reversible nor linkable to the database's
        ``user_hash`` without the salt file."""
        return hmac.new(self._salt.encode(), f"export:{user_hash}".encode(), hashlib.sha256).hexdigest()[:16]

    @staticmethod
    def base_key(user_hash: str, messages: list[dict]) -> str:
        first = next((m["content"] for m in messages if m["role"] == "user"), "")
        return _sha(user_hash, first)[:16]

    def _owner(self, cid: str) -> str | None:
        row = self._db.execute("SELECT user_hash FROM conversations WHERE id=? UNION ALL "
                               "SELECT user_hash FROM reservations WHERE id=?", (cid, cid)).fetchone()
        return row[0] if row else None

    def resolve_id(self, user_hash: str, messages: list[dict], explicit: str | None = None) -> str:
        """The conversation a request (normalized messages, without the new answer) belongs to, reserved for
        this user until its exchange is recorded. Someone else's explicit id: ``StoreError`` (403)."""
        with self._tx() as db:
            now = time.time()
            db.execute("DELETE FROM reservations WHERE created_at < ?", (now - RESERVATION_TTL_S,))
            cid = "".join(ch for ch in str(explicit or "") if ch.isprintable())[:MAX_ID_CHARS]
            cid = cid or self._derive(user_hash, messages)
            owner = self._owner(cid)
            if owner is None:
                db.execute("INSERT INTO reservations(id, user_hash, created_at) VALUES(?,?,?)", (cid, user_hash, now))
            elif owner != user_hash:  # a derived id is never someone else's: _derive skips taken ids
                raise StoreError(f"conversation id {cid!r} belongs to another user", 403)
            return cid

    def _derive(self, user_hash: str, messages: list[dict]) -> str:
        base = self.base_key(user_hash, messages)
        rows = self._db.execute(
            "SELECT id, messages FROM conversations WHERE base_key=? AND user_hash=? ORDER BY updated_at DESC",
            (base, user_hash)).fetchall()
        for row in rows:
            stored = json.loads(row["messages"])
            if len(stored) <= len(messages) and messages[: len(stored)] == stored:
                return row["id"]
        n, cid = max(len(rows) + 1, 2), base
        while self._owner(cid) is not None:  # reserved ids count as taken: a pending exchange is never extended
            cid, n = f"{base}-{n}", n + 1
        return cid

    def release(self, conversation_id: str, user_hash: str) -> None:
        """Free an id ``resolve_id`` reserved for an exchange that will not be recorded (the request failed)."""
        with self._tx() as db:
            db.execute("DELETE FROM reservations WHERE id=? AND user_hash=?", (conversation_id, user_hash))

    # ------------------------------------------------------------ writes

    def _next_seq(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM conversations").fetchone()[0]

    def record_exchange(self, conversation_id: str, user_hash: str, messages: list[dict], answer: str,
                        adapter: str, consent: bool, *, requested_model: str = "", finish_reason: str = "",
                        stream: bool = False, started_at: float | None = None) -> int:
        """Store one finished exchange; the conversation becomes ``messages + [answer]``. Returns the answer's
        message index. An id owned by another user: ``StoreError`` (403)."""
        now = time.time()
        full = list(messages) + [{"role": "assistant", "content": answer}]
        index = len(full) - 1
        with self._tx() as db:
            owner = self._owner(conversation_id)
            if owner is not None and owner != user_hash:
                raise StoreError(f"conversation id {conversation_id!r} belongs to another user", 403)
            row = db.execute("SELECT consent FROM conversations WHERE id=?", (conversation_id,)).fetchone()
            seq, text = self._next_seq(), json.dumps(full, ensure_ascii=False)
            if row is None:
                db.execute(
                    "INSERT INTO conversations(id, base_key, user_hash, messages, adapter, consent, created_at,"
                    " updated_at, seq) VALUES(?,?,?,?,?,?,?,?,?)",
                    (conversation_id, self.base_key(user_hash, messages), user_hash, text, adapter, int(consent),
                     started_at or now, now, seq))
            else:
                db.execute("UPDATE conversations SET messages=?, adapter=?, consent=?, updated_at=?, seq=? WHERE id=?",
                           (text, adapter, int(bool(row["consent"]) and consent), now, seq, conversation_id))
            db.execute("DELETE FROM reservations WHERE id=?", (conversation_id,))
            db.execute(
                "INSERT INTO exchanges(conversation_id, message_index, adapter, requested_model, consent,"
                " finish_reason, stream, started_at, finished_at, answer) VALUES(?,?,?,?,?,?,?,?,?,?)",
                (conversation_id, index, adapter, requested_model, int(consent), finish_reason or "",
                 int(stream), started_at or now, now, answer))
            hashes = prefix_hashes(user_hash, full)
            db.executemany(UPSERT_PREFIX, [(user_hash, h, int(consent), int(i == index)) for i, h in enumerate(hashes)])
        return index

    def add_feedback(self, conversation_id: str, rating: str, message_index: int | None = None,
                     comment: str = "") -> dict:
        """Feedback on an assistant message (default: the conversation's last one)."""
        if rating not in ("up", "down"):
            raise StoreError(f"rating must be 'up' or 'down', got {rating!r}")
        with self._tx() as db:
            row = db.execute("SELECT messages FROM conversations WHERE id=?", (conversation_id,)).fetchone()
            if row is None:
                raise StoreError(f"unknown conversation {conversation_id!r}", 404)
            msgs = json.loads(row["messages"])
            if message_index is None:
                message_index = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
            if not (0 <= message_index < len(msgs)) or msgs[message_index]["role"] != "assistant":
                raise StoreError(f"message {message_index} of {conversation_id!r} is not an assistant message")
            db.execute(
                "INSERT INTO feedback(conversation_id, message_index, rating, comment, created_at) VALUES(?,?,?,?,?)",
                (conversation_id, message_index, rating, comment or "", time.time()))
            db.execute("UPDATE conversations SET seq=? WHERE id=?", (self._next_seq(), conversation_id))
        return {"conversation_id": conversation_id, "message_index": message_index, "rating": rating}

    # ------------------------------------------------------------ forget

    def conversation_ids(self, user_hashes: list[str]) -> list[str]:
        """Every conversation of these users."""
        with self._lock:
            return store_query.conversation_ids(self._db, user_hashes)

    def delete(self, ids: list[str], user_hashes: list[str] = ()) -> dict[str, int]:
        """Delete conversations (with their exchanges and feedback) and, for ``user_hashes``, everything else
        kept about those users (reserved ids, consent of message prefixes). Returns the rows deleted per table.
        The freed pages are zeroed (secure_delete) and the WAL is checkpointed so no copy stays readable."""
        counts = {}
        with self._tx() as db:
            for table, col in (("feedback", "conversation_id"), ("exchanges", "conversation_id"),
                               ("conversations", "id"), ("reservations", "id")):
                counts[table] = sum(db.execute(f"DELETE FROM {table} WHERE {col}=?", (cid,)).rowcount for cid in ids)
            for table in ("reservations", "prefixes"):
                n = sum(db.execute(f"DELETE FROM {table} WHERE user_hash=?", (h,)).rowcount for h in user_hashes)
                counts[table] = counts.get(table, 0) + n
        with self._lock:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        counts["wal_checkpoint_busy"] = int(busy)
        return counts

    # ------------------------------------------------------------ reads

    def get(self, conversation_id: str) -> dict | None:
        """Everything stored about one conversation (for tests and inspection)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM conversations WHERE id=?", (conversation_id,)).fetchone()
            return None if row is None else store_query.full_conversation(self._db, row)

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]

    def export_conversations(self, since_id: int | None = None, since_time: float | None = None,
                             consented_only: bool = True) -> list[dict]:
        """Conversations changed after ``since_id`` (a ``meta.seq`` from an earlier export) and/or after
        ``since_time`` (epoch seconds), as records.py conversations ``{"id", "messages", "source", "meta"}``.
        Only system/user/assistant messages are exported. ``meta``: seq, ``user`` (:meth:`pseudonym`), consent
        (every message consented), adapters per answer, ``served`` (sorted indices of the assistant messages that
        are exactly what the served model answered after exactly that history: a client sends the whole history,
        so any other assistant message may be the client's text), ``cut`` (those of them that did not end on their
        own: finish_reason length or repetition), feedback and timestamps."""
        with self._lock:
            rows = store_query.changed_rows(self._db, since_id, since_time, consented_only)
            records = [store_query.export_record(self._db, row, self.pseudonym, consented_only) for row in rows]
        return [r for r in records if r is not None]


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


def key_pseudonyms(db_path: str | Path, names: list[str]) -> set[str]:
    """The export pseudonyms (``meta["user"]``) of the per-user keys ``names`` in the store at ``db_path``; empty when
    the gateway has captured nothing yet."""
    if not names or not Path(db_path).exists():
        return set()
    store = ChatStore(db_path)
    try:
        return {store.pseudonym(store.hash_user(None, f"userkey:{name}")) for name in names}
    finally:
        store.close()
