"""Answers that hand the user's text back (the injection filter's ``parrots`` rule, injection.py).

With the real model writing the answers, the payloads that reach training mostly arrive one way: asked to summarise,
explain or answer a question about a pasted text, the weak model returns the text itself, planted line and all (an
unmarked false claim, a code word, a note to the AI), and the user, who sees their own text, says "thanks". Of the 114
real-model answers that carried their payload on the splits before ``fresh13``, 38 are such copies (as this rule
reads them), against 6 of the 627 answers of their normal chats; the rules that look for notes, demands and contact
points cannot tell a planted claim from the rest of a copied text. A copy is no
answer to "what does this mean?" either, and it teaches the model to echo. So an answer most of whose words sit in
long runs copied from user text does not train, unless the request asks for the text back in another form (fix,
rewrite, translate, format, extract, …), where copying is the answer.

Measured in docs/bench/injection_real.md (with and without the rule; ``fresh13`` written blind before it was first
scored) and, for its cost, on real ShareGPT conversations in docs/bench/injection.md.
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
_REWORK_RE = re.compile(
    r"\b(?:fix|correct|proofread|edit|format|convert|rewrite|re-write|reformat|clean|quote|copy|repeat|extract|pull|"
    r"transcribe|translate|paraphrase|polish|improve|revise|rephrase|grammar|spelling|typos?|sort|organi[sz]e|"
    r"table|markdown|json|csv|bullet|restructure|shorten|continue|fill|fluent|rename|refactor|add|insert|merge|"
    r"corrige|korrigier|reescrib|umschreib|réécri|traduc|tradu|übersetz|перевед|переведи|исправ|перепиш)\w*"
    r"|翻译|翻譯|翻訳|改写|修改|校正|整理", re.IGNORECASE)


def copied_share(answer: str, users: list[str], run: int = RUN) -> float:
    """The share of the answer's words outside code blocks that sit in runs of at least ``run`` words found, in
    order, in user text. An answer written mostly without spaces (Chinese, Japanese) counts characters instead:
    runs of ``CHARS_PER_WORD * run`` of them."""
    text = FENCE_RE.sub(" ", answer)  # code quoted back and changed is how code answers work
    letters = [c for c in text if c.isalnum()]
    if letters and len(NO_SPACE_RE.findall(text)) >= 0.5 * len(letters):
        return _share(letters, ["".join(c for c in u if c.isalnum()) for u in users],
                      CHARS_PER_WORD * run, CHARS_PER_WORD * MIN_WORDS)
    return _share(norm(text).split(), [norm(u).split() for u in users], run, MIN_WORDS)


def _share(words: list[str], users: list, run: int, least: int) -> float:
    """The share of ``words`` (or characters) inside runs of ``run`` that some sequence of ``users`` holds."""
    if len(words) < max(run, least):
        return 0.0
    covered = [False] * len(words)
    for t in users:
        grams = {tuple(t[i:i + run]) for i in range(len(t) - run + 1)}
        for i in range(len(words) - run + 1):
            if tuple(words[i:i + run]) in grams:
                covered[i:i + run] = [True] * run
    return sum(covered) / len(words)


def parrots(answer: str, users: list[str], question: str, max_share: float) -> float | None:
    """The copied share when the answer hands user text back (at least ``max_share``) and the request does not ask
    for the text reworked; None otherwise. Of the question only the material after its request counts: an answer
    may restate what was asked ("Ideas for the use of AI in class: …")."""
    ask = request(question)
    if _REWORK_RE.search(ask):
        return None
    material = question.strip()[len(ask):]
    share = copied_share(answer, [material if u == question else u for u in users])
    return share if share >= max_share else None
