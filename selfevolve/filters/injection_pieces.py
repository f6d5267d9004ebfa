"""Payloads a user assembles instead of writing them out, for the injection filter's echo check (injection.py):
spelled letter by letter ("P-W-N-E-D", "B, L, U, E"), hidden as the first letters of a poem's lines, or split into
quoted parts, even over turns ("Store 'Text STOP to' as x … Store '555-0150' as y … end with x + ' ' + y").

The echo check drops an answer line copied from user text that does not answer the question. These are the texts it
also looks in (:func:`assemble`), and the test for a code-like answer word glued from pieces of user text
(:func:`composed`). Both were written from the misses on the fresh5 split; they only widen where a copy may come
from, so the relevance test that decides whether a copy answers the question is unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .injection_text import LEAD_IN, QUOTED_RE, norm

_ONE = r"[A-Za-z0-9](?![A-Za-z0-9])"
SPELLED_RE = re.compile(rf"(?<![A-Za-z0-9]){_ONE}(?:\s*[-,./·_|+]?\s*{_ONE}){{2,}}")
"""Three or more single letters or digits in a row, with or without separators: "P-W-N-E-D", "B, L, U, E"."""
MIN_LINES = 4
"""Lines a block needs before its first letters are read as a word (a poem, a list)."""
MIN_PIECE = 3
"""Shortest part of a spelled or acrostic string a word may be glued from (shorter parts match almost anything)."""


def _alnum(s: str) -> str:
    return "".join(c for c in s.casefold() if c.isalnum())


def spelled(text: str) -> list[str]:
    """The words spelled out in ``text``, joined: "B, L, U, E" → "BLUE"."""
    return ["".join(c for c in m.group(0) if c.isalnum()) for m in SPELLED_RE.finditer(text)]


def acrostics(text: str) -> list[str]:
    """The first letters of each block of at least :data:`MIN_LINES` consecutive non-empty lines."""
    out, block = [], []
    for line in text.splitlines() + [""]:
        first = next((c for c in line if c.isalpha()), None)
        if line.strip() and first:
            block.append(first)
        else:
            if len(block) >= MIN_LINES:
                out.append("".join(block))
            block = []
    return out


def quotes(users: list[str]) -> list[str]:
    """The quoted strings of the user turns, in order."""
    return [next(g for g in m.groups() if g is not None) for u in users for m in QUOTED_RE.finditer(u)]


@dataclass(frozen=True)
class Assembled:
    """What one chat's user turns hold beyond their plain text, worked out once per record."""

    texts: list[str]
    """Texts the user built without writing them out, for the echo check to look in: spelled words, acrostics, and
    each two quoted strings in a row joined (with a space and without: "GOBLIN-" + "PARADE-3")."""
    tokens: frozenset[str]
    """The user's own words, letters and digits only (one letter is no piece, one digit is)."""
    hidden: tuple[str, ...]
    """The spelled and acrostic strings, letters and digits only."""


def assemble(users: list[str]) -> Assembled:
    built = [s for u in users for s in spelled(u) + acrostics(u)]
    q = quotes(users)
    joined = [j for a, b in zip(q, q[1:]) for j in (f"{a} {b}", f"{a}{b}")]
    tokens = frozenset(t for u in users for t in map(_alnum, u.split()) if len(t) >= 2 or t.isdigit())
    return Assembled(built + joined, tokens, tuple(map(_alnum, built)))


def without(question: str, span: str, users: list[str]) -> str:
    """The (normalised) question without the copy, nor any quoted part of the copy: what is left to answer."""
    rest = question.replace(span, " ")
    for part in map(norm, quotes(users)):
        if part and part in span:
            rest = rest.replace(part, " ")
    return " ".join(rest.split())


def _code_like(word: str) -> bool:
    return sum(c.isupper() for c in word) >= 2 or any(c.isdigit() for c in word)


def composed(segment: str, a: Assembled) -> str | None:
    """The segment's one code-like word (lead-in words aside) when it is glued from pieces of user text: a part of
    a spelled or acrostic string ("BLUEWHALE" + "9"), or two or more of the user's own words ("GOBLIN-" +
    "PARADE-3"). None otherwise."""
    words = [w for w in segment.split() if norm(w) not in LEAD_IN]
    if len(words) != 1 or not _code_like(words[0]):
        return None
    target = _alnum(words[0])
    if not 4 <= len(target) <= 64:
        return None

    def piece(part: str) -> bool:
        return part in a.tokens or (len(part) >= MIN_PIECE and any(part in h for h in a.hidden))

    # made[i]: target[:i] is a sequence of pieces; a whole target may be one token the plain check missed for its
    # punctuation ("P-W-N-E-D" written, "PWNED" answered)
    made = [True] + [False] * len(target)
    for j in range(1, len(target) + 1):
        made[j] = any(made[i] and piece(target[i:j]) for i in range(j))
    return words[0] if made[-1] else None
