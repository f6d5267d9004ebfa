"""The chat store's on-disk side: its SQLite schema versions and their migrations, the salt file, and the
file permissions of everything the store writes.

Schema versions live in ``PRAGMA user_version``; each migration is one function run in its own
``BEGIN IMMEDIATE`` transaction that also bumps the version, so a crash leaves the database at the version
before or after it, and two processes opening one database migrate it once. Version 0 is a new file or a
database of the first, unversioned schema (``_v1_base`` creates only what is missing, so both work).

    1  conversations, exchanges, feedback, meta (the first schema)
    2  reservations: ids handed out by ``resolve_id`` that no exchange has completed yet
    3  exchanges.answer: the text the served model produced (old rows: only the latest exchange's answer is
       known for sure: its conversation's last message)
    4  prefixes: per user and message prefix (a hash chain), the consent of every exchange that carried it
       (the lowest wins) and whether the model produced its last message in exactly that history
    5  the user-hash salt moves out of ``meta`` into its own 0600 file (a database readable by others must
       not hold what reverses its hashes)

Files: the database, its ``-wal`` / ``-shm`` (SQLite gives them the database's mode) and the salt are 0600;
a symbolic link at any of those paths is refused, never followed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import sqlite3
import stat
import tempfile
from pathlib import Path


class StoreError(ValueError):
    """A request the store cannot honour (unknown conversation, bad rating, someone else's id) or a store that
    cannot be opened safely; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


_V1 = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS conversations (
        id TEXT PRIMARY KEY, base_key TEXT NOT NULL, user_hash TEXT NOT NULL, messages TEXT NOT NULL,
        adapter TEXT NOT NULL, consent INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        seq INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS conversations_base ON conversations(base_key)",
    "CREATE INDEX IF NOT EXISTS conversations_seq ON conversations(seq)",
    "CREATE INDEX IF NOT EXISTS conversations_updated ON conversations(updated_at)",
    """CREATE TABLE IF NOT EXISTS exchanges (
        id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL, message_index INTEGER NOT NULL,
        adapter TEXT NOT NULL, requested_model TEXT NOT NULL, consent INTEGER NOT NULL, finish_reason TEXT NOT NULL,
        stream INTEGER NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS exchanges_conv ON exchanges(conversation_id)",
    """CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL, message_index INTEGER NOT NULL,
        rating TEXT NOT NULL CHECK (rating IN ('up', 'down')), comment TEXT NOT NULL, created_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS feedback_conv ON feedback(conversation_id)",
]


def prefix_hashes(user_hash: str, messages: list[dict]) -> list[str]:
    """One hash per message: of the user and every message up to it (a chain), so that the same words in
    another history, or from another user, are another prefix."""
    out, h = [], user_hash
    for m in messages:
        h = hashlib.sha256("\x00".join((h, str(m["role"]), str(m["content"]))).encode("utf-8")).hexdigest()
        out.append(h)
    return out


UPSERT_PREFIX = ("INSERT INTO prefixes(user_hash, prefix, consent, served) VALUES(?,?,?,?) "
                 "ON CONFLICT(user_hash, prefix) DO UPDATE SET consent = MIN(consent, excluded.consent), "
                 "served = MAX(served, excluded.served)")
"""A prefix carried again keeps the lowest consent it was ever carried with (a withdrawal sticks, and a
regenerated branch cannot re-consent what was first sent without consent) and stays served once served."""


def prefix_flags(db: sqlite3.Connection, user_hash: str, messages: list[dict]) -> list[tuple[bool, bool]]:
    """(consented, served) of every message of a stored conversation; a prefix never recorded is neither."""
    hashes, rows = prefix_hashes(user_hash, messages), {}
    for k in range(0, len(hashes), 500):  # below SQLite's limit of bound parameters
        part = hashes[k:k + 500]
        marks = ",".join("?" * len(part))
        rows.update((r[0], (bool(r[1]), bool(r[2]))) for r in db.execute(
            f"SELECT prefix, consent, served FROM prefixes WHERE user_hash=? AND prefix IN ({marks})",
            [user_hash, *part]))
    return [rows.get(h, (False, False)) for h in hashes]


def _v1_base(db: sqlite3.Connection, salt_path: Path) -> None:
    for sql in _V1:
        db.execute(sql)


def _v2_reservations(db: sqlite3.Connection, salt_path: Path) -> None:
    db.execute("CREATE TABLE reservations (id TEXT PRIMARY KEY, user_hash TEXT NOT NULL, created_at REAL NOT NULL)")
    db.execute("CREATE INDEX reservations_created ON reservations(created_at)")


def _latest_answers(db: sqlite3.Connection):
    """(exchange id, conversation row) of each conversation's latest exchange whose answer is its last message."""
    for conv in db.execute("SELECT id, user_hash, messages, consent FROM conversations").fetchall():
        msgs = json.loads(conv[2])
        last = db.execute("SELECT id, message_index FROM exchanges WHERE conversation_id=? ORDER BY id DESC LIMIT 1",
                          (conv[0],)).fetchone()
        if last is not None and last[1] == len(msgs) - 1 and msgs[-1]["role"] == "assistant":
            yield last[0], conv, msgs
        else:
            yield None, conv, msgs


def _v3_answers(db: sqlite3.Connection, salt_path: Path) -> None:
    db.execute("ALTER TABLE exchanges ADD COLUMN answer TEXT")
    for ex_id, _conv, msgs in _latest_answers(db):
        if ex_id is not None:
            db.execute("UPDATE exchanges SET answer=? WHERE id=?", (msgs[-1]["content"], ex_id))


def _v4_prefixes(db: sqlite3.Connection, salt_path: Path) -> None:
    db.execute("""CREATE TABLE prefixes (user_hash TEXT NOT NULL, prefix TEXT NOT NULL, consent INTEGER NOT NULL,
                  served INTEGER NOT NULL, PRIMARY KEY (user_hash, prefix)) WITHOUT ROWID""")
    for ex_id, conv, msgs in _latest_answers(db):
        hashes = prefix_hashes(conv[1], msgs)
        db.executemany(UPSERT_PREFIX, [(conv[1], h, int(conv[3]), int(ex_id is not None and i == len(msgs) - 1))
                                       for i, h in enumerate(hashes)])


def _v5_salt_to_file(db: sqlite3.Connection, salt_path: Path) -> None:
    row = db.execute("SELECT value FROM meta WHERE key='salt'").fetchone()
    if row is None:
        return
    on_disk = read_salt(salt_path)
    if on_disk is None:
        write_salt(salt_path, row[0])
    elif on_disk != row[0]:
        raise StoreError(f"{salt_path} holds another salt than the database it migrates: restore the right one")
    db.execute("DELETE FROM meta WHERE key='salt'")  # secure_delete (set by the store) zeroes the freed bytes


MIGRATIONS = [(1, _v1_base), (2, _v2_reservations), (3, _v3_answers), (4, _v4_prefixes), (5, _v5_salt_to_file)]
LATEST = MIGRATIONS[-1][0]


def migrate(db: sqlite3.Connection, salt_path: Path) -> int:
    """Bring the database to :data:`LATEST` (autocommit connection); returns the version it had."""
    start = db.execute("PRAGMA user_version").fetchone()[0]
    if start > LATEST:
        raise StoreError(f"the chat store has schema version {start}, newer than this selfevolve knows ({LATEST})")
    for version, step in MIGRATIONS:
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < version:  # another process may have done it
                step(db, salt_path)
                db.execute(f"PRAGMA user_version={version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return start


# ---------------------------------------------------------------- files: 0600, never through a link

def _open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link: the chat store does not follow links") from None
        raise


def secure_db_files(db_path: Path) -> None:
    """Create the database file 0600 if it is missing, else tighten it and its -wal/-shm/-journal to 0600;
    refuse a link or anything but a regular file. SQLite creates -wal and -shm with the database's mode.

    By path (lstat + chmod), never by opening the files: closing *any* descriptor of a SQLite file drops every
    POSIX lock this process holds on it, so an open connection would lose its -shm read lock and another
    process closing last would delete the WAL under it (its later writes then go to an unlinked file)."""
    for p in [db_path] + [db_path.with_name(db_path.name + s) for s in ("-wal", "-shm", "-journal")]:
        if p == db_path:
            try:  # a new database: created 0600, never through a link (O_EXCL fails on one)
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            except FileExistsError:
                pass
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(f"{p} is a symbolic link: the chat store does not follow links")
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{p} is not a regular file")
        if st.st_mode & 0o077:
            os.chmod(p, 0o600)


SALT = re.compile(r"[0-9a-f]{32,128}")


def read_salt(path: Path) -> str | None:
    """The salt in ``path`` (tightened to 0600 if it was not), or None when there is no such file."""
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, encoding="ascii") as f:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        text = f.read().strip()
    if not SALT.fullmatch(text):
        raise StoreError(f"{path} does not hold a salt (32-128 hex digits)")
    return text


def write_salt(path: Path, salt: str) -> str:
    """Write ``salt`` to ``path`` (0600) unless one is there already; returns the salt that is there. The file is
    written whole under another name and hard-linked into place: no reader sees half of it, and a link or a
    file already at ``path`` is never written through."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600, O_EXCL|O_NOFOLLOW
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(salt + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_salt(path) or salt
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return salt
    finally:
        os.unlink(tmp)


def load_or_make_salt(path: Path, conversations: int) -> str:
    """The store's salt; a new one for a store with no conversations yet. A store with conversations whose salt
    file is gone is an error: new hashes would no longer match the stored ones (forget could not find a user)."""
    salt = read_salt(path)
    if salt is not None:
        return salt
    if conversations:
        raise StoreError(f"the salt file {path} is missing but the chat store holds {conversations} conversations: "
                         "restore it from a backup (user hashes cannot be matched without it)", 500)
    return write_salt(path, secrets.token_hex(16))
