"""The pairwise judge: is answer B a better next message than answer A, asked in both orders.

Used by the curate judge filter (A = the original answer, B = the revision) and by compare (A = the live
side, B = the candidate). LLM judges favour a position, so every pair is asked twice, A shown first and B
shown first, and ONE rule turns the two verdicts into B's outcome: a win (loss) only when both orders agree;
a flip with the order, a tie in either order or an unreadable verdict is a tie. A model compared with itself
therefore never wins, and the curate filter keeps a revision only when it wins both orders (outcome "win").

The conversation is shown as the revise ``json`` strategy shows it (selfevolve/prompts.py ``transcript``): a JSON
array with each text one JSON string, so a user who types ``\n\nASSISTANT: ...`` writes characters inside their
own message, never a turn of the transcript the judge reads. The two replies are JSON strings too (a reply
holds no raw line break, so a text that says ``[End of reply A] … [Reply B]`` cannot close its reply or open the
other one), with chat-template control strings broken as in the transcript: users steer what the replies say.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .backends.base import Sampling, chat_all
from .prompts import OutputError, inert, parse_json, transcript

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        # one or two sentences, as asked: a longer reason costs decode time and changes no verdict
        "reason": {"type": "string", "minLength": 1, "maxLength": 300},
        "winner": {"type": "string", "enum": ["A", "B", "tie"]},
    },
    "required": ["reason", "winner"],
    "additionalProperties": False,
}

SYSTEM = "You are an impartial judge of an AI assistant's replies."
REQUEST = (
    "Here is a conversation between a user and an AI assistant, as a JSON array: each message is one object with "
    "its index, role and content.\n\n{transcript}\n\n"
    "Two candidate replies to the user's last message, each one JSON string:\n\n[Reply A]\n{a}\n[End of reply A]\n\n"
    "[Reply B]\n{b}\n[End of reply B]\n\n"
    "Which reply is the better next message from the assistant: more correct, more helpful, more to the "
    "point? Judge the content, not the length or the position of a reply. Answer in JSON with \"reason\" "
    "(one or two sentences) and \"winner\": \"A\", \"B\" or \"tie\"."
)

SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}
"""B's score for an outcome: ties count half (the win rate is the mean score)."""

# B's result in one order, from the winner the judge named: with A shown first B is "B"; shown first, B is "A".
_FOR_B_A_FIRST = {"B": "win", "A": "loss", "tie": "tie"}
_FOR_B_B_FIRST = {"A": "win", "B": "loss", "tie": "tie"}


def prompt(context: list[dict], a: str, b: str) -> list[dict]:
    """The judge's messages: the conversation so far (a JSON array, see the module's docstring), then reply ``a``
    shown as "A" and ``b`` as "B", each one JSON string."""
    a, b = (json.dumps(inert(x), ensure_ascii=False) for x in (a, b))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": REQUEST.format(transcript=transcript(context), a=a, b=b)}]


def read_verdict(gen, schema: dict = JUDGE_SCHEMA) -> dict:
    """A judge's JSON verdict (of ``schema``: the pairwise one, or the claims judge's); OutputError when cut off
    or not of the schema (not a win for anyone, no keep)."""
    if gen.finish_reason != "stop":
        raise OutputError(f"finish_reason={gen.finish_reason}")
    return parse_json(gen.text, schema)


@dataclass(frozen=True)
class Verdict:
    """What the judge said in one order."""

    winner: str | None
    """``"A"``, ``"B"`` or ``"tie"``: a position as shown to the judge, not a side; None when unreadable."""
    reason: str = ""
    """The judge's reason; empty when unreadable."""
    error: str | None = None
    """Why the verdict could not be read (finish reason, JSON or schema error); None when it was read."""


def _read(gen) -> Verdict:
    try:
        v = read_verdict(gen)
        return Verdict(v["winner"], v["reason"])
    except OutputError as e:
        return Verdict(None, "", str(e))


def outcome(first: str | None, second: str | None) -> tuple[str, bool]:
    """B's outcome from the verdict with A shown first (``first``) and with B shown first (``second``, whose
    "A" is B). Returns (win | tie | loss, consistent). Only agreeing orders decide; a flip, or an unreadable
    verdict, is a tie."""
    if first is None or second is None:
        return "tie", False
    one, two = _FOR_B_A_FIRST[first], _FOR_B_B_FIRST[second]
    return (one, True) if one == two else ("tie", False)


@dataclass(frozen=True)
class PairJudgment:
    """Both verdicts on one (context, A, B) pair and B's outcome under the one rule."""

    a_first: Verdict
    """The verdict with A shown as "A"."""
    b_first: Verdict
    """The verdict with B shown as "A"."""

    @property
    def outcome(self) -> str:
        return outcome(self.a_first.winner, self.b_first.winner)[0]

    @property
    def invalid(self) -> bool:
        """At least one verdict could not be read."""
        return self.a_first.winner is None or self.b_first.winner is None

    @property
    def inconsistent(self) -> bool:
        """Both verdicts read, but they disagree on B (a flip, or a tie in one order only)."""
        return not self.invalid and not outcome(self.a_first.winner, self.b_first.winner)[1]

    @property
    def score(self) -> float:
        return SCORE[self.outcome]

    def per_order(self) -> tuple[str | None, str | None]:
        """B's result in each order (A first, B first): win | tie | loss, None where unreadable."""
        return (_FOR_B_A_FIRST.get(self.a_first.winner), _FOR_B_B_FIRST.get(self.b_first.winner))

    def to_dict(self) -> dict:
        """The judgments.jsonl record (without the prompt id)."""
        def side(v: Verdict) -> dict:
            return {"winner": v.winner, "reason": v.reason if v.error is None else f"invalid: {v.error}"}

        return {"a_first": side(self.a_first), "b_first": side(self.b_first), "outcome": self.outcome,
                "score": self.score, "inconsistent": self.inconsistent, "invalid": self.invalid}


def judge_pairs(backend, items: list[tuple[list[dict], str, str]], judge_cfg) -> list[PairJudgment]:
    """Ask ``backend`` about every (context, a, b) item in both orders, in one batch (A first, then B first,
    item after item). ``judge_cfg``: the ``judge:`` config section (temperature, max_tokens)."""
    if not items:
        return []
    batch = []
    for context, a, b in items:
        batch.append(prompt(context, a, b))  # A shown as "A"
        batch.append(prompt(context, b, a))  # B shown as "A"
    sampling = Sampling(judge_cfg.temperature, 1.0, judge_cfg.max_tokens)
    gens = chat_all(backend, batch, sampling, JUDGE_SCHEMA, "judge (judge.kind, judge.backend)")
    return [PairJudgment(_read(gens[2 * i]), _read(gens[2 * i + 1])) for i in range(len(items))]
