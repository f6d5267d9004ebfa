"""How the model is asked to revise a turn with hindsight: the strategies.

Each strategy follows one contract (distilabel's task shape):

    calls(conv, turn)                 -> {call name: messages}     what to generate
    parse(outputs, conv, turn)        -> {criticism, verdict, revised}   or raises OutputError(reason)

and declares per call whether it wants JSON (``schemas``) and how long it may be. Every prompt
starts with the *whole* conversation and ends with the per-turn request, so all turns of one
conversation share one prefix and vLLM's prefix cache prefills it once.

Measured with scripts/bench_reviser_quality.py (see README): on the 135M model the ``chat``
strategy — continue the conversation in the model's own template, then ask it to answer the
earlier question again — carries corrections far more often than the ``json`` meta-prompt.
"""
from __future__ import annotations

import json

import jsonschema


class OutputError(ValueError):
    """A model output that cannot be used; the message is the recorded reason."""


VERDICTS = ("keep", "revise")

# A criticism is one or two sentences. 300 characters (~75 tokens) keeps the critique JSON well inside
# revise.critique_max_tokens: at 600, criticisms the grammar stopped at the limit overran 160 tokens, were cut
# (finish_reason=length) and retried — 33 of 143 sample turns needed a retry.
CRITIQUE_SCHEMA = {
    "type": "object",
    "properties": {
        "criticism": {"type": "string", "minLength": 1, "maxLength": 300},
        "verdict": {"type": "string", "enum": list(VERDICTS)},
    },
    "required": ["criticism", "verdict"],
    "additionalProperties": False,
}

REVISION_SCHEMA = {
    "type": "object",
    "properties": {
        "criticism": {"type": "string", "minLength": 1, "maxLength": 300},
        "verdict": {"type": "string", "enum": list(VERDICTS)},
        "revision": {"type": "string", "minLength": 1},
    },
    "required": ["criticism", "verdict", "revision"],
    "additionalProperties": False,
}


def _with_request(messages: list[dict], request: str) -> list[dict]:
    """The conversation followed by one more user message. If the conversation already ends with the
    user (an unanswered message, often the very feedback we need), the request joins that message,
    so roles keep alternating for templates that insist on it."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[-1]["role"] == "user":
        msgs[-1]["content"] = msgs[-1]["content"] + "\n\n" + request
    else:
        msgs.append({"role": "user", "content": request})
    return msgs


def parse_json(text: str, schema: dict) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise OutputError(f"output is not JSON ({e.msg})") from None
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as e:
        raise OutputError(f"output violates schema: {e.message[:200]}") from None
    return obj


def _nonempty(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise OutputError(f"empty {what}")
    return text


class ChatStrategy:
    """Continue the chat in the model's own template; ask for the earlier question to be answered again.

    Two calls per turn, independent of each other so they go out in one batch: ``answer`` (plain text,
    the new answer L) and ``critique`` (short JSON: criticism C and verdict)."""

    name = "chat"
    schemas = {"answer": None, "critique": CRITIQUE_SCHEMA}

    # The user's earlier message, asked again verbatim: on SmolLM2-135M this carried 23/30 corrections and
    # kept 8/10 right answers, where an instruction ("answer my earlier message again, from scratch…")
    # carried 16/30 and kept 3/10 (the small model answered the instruction, not the question).
    ANSWER = "{question}"
    CRITIQUE = (
        "Did I say your answer to \"{question}\" was wrong or did not work? Reply in JSON: \"criticism\" says "
        "what I said was wrong (or that it was fine), \"verdict\" is \"revise\" if I said it was wrong, else \"keep\"."
    )

    def calls(self, conv: dict, turn: int) -> dict[str, list[dict]]:
        msgs = conv["messages"]
        question = msgs[turn - 1]["content"]
        return {
            "answer": _with_request(msgs, self.ANSWER.format(question=question)),
            "critique": _with_request(msgs, self.CRITIQUE.format(question=_quote(question))),
        }

    def parse(self, outputs: dict[str, str], conv: dict, turn: int) -> dict:
        critique = parse_json(outputs["critique"], CRITIQUE_SCHEMA)
        return {
            "criticism": _nonempty(critique["criticism"], "criticism"),
            "verdict": critique["verdict"],
            "revised": _nonempty(outputs["answer"], "answer"),
        }


class JsonStrategy:
    """The seed's meta-prompt: show the conversation as a transcript, ask for JSON with criticism,
    verdict and revision in one call."""

    name = "json"
    schemas = {"revision": REVISION_SCHEMA}

    SYSTEM = "You review an AI assistant's replies with hindsight, using what the user said later in the conversation."
    REQUEST = (
        "\n\nConsider the assistant's reply [{k}] to the user's message [{q}]. Taking into account everything "
        "the user said afterwards, return JSON with \"criticism\" (what was wrong with reply [{k}], or why it was "
        "fine), \"verdict\" (\"keep\" or \"revise\") and \"revision\" (a better reply to message [{q}], written as a "
        "first reply that does not mention the later conversation)."
    )

    def calls(self, conv: dict, turn: int) -> dict[str, list[dict]]:
        lines = ["Here is a conversation between a user and an AI assistant:", ""]
        for i, m in enumerate(conv["messages"]):
            lines.append(f"[{i}] {m['role'].upper()}: {m['content']}")
        transcript = "\n".join(lines)
        return {
            "revision": [
                {"role": "system", "content": self.SYSTEM},
                {"role": "user", "content": transcript + self.REQUEST.format(k=turn, q=turn - 1)},
            ]
        }

    def parse(self, outputs: dict[str, str], conv: dict, turn: int) -> dict:
        obj = parse_json(outputs["revision"], REVISION_SCHEMA)
        return {
            "criticism": _nonempty(obj["criticism"], "criticism"),
            "verdict": obj["verdict"],
            "revised": _nonempty(obj["revision"], "revision"),
        }


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


STRATEGIES = {"chat": ChatStrategy, "json": JsonStrategy}


def get_strategy(name: str):
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown revise strategy '{name}' (known: {', '.join(STRATEGIES)})") from None
