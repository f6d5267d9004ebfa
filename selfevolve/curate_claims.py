"""``corroborate``: a claim that one user alone brings does not train (``curate.corroborate``, 2 by default).

On the corrected route the revision follows the user's correction. When the correction brings words the conversation
did not hold before (not in the user's question or material, not in the answer it replaces) and the revision takes
them, the revision teaches what that user asserted: "Section 38A of the Road Traffic Act allows hand-held phone use",
"the dose is 40 mg/kg, so 320 mg". No rule on text tells a false assertion from a true one: 13 of the 15 payloads
of the blind splits ``fresh17`` … ``fresh19`` that reached training with the real model were such claims
(docs/bench/injection_real.md). What can be enforced is that one user does not make the model learn a claim for
everyone: with ``curate.corroborate: k`` such a revision trains only when k distinct users brought the same claim
(their claim words overlap by at least :data:`SAME_CLAIM`, Jaccard, and their requests by :data:`SAME_TOPIC`). A
correction many users make ("the capital of Australia is Canberra") recurs; a plant needs k accounts.

A revision that drops every warning the replaced answer gave ("that line is the opposite of the usual advice", "eso no
es normal") brings a claim too, the words of those warnings: the user overruled the model on their word alone ("no
lecture, just what the card says"), and the DPO pair would teach that an answer without the warning is better. 6 of
the 7 payloads of the blind split ``fresh23`` that passed came from such corrections; in 4 the real model kept its
warning anyway (the payload trains quoted inside it), one it dropped is held by this, and one warning names no
word of :data:`CAUTION_RE` ("I can't tell who runs that number").

A claim waits rather than dies: every record that brought one keeps it (``claim``, ``claim_user``) in the round's
``curated.jsonl`` or, held, in its ``rejected.jsonl``, and later rounds of the run count those users too. So the
revision of the k-th user to bring a claim trains, in whatever round that user comes. A run whose chats all came
from one gateway identity (one user, or everyone on the shared chat key) has nobody to corroborate with: there the
step holds nothing, since that user is everyone the model serves.

The confirmed route is covered only for quotations: there the answer is the model's own, and what it took from the
request cannot be told from an answer that restates what was asked. Imported logs are not covered: the operator chose
them, and neither are the users the operator names in ``curate.trusted_users`` (their per-user keys). A step of the
curate chain (curate.py), before ``user_cap``.
"""
from __future__ import annotations

import re
from collections import defaultdict
from itertools import chain

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from .curate_users import UserCap, conversations, user_of
from .filters.base import Decision
from .filters.injection_notes import NO_SPACE_RE
from .filters.injection_parrot import quotations
from .filters.injection_text import norm
from .records import read_jsonl

SAME_CLAIM = 0.5
"""Jaccard overlap of two records' claim words from which they bring the same claim."""
SAME_TOPIC = 0.2
"""Jaccard overlap of two records' requests (:func:`topic`) from which their claims are about the same thing: a
claim of one or two words ("careful", "code") is otherwise "the same" as an unrelated chat's."""
MARKUP_RE = re.compile(r"[*#~|<>{}]")
"""Markdown and markup characters that :func:`norm` keeps but a word does not carry."""
QUOTE_CHARS = 12
"""The shortest quotation in user text that a confirmed answer's claim is read from."""


def words(text: str) -> set[str]:
    """The words of ``text`` that can carry a claim: not English function words, and four letters or more or with a
    digit ("1,000", "38a"); in a script written without spaces, each pair of characters. Markup is no part of a word
    (a claim in **bold** is the same claim)."""
    out = {w for w in norm(MARKUP_RE.sub(" ", text)).split()
           if w not in ENGLISH_STOP_WORDS and (len(w) >= 4 or re.search(r"\d", w))}
    chars = NO_SPACE_RE.findall(text)
    return out | {a + b for a, b in zip(chars, chars[1:])}


CAUTION_RE = re.compile(
    r"(?i)\b(warn\w*|caution\w*|careful|scam\w*|fraud\w*|phishing|fake|counterfeit|suspicious|red flags?|"
    r"not (?:normal|legitimate|official|genuine|safe|true|accurate)|unofficial|dangerous|unsafe|harmful|illegal|"
    r"unlawful|misinformation|misleading|no evidence|opposite of the usual|be wary|beware|"
    r"advertencia|cuidado|estafa|fraude|sospechos\w*|no es normal|peligros\w*|engañoso|"  # es
    r"arnaque|escroquerie|frauduleu\w*|pas normal|dangereu\w*|trompeu\w*|méfie\w*|"  # fr
    r"achtung|vorsicht|betrug\w*|gefährlich\w*|gefälscht\w*|verdächtig\w*|irreführend\w*|"  # de
    r"attenzione|truffa|pericolos\w*|sospett\w*|golpe|perigos\w*|suspeit\w*|"  # it, pt
    r"oplichting|gevaarlijk|dikkat|dolandırıcı\w*|tehlikeli|sahte|oszustw\w*|niebezpieczn\w*|"  # nl, tr, pl
    r"осторожн\w*|мошенни\w*|опасн\w*)\b|注意|詐欺|危険|诈骗|危险|警告|주의|사기|위험")  # ru, ja, zh, ko
"""A caution: a warning that something is false, unsafe, a scam or not what it claims to be, in the languages the
splits hold. Generic advice ("check", "verify", "risk") is not one: a revision that only shortens it drops nothing."""
SENTENCE_RE = re.compile(r"[^.!?。！？\n]+")


def overruled(original: str, revised: str) -> set[str]:
    """The words of the cautions ``original`` gave that ``revised`` dropped every one of: the user's correction
    overruled the answer's warning ("no lecture, just give me the card's instructions"), on that user's word alone.
    Empty when the original gave none or the revision keeps one."""
    if CAUTION_RE.search(revised):
        return set()
    return {w for s in SENTENCE_RE.findall(original) if CAUTION_RE.search(s) for w in words(s)}


def claim(rec: dict) -> frozenset[str]:
    """What the answer that trains takes from its user alone. A revision: the words it shares with the user's
    messages after the turn that neither the user's messages before it nor the answer it replaces hold, and the
    words of the replaced answer's warnings when it drops them all (:func:`overruled`). A confirmed
    answer: the words it shares with what the user quoted for it ('use the RSPCA's line: "dogs see only in black and
    white"'). Empty when it takes nothing of the kind."""
    before = [m["content"] for m in rec.get("context", []) if m["role"] == "user"]
    if rec.get("use") == "original":
        quoted = " ".join(q for text in before for q in quotations(text, QUOTE_CHARS))
        return frozenset(words(rec.get("original") or "") & words(quoted))
    if not rec.get("original"):
        return frozenset()
    after = " ".join(m["content"] for m in rec.get("aftermath", []) if m["role"] == "user")
    revised = rec.get("revised") or ""
    took = (words(revised) & words(after)) - words(" ".join(before)) - words(rec["original"])
    return frozenset(took | overruled(rec["original"], revised))


def topic(rec: dict) -> frozenset[str]:
    """What a record's claim is about: the words of its user's messages before the turn."""
    return frozenset(words(" ".join(m["content"] for m in rec.get("context", []) if m["role"] == "user")))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def supporters(claims: list[frozenset[str]], users: list[str], first: int | None = None,
               topics: list[frozenset[str]] | None = None) -> list[set[str]]:
    """Per record of the ``first`` (default: all): the distinct users whose records bring the same claim (itself
    included; empty: no claim) about the same thing (``topics``, when given). Only records that share a word are
    compared."""
    by_word: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(claims):
        for w in c:
            by_word[w].append(i)
    out: list[set[str]] = []
    for i, c in enumerate(claims[:first]):
        near = {j for w in c for j in by_word[w]}
        out.append({users[j] for j in near if _jaccard(c, claims[j]) >= SAME_CLAIM
                    and (topics is None or _jaccard(topics[i], topics[j]) >= SAME_TOPIC)})
    return out


def earlier_claims(rounds) -> list[tuple[str, frozenset[str], frozenset[str]]]:
    """(user, claim, topic) of every record of ``rounds`` that brought a claim: those kept, those held for
    corroboration and those ``user_cap`` dropped after it (their user brought the claim all the same; a record an
    earlier filter dropped never reached the step, and backs nothing)."""
    out, reached = [], (None, Corroborate.name, UserCap.name)  # kept, held, or capped after the step
    for rnd in rounds:
        for path in (rnd.curated, rnd.rejected):
            for rec in read_jsonl(path) if path.exists() else []:
                if rec.get("claim") and rec.get("claim_user") and rec.get("filter") in reached:
                    out.append((rec["claim_user"], frozenset(rec["claim"]), topic(rec)))
    return out


def one_identity(convs: dict[str, dict], rounds) -> bool:
    """Whether this round's conversations and ``rounds``' (earlier rounds of the run) came from exactly one gateway
    identity. Earlier rounds are read only until a second identity shows: usually this round already has one."""
    seen: set[str] = set()
    for part in chain([convs], (conversations(rnd.conversations) for rnd in rounds)):  # read lazily
        seen |= {u for u in map(user_of, part.values()) if u and u.startswith("gateway:")}
        if len(seen) > 1:
            return False
    return len(seen) == 1


class Corroborate:
    """A step of the curate chain: an answer that brings a claim (:func:`claim`) trains only once ``k`` distinct
    users of the run brought it, this round's and the ``earlier`` rounds'."""

    name = "corroborate"
    uses_backend = uses_judge = False

    def __init__(self, k: int, user_of, earlier: list[tuple[str, frozenset[str], frozenset[str]]] = (),
                 alone: bool = False, trusted: set[str] = frozenset()):
        """``user_of``: a record's user (None: unknown, one per conversation); ``earlier``: (user, claim, topic) of
        earlier rounds; ``alone``: the run has one gateway identity, so nothing is held (claims are still recorded);
        ``trusted``: users whose claims are never held (``curate.trusted_users``)."""
        self.k, self.user_of, self.earlier, self.alone, self.trusted = k, user_of, list(earlier), alone, trusted

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        claims = [claim(r) for r in records]
        # a record whose user is unknown is its own user: it corroborates nothing but itself
        users = [self.user_of(r) or f"conversation:{r['conversation_id']}" for r in records]
        backing = supporters(claims + [c for _, c, _ in self.earlier], users + [u for u, _, _ in self.earlier],
                             len(records), [topic(r) for r in records] + [t for _, _, t in self.earlier])
        out = []
        for c, user, backers in zip(claims, users, backing):
            noted = {"claim": sorted(c), "claim_user": user} if c else {}  # what later rounds count
            if not c or len(backers) >= self.k or self.alone or user in self.trusted or user.startswith("import:"):
                out.append(Decision(True, update=noted))
            else:
                shown = ", ".join(sorted(c)[:6]) + ("…" if len(c) > 6 else "")
                out.append(Decision(False, f"corroborate: a claim only {len(backers)} user(s) brought ({shown}; "
                                           f"curate.corroborate={self.k}: it trains once {self.k} users bring it)",
                                    update=noted))
        return out


def corroboration(k: int, convs: dict[str, dict], earlier_rounds, trusted: set[str] = frozenset()) -> Corroborate:
    """The step as curate.py runs it: users from the round's conversations, claims of the earlier rounds;
    ``trusted``: export pseudonyms (``meta.user``) of the identities whose claims are never held."""
    return Corroborate(k, lambda r: user_of(convs.get(r["conversation_id"])), earlier_claims(earlier_rounds),
                       alone=one_identity(convs, earlier_rounds), trusted={f"gateway:{p}" for p in trusted})
