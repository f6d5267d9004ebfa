"""Who supplied a round's training data, and two rules about it that no filter setting turns off (curate.py runs
them first and last, as steps of the filter chain, so every drop is a rejected record with its reason):

- ``served``: an answer trains as an *original* (a confirmed answer, or the rejected side of a DPO pair) only if
  the served model produced it. Gateway clients send the whole history with every request, so an assistant
  message in a gateway chat may have been written by the client; the store lists the model's own answers in
  ``meta.served`` (message indices). A gateway record without ``meta.served`` (an older store) has none.
  Imported logs were chosen by the operator: every assistant turn in them counts as the model's.
- ``user_cap``: no user supplies more than ``curate.max_user_share`` of the round's SFT examples, nor of its DPO
  pairs (published results: ~100-250 poisoned examples plant a behaviour in instruction tuning whatever the
  model's size). A gateway user is the chat's pseudonymous ``meta.user`` (``user_hash`` in older stores); an
  imported file is one user, ``import:<source>``, capped only with ``curate.cap_imports``.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

from .filters.base import KEEP, Decision
from .records import read_jsonl


def conversations(path: Path) -> dict[str, dict]:
    """The round's conversations by id ({} when the round has none: nothing can be attributed)."""
    return {c["id"]: c for c in read_jsonl(path)} if path.exists() else {}


def user_of(conv: dict | None) -> str | None:
    """The user a conversation counts against; None when unknown (no conversation for the record)."""
    if conv is None:
        return None
    if conv.get("source") == "gateway":
        meta = conv.get("meta") or {}
        return f"gateway:{meta.get('user') or meta.get('user_hash') or 'unknown'}"
    return f"import:{conv.get('source') or 'unknown'}"


def served(conv: dict | None, turn: int) -> bool:
    if conv is None or conv.get("source") != "gateway":
        return True
    listed = (conv.get("meta") or {}).get("served")
    return listed is not None and turn in listed


class ServedCheck:
    """First step of the chain: drops turns whose original answer the served model did not produce."""

    name = "served"
    uses_backend = uses_judge = False

    def __init__(self, convs: dict[str, dict]):
        self.convs = convs

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        out = []
        for r in records:
            conv = self.convs.get(r["conversation_id"])
            if served(conv, r["turn"]):
                out.append(KEEP)
            elif (conv.get("meta") or {}).get("served") is None:
                out.append(Decision(False, "not_served: gateway record without meta.served (older store)"))
            else:
                out.append(Decision(False, "not_served: the served model did not produce this answer"))
        return out


class UserCap:
    """Last step of the chain: the per-user cap on what survived every filter."""

    name = "user_cap"
    uses_backend = uses_judge = False

    def __init__(self, convs: dict[str, dict], share: float, cap_imports: bool):
        self.convs, self.share, self.cap_imports = convs, share, cap_imports

    def capped_user(self, rec: dict) -> str | None:
        """The user a record counts against for capping (None: counted in the total, never capped)."""
        user = user_of(self.convs.get(rec["conversation_id"]))
        return None if user is None or (user.startswith("import:") and not self.cap_imports) else user

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        users = [self.capped_user(r) for r in records]
        pairs = [r.get("use") != "original" for r in records]  # records that also make a DPO pair
        keep = cap(users, pairs, [r["id"] for r in records], self.share)
        counts = Counter(users)
        return [KEEP if keep[i] else
                Decision(False, f"user_cap: {users[i]} supplied {counts[users[i]]} records "
                                f"(curate.max_user_share={self.share})") for i in range(len(records))]


def cap(users: list[str | None], pairs: list[bool], ids: list[str], share: float) -> list[bool]:
    """Which records stay so that no user (None = uncapped) holds more than ``share`` of the kept SFT examples
    (every record) nor of the kept DPO pairs (records with ``pairs``). Dropping one user's excess shrinks the
    total the others' shares are taken of, so both kinds are capped again until nothing changes. Which of a
    user's records stay is a stable hash of their ids: not the order the user sent them in."""
    alive = [True] * len(users)
    if share >= 1:
        return alive
    rank = {i: hashlib.sha256(ids[i].encode()).hexdigest() for i in range(len(ids))}
    changed = True
    while changed:
        changed = False
        for kind in (None, True):
            idx = [i for i in range(len(users)) if alive[i] and (kind is None or pairs[i])]
            by_user = defaultdict(list)
            for i in idx:
                if users[i] is not None:
                    by_user[users[i]].append(i)
            k = _largest_cap({u: len(v) for u, v in by_user.items()}, len(idx), share)
            for u, members in by_user.items():
                for i in sorted(members, key=rank.get)[k:]:
                    alive[i] = False
                    changed = True
    return alive


def _largest_cap(counts: dict[str, int], total: int, share: float) -> int:
    """The largest k with k <= share * (the total once every user is cut to k): the per-user cap."""
    for k in range(max(counts.values(), default=0), -1, -1):
        if k <= share * (total - sum(max(0, c - k) for c in counts.values())) + 1e-9:
            return k
    return 0
