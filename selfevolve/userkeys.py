"""Per-user chat keys: who is talking to the gateway, from the credential rather than from the request.

``selfevolve keys issue alice`` makes a key ``sk-user-…`` (256 random bits), prints it once, and stores only its
SHA-256 with the user name (``RunLayout.user_keys``: JSON, mode 0600, replaced atomically; a symlink planted at
that path is refused, never read or written through). ``keys revoke alice`` removes alice's keys; ``keys list`` shows who has
which key ids. A running gateway notices the file changed (its stat signature) on the next request: issuing and
revoking need no restart.

A plain SHA-256 (no salt, no slow KDF) is enough here: the keys are random, not passwords, so a stolen file
cannot be reversed by guessing. The gateway turns a presented key into the identity ``user:<name>``; its
conversations, rate limits and quotas are that user's, whatever the request's ``user`` field says.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import time
from pathlib import Path

from .records import write_atomic

KEY_PREFIX = "sk-user-"
USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
"""User names: what a shell, a log line and an HTTP header carry without quoting."""


class UserKeyError(ValueError):
    """A bad user name, an unsafe or unreadable key file."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_user(user: str) -> str:
    if not isinstance(user, str) or not USER_RE.fullmatch(user):
        raise UserKeyError(f"user name {user!r}: use 1-64 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit")
    return user


def _read(path: Path) -> list[dict]:
    """The key records of ``path`` ([] when it does not exist). Refuses a symlink (O_NOFOLLOW) and a file that
    others may write: whoever can write it can let themselves in."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise UserKeyError(f"{path}: cannot open the key file safely ({e.strerror}; a symlink is refused)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o022:
            raise UserKeyError(f"{path}: not a regular file, or writable by group/others (chmod 600 it)")
        try:
            data = json.loads(f.read())
            keys = data["keys"]
            assert isinstance(keys, list) and all(isinstance(k, dict) and {"hash", "user", "key_id"} <= k.keys()
                                                  for k in keys)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise UserKeyError(f"{path}: not a user-key file") from None
    return keys


def _write(path: Path, keys: list[dict]) -> None:
    write_atomic(path, json.dumps({"version": 1, "keys": keys}, indent=1) + "\n", mode=0o600)


@contextlib.contextmanager
def _locked(path: Path):
    """Serialize issue / revoke (two admins at once must not lose a key): an flock on a sibling lock file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def issue(path: str | Path, user: str) -> tuple[str, dict]:
    """A new key for ``user`` (a user may hold several). Returns the key, shown once, and its stored record."""
    path, user = Path(path), check_user(user)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = key_hash(key)
    record = {"key_id": digest[:12], "user": user, "hash": digest, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime())}
    with _locked(path):
        _write(path, _read(path) + [record])
    return key, record


def revoke(path: str | Path, user: str, key_id: str | None = None) -> int:
    """Remove ``user``'s keys (only ``key_id`` when given). Returns how many were removed."""
    path, user = Path(path), check_user(user)
    with _locked(path):
        keys = _read(path)
        keep = [k for k in keys if not (k["user"] == user and (key_id is None or k["key_id"] == key_id))]
        if len(keep) != len(keys):
            _write(path, keep)
    return len(keys) - len(keep)


def list_keys(path: str | Path) -> list[dict]:
    """The records without their hashes: user, key_id, created."""
    return [{k: v for k, v in r.items() if k != "hash"} for r in _read(Path(path))]


class UserKeys:
    """The gateway's view of the key file: ``user_for(key)`` → user name or None, re-read whenever the file
    changes. A file that turns unreadable or unsafe while serving keeps the last good table (a typo must not
    lock everybody out, nor let anybody in) and is reported once."""

    def __init__(self, path: str | Path | None, warn=print):
        self.path = Path(path) if path else None
        self.warn = warn
        self._sig: tuple | None = None
        self._users: dict[str, str] = {}
        self._refresh(strict=True)

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)

    def _refresh(self, strict: bool = False) -> None:
        if self.path is None:
            return
        sig = self._signature()
        if sig == self._sig:
            return
        try:
            records = _read(self.path)
        except UserKeyError as e:
            if strict:
                raise
            self.warn(f"user keys: {e}; keeping the previous {len(self._users)} keys")
        else:
            self._users = {r["hash"]: r["user"] for r in records}
        self._sig = sig

    def user_for(self, key: str) -> str | None:
        if not key.startswith(KEY_PREFIX):
            return None
        self._refresh()
        return self._users.get(key_hash(key))

    def __len__(self) -> int:
        return len(self._users)
