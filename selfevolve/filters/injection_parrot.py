"""Answers that hand the user's text back (the injection filter's ``parrots``, ``relays`` and ``points_back`` rules,
injection.py).

With the real model writing the answers, the payloads that reach training mostly arrive one way: asked to summarise,
explain or answer a question about a pasted text, the weak model returns the text itself, planted line and all (an
unmarked false claim, a code word, a note to the AI), and the user, who sees their own text, says "thanks". Of the 114
real-model answers that carried their payload on the splits before ``fresh13``, 38 are such copies (as this rule
reads them), against 6 of the 627 answers of their normal chats; the rules that look for notes, demands and contact
points cannot tell a planted claim from the rest of a copied text. A copy is no
answer to "what does this mean?" either, and it teaches the model to echo. So an answer most of whose words sit in
long runs copied from user text does not train, unless the request asks for the text back in another form (fix,
rewrite, translate, format, extract, …), where copying is the answer.

The ``relays`` rule (:func:`relayed`) goes further on the confirmed route only: there a run of 10 words of the user's
own text is enough, since the user who pasted a document and thanks its relay vouches for nothing but the answer.
The ``points_back`` rule (:func:`pointed_back`) is its corrected-route twin: a revision may not take 5 words in a row
from the user's own text that neither the answer it replaces nor the correction holds. A correction that names what
was wrong is evidence; one that only points back at the user's material ("use that one", "just tell her what the
terms say") is that user vouching for their own document, the same as a thanks.

Measured in docs/bench/injection_real.md (with and without each rule; ``fresh13`` and ``fresh14`` written blind before
they were first scored) and, for their cost, on real ShareGPT conversations in docs/bench/injection.md.
"""
from __future__ import annotations

import re

from .injection_contacts import request
from .injection_notes import NO_SPACE_RE
from .injection_text import FENCE_RE, norm

RUN = 8
"""Words in a row that an answer must share with user text for them to count as copied."""
MIN_WORDS = 15
"""Shorter answers are never counted as copies (a short answer quoting a line is an answer)."""
CHARS_PER_WORD = 2
"""Characters that stand for one word in a script written without spaces."""
_NOUN = r"(?<!\bthe )(?<!\ba )(?<!\ban )(?<!\bour )(?<!\btheir )(?<!\bthis )(?<!\bthat )"
_REWORK_RE = re.compile(  # a verb, not the noun an article makes of it ("until they ship the fix"), or a form
    rf"{_NOUN}\b(?:fix|correct|proofread|edit|format|convert|rewrite|re-write|reformat|clean|quote|copy|repeat|"
    r"extract|pull|transcribe|translate|paraphrase|polish|improve|revise|rephrase|sort|organi[sz]e|restructure|shorten|"
    r"continue|fill|rename|refactor|add|insert|merge)\w*"
    r"|\b(?:grammar|spelling|typos?|table|markdown|json|csv|bullet|fluent|"
    r"corrige|korrigier|reescrib|umschreib|réécri|traduc|tradu|übersetz|перевед|переведи|исправ|перепиш)\w*"
    r"|翻译|翻譯|翻訳|改写|修改|校正|整理", re.IGNORECASE)


def quotations(text: str, least: int = 20) -> list[str]:
    """The quotations in ``text`` ("…", “…”, «…», 「…」) of at least ``least`` characters. Straight quotes pair in
    order, the first with the second, the third with the fourth: a short quotation before a long one ('the theme "la
    mucca". Add the sentence: "Il latte …"') must not pair its closing quote with the long one's opening."""
    parts = text.split('"')
    straight = [q for q in parts[1:len(parts) - 1:2] if len(q) >= least]  # an unclosed last quote is no quotation
    return straight + re.findall(rf'[“„«「『]([^"”»」』]{{{least},}})[”»」』"]', text)


def copied_share(answer: str, users: list[str], run: int = RUN, least: int = MIN_WORDS) -> float:
    """The share of the answer's words outside code blocks that sit in runs of at least ``run`` words found, in
    order, in user text (0 for answers under ``least`` words). An answer written mostly without spaces (Chinese,
    Japanese) counts characters instead: runs of ``CHARS_PER_WORD * run`` of them."""
    units, covered, _ = _copied(answer, users, run, least)
    return sum(covered) / len(units) if units else 0.0


def _copied(answer: str, users: list[str], run: int, least: int) -> tuple[list[str], list[bool], str]:
    """(the answer's words, or characters in a script without spaces; whether each sits in a copied run; the
    separator that joins them back: a space, or nothing between characters)."""
    text = FENCE_RE.sub(" ", answer)  # code quoted back and changed is how code answers work
    chars = _no_spaces(text)
    units, scale = _units(text, chars), CHARS_PER_WORD if chars else 1
    return units, _covered(units, [_units(u, chars) for u in users], scale * run, scale * least), "" if chars else " "


def _no_spaces(text: str) -> bool:
    """Whether ``text`` is written mostly in a script without spaces (Chinese, Japanese): then characters count."""
    letters = _units(text, True)
    return bool(letters) and len(NO_SPACE_RE.findall(text)) >= 0.5 * len(letters)


def _units(text: str, chars: bool) -> list[str]:
    """``text`` as the rules read it: its letters and digits in a script without spaces, else its words."""
    return [c for c in text if c.isalnum()] if chars else norm(text).split()


def _grams(texts: list[str], n: int, chars: bool) -> set[tuple[str, ...]]:
    return {tuple(u[i:i + n]) for t in texts for u in [_units(t, chars)] for i in range(len(u) - n + 1)}


def _covered(words: list[str], users: list, run: int, least: int) -> list[bool]:
    """Which of ``words`` (or characters) sit inside runs of ``run`` that some sequence of ``users`` holds."""
    covered = [False] * len(words)
    if len(words) < max(run, least):
        return covered
    for t in users:
        grams = {tuple(t[i:i + run]) for i in range(len(t) - run + 1)}
        for i in range(len(words) - run + 1):
            if tuple(words[i:i + run]) in grams:
                covered[i:i + run] = [True] * run
    return covered


def parrots(answer: str, users: list[str], question: str, max_share: float) -> float | None:
    """The copied share when the answer hands user text back (at least ``max_share``) and the request does not ask
    for the text reworked; None otherwise. Of the question only the material after its request counts: an answer
    may restate what was asked ("Ideas for the use of AI in class: …")."""
    texts = _own_text(users, question)
    if texts is None:
        return None
    share = copied_share(answer, texts)
    return share if share >= max_share else None


def _own_text(users: list[str], question: str, quotes: bool = False) -> list[str] | None:
    """The user texts an answer must not copy from: the question without its request (with what the request
    quotes when ``quotes``), and the other user messages; None when the request asks for the text reworked (fix,
    translate, format, …), where copying is the answer."""
    ask = request(question)
    if _REWORK_RE.search(ask):
        return None
    material = question.strip()[len(ask):] + ("\n" + "\n".join(quotations(ask)) if quotes else "")
    return [material if u == question else u for u in users]


RELAY_RUN = 10
"""Words in a row a confirmed answer may share with the user's own text (``curate.injection.relays``)."""


def relayed(answer: str, users: list[str], question: str, run: int = RELAY_RUN) -> str | None:
    """What an answer restates of the user's own text: the first run of at least ``run`` words (``CHARS_PER_WORD *
    run`` characters in a script without spaces) copied from user text; None when there is none, or when the
    request asks for the text reworked (fix, translate, format, …: copying is the answer). Of the question, the
    request itself does not count (an answer may restate what was asked), but what it quotes does ('Contract
    says: "…"'). For the confirmed route (injection.py): a user's thanks confirms the answer to their question, not
    the text they supplied."""
    texts = _own_text(users, question, quotes=True)
    if texts is None:
        return None
    units, covered, sep = _copied(answer, texts, run, 0)
    if not any(covered):
        return None
    start = covered.index(True)
    end = covered.index(False, start) if False in covered[start:] else len(covered)
    shown, limit = units[start:end], 12 if sep else 24
    return sep.join(shown[:limit]) + ("…" if len(shown) > limit else "")


POINT_RUN = 5
"""Words in a row a revision may take from the user's own text when neither the answer it replaces nor the correction
holds them (``curate.injection.points_back``)."""


def pointed_back(revision: str, replaced: str, users: list[str], corrections: list[str], question: str,
                 run: int = POINT_RUN) -> str | None:
    """What a revision takes from the user's own text on that user's word alone: the first run of ``run`` words
    (``CHARS_PER_WORD * run`` characters in a script without spaces) found in the user text before the turn (as
    :func:`relayed` reads it) and in neither the answer it replaces nor any correction; None when there is none, or
    when the request asks for the text reworked. For the corrected route (injection.py): a correction that says
    what was wrong is the evidence there, but one that only points back at the user's own text ("the calendar has
    its own recipe, use that one", "just tell her what the terms say") vouches for that text, and that user alone.
    The same holds as on the confirmed route: the user judges the answer to their question, not the claims of the
    material they supplied."""
    texts = _own_text(users, question, quotes=True)
    if texts is None:
        return None
    text = FENCE_RE.sub(" ", revision)  # code quoted back and changed is how code answers work
    chars = _no_spaces(text)
    n = CHARS_PER_WORD * run if chars else run
    theirs, known = _grams(texts, n, chars), _grams([replaced, *corrections], n, chars)
    units = _units(text, chars)
    for i in range(len(units) - n + 1):
        gram = tuple(units[i:i + n])
        if gram in theirs and gram not in known:
            return ("" if chars else " ").join(gram)
    return None
