"""AI annotation: a pairwise judge compares the original and the revised answer, in both orders.

LLM judges favour a position; asking A/B and then B/A and keeping the revision only when it wins both
cancels that bias out of the kept data. A judge answer that is not valid JSON of the schema drops the
record with its reason: an unreadable verdict is not a win.
"""
from __future__ import annotations

from ..backends.base import Sampling
from ..prompts import OutputError, parse_json
from .base import Decision

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
    "Here is a conversation between a user and an AI assistant:\n\n{transcript}\n\n"
    "Two candidate replies to the user's last message:\n\n[Reply A]\n{a}\n[End of reply A]\n\n"
    "[Reply B]\n{b}\n[End of reply B]\n\n"
    "Which reply is the better next message from the assistant: more correct, more helpful, more to the "
    "point? Judge the content, not the length or the position of a reply. Answer in JSON with \"reason\" "
    "(one or two sentences) and \"winner\": \"A\", \"B\" or \"tie\"."
)

# Points of the revised answer for a verdict, by where it was shown: ties count half.
POINTS = {("B", "B"): 1.0, ("B", "A"): 0.0, ("A", "A"): 1.0, ("A", "B"): 0.0}
WORD = {1.0: "won", 0.5: "tied", 0.0: "lost"}


def prompt(context: list[dict], a: str, b: str) -> list[dict]:
    transcript = "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in context)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": REQUEST.format(transcript=transcript, a=a, b=b)}]


def read_verdict(gen) -> dict:
    if gen.finish_reason != "stop":
        raise OutputError(f"finish_reason={gen.finish_reason}")
    return parse_json(gen.text, JUDGE_SCHEMA)


class JudgeFilter:
    name = "judge"
    uses_backend, uses_judge = False, True

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        if not records:
            return []
        batch = []
        for r in records:  # original first (revised is B), then revised first (revised is A)
            batch.append(prompt(r["context"], r["original"], r["revised"]))
            batch.append(prompt(r["context"], r["revised"], r["original"]))
        sampling = Sampling(ctx.cfg.judge.temperature, 1.0, ctx.cfg.judge.max_tokens)
        gens = ctx.judge.chat(batch, sampling, schema=JUDGE_SCHEMA)
        return [self.decide(gens[2 * i], gens[2 * i + 1]) for i in range(len(records))]

    def decide(self, second, first) -> Decision:
        verdicts = []
        for where, gen in (("revised as B", second), ("revised as A", first)):
            try:
                verdicts.append(read_verdict(gen))
            except OutputError as e:
                return Decision(False, f"judge output invalid: {where}: {e}")
        w_b, w_a = verdicts[0]["winner"], verdicts[1]["winner"]
        points = [POINTS.get(("B", w_b), 0.5), POINTS.get(("A", w_a), 0.5)]
        score = sum(points) / 2
        update = {"judge": {"revised_as_b": w_b, "revised_as_a": w_a,
                            "reasons": [v["reason"] for v in verdicts]}}
        if points == [1.0, 1.0]:
            return Decision(True, None, score, update)
        if points == [0.0, 0.0]:
            why = "judge prefers the original"
        elif 1.0 in points and 0.0 in points:
            why = "judge flips with the order"
        else:
            why = "judge finds no clear win"
        return Decision(False, f"{why} (revised {WORD[points[0]]} as B, {WORD[points[1]]} as A)", score, update)
