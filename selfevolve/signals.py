"""Hindsight signal per assistant turn: did the user accept the answer, correct it, or neither?

The user is the judge. What the user said right after an assistant turn (its *aftermath*) and their
explicit thumbs up/down decide whether that answer was right; the served model's opinion of itself does
not (the 135M model judges at chance). Labels:

- ``corrected``: the user says or shows the answer was wrong, failed, or missed what was asked as asked
  (a factual correction, an error/traceback report, "that doesn't work", "you forgot X", "no, that's not
  right", sarcasm such as "great, another error").
- ``confirmed``: the user accepts the answer ("thanks", "works", "perfect", "that's right"), possibly going
  on to a new request ("perfect, now can you also ...?").
- ``unclear``: everything else: a new unrelated question, a follow-up question that neither accepts nor
  rejects, a clarification of the user's own question ("I meant in Python 2"), chit-chat, ambiguous text
  ("hmm ok").

Explicit feedback wins over text: ``up`` -> confirmed, ``down`` -> corrected, both with confidence 1.0.
Otherwise a small linear head over all-MiniLM-L6-v2 embeddings of the follow-up
(``selfevolve/data/signal_head.json``, plain JSON, trained by ``scripts/train_signals.py`` on
``selfevolve/data/followups.jsonl``) gives class probabilities with a numpy softmax: no sklearn and no
pickle at inference. Measured quality: ``scripts/bench_signals.py`` -> ``bench_out/signals.md``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .stage import StageContext, StageError, StageResult, recorded

LABELS = ("confirmed", "corrected", "unclear")
HEAD_PATH = Path(__file__).resolve().parent / "data" / "signal_head.json"
FOLLOWUPS_PATH = Path(__file__).resolve().parent / "data" / "followups.jsonl"


@dataclass
class Signal:
    label: str
    """``confirmed`` | ``corrected`` | ``unclear``."""
    confidence: float
    """0-1: 1.0 for explicit feedback; the head's probability of its top class for text; 0.0 with no signal."""
    source: str
    """``feedback`` (thumbs up/down), ``aftermath`` (the next user message, classified) or ``none``."""
    probs: dict[str, float] = field(default_factory=dict)
    """The head's probability per label (empty for feedback and none); kept when a low confidence made the
    label ``unclear``, so a later stage can see what the head leaned to."""


@dataclass
class SignalConfig:
    enabled: bool = True
    """Classify turns at all. Off: every turn is ``unclear`` unless explicit feedback says otherwise."""
    min_confidence: float = 0.76
    """A classified follow-up whose top probability is below this becomes ``unclear``. Chosen by
    ``scripts/train_signals.py`` on the training split only (5-fold out-of-fold probabilities, grouped by
    answer): the lowest threshold at which both ``corrected`` and ``confirmed`` predictions reach 85%
    precision (there: corrected 0.856 precision / 0.534 recall, confirmed 0.987 / 0.791). Why precision
    first: a wrong ``corrected`` sends a good answer to be rewritten, a wrong ``confirmed`` trains on a bad
    original, while ``unclear`` only costs coverage. Why 85% and not 90%: 90% needs t=0.90, where corrected
    recall falls to 0.30. On real ShareGPT follow-ups precision is lower (bench_out/signals.md). The value
    the last training measured is ``min_confidence`` in signal_head.json (a test keeps the two equal)."""

    def validate(self, key: str) -> None:
        from .errors import check_ranges

        check_ranges(self, key, unit=("min_confidence",))


@lru_cache(maxsize=4)
def load_head(path: str = str(HEAD_PATH)) -> dict:
    """The trained head: classes, coef (n_classes x dim), intercept, features and provenance."""
    head = json.loads(Path(path).read_text(encoding="utf-8"))
    head["_W"] = np.asarray(head["coef"], dtype=np.float32)
    head["_b"] = np.asarray(head["intercept"], dtype=np.float32)
    return head


def features(followups: list[str], answers: list[str] | None, kind: str) -> np.ndarray:
    """The head's input rows. ``followup``: the follow-up's embedding. ``followup+answer``: the follow-up's
    embedding then the answer's (an empty answer when none is given). Separate embeddings, not one text:
    MiniLM reads 256 word pieces, and a long answer would push the follow-up out of one joint text."""
    from selfevolve.embeddings import encode

    f = encode([t or "" for t in followups])
    if kind == "followup":
        return f
    if kind == "followup+answer":
        a = encode([t or "" for t in (answers or [""] * len(followups))])
        return np.concatenate([f, a], axis=1)
    raise ValueError(f"unknown feature kind {kind!r} in the signal head")


def predict_proba(x: np.ndarray, head: dict) -> np.ndarray:
    """Softmax over coef.x + intercept (what sklearn's multinomial LogisticRegression computes)."""
    z = x @ head["_W"].T + head["_b"]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classify(followups: list[str], answers: list[str] | None = None, min_confidence: float = 0.0,
             head_path: str | Path = HEAD_PATH) -> list[Signal]:
    """One ``aftermath`` Signal per follow-up (batched through the embedder). ``answers`` (the assistant
    answer each follow-up replies to) is used only by a head trained on ``followup+answer`` features."""
    if answers is not None and len(answers) != len(followups):
        raise ValueError(f"{len(followups)} follow-ups but {len(answers)} answers")
    if not followups:
        return []
    head = load_head(str(head_path))
    p = predict_proba(features(followups, answers, head["features"]), head)
    out = []
    for row in p:
        probs = {c: round(float(v), 4) for c, v in zip(head["classes"], row)}
        top = int(row.argmax())
        label = head["classes"][top] if row[top] >= min_confidence else "unclear"
        out.append(Signal(label, float(row[top]), "aftermath", probs))
    return out


def latest_feedback(conversation: dict) -> dict[int, str]:
    """message_index -> the last rating given to it (``meta.feedback`` is in the order it was given)."""
    ratings: dict[int, str] = {}
    for fb in (conversation.get("meta") or {}).get("feedback") or []:
        if fb.get("rating") in ("up", "down") and isinstance(fb.get("message_index"), int):
            ratings[fb["message_index"]] = fb["rating"]
    return ratings


def aftermath(messages: list[dict], turn: int) -> str | None:
    """The next user message after assistant message ``turn``, or None when the conversation ends first."""
    for m in messages[turn + 1:]:
        if m["role"] == "user":
            return m["content"]
    return None


def turn_signals(conversation: dict, turns: list[int], min_confidence: float) -> dict[int, Signal]:
    """Signal of each assistant turn (indices as ``records.assistant_turns`` gives them). Explicit feedback
    wins; else the aftermath is classified; no follow-up and no feedback -> ``unclear`` from ``none``."""
    msgs = conversation["messages"]
    ratings = latest_feedback(conversation)
    out: dict[int, Signal] = {}
    pending: list[tuple[int, str, str]] = []
    for t in turns:
        if t in ratings:
            out[t] = Signal("confirmed" if ratings[t] == "up" else "corrected", 1.0, "feedback")
            continue
        follow = aftermath(msgs, t)
        if follow is None or not follow.strip():
            out[t] = Signal("unclear", 0.0, "none")
        else:
            pending.append((t, follow, msgs[t]["content"]))
    if pending:
        sigs = classify([p[1] for p in pending], [p[2] for p in pending], min_confidence)
        out.update({p[0]: s for p, s in zip(pending, sigs)})
    return {t: out[t] for t in turns}


# ---------------------------------------------------------------- the round's signals stage

NAME = "signals"


def evidence(conversation: dict, turn: int, sig: Signal) -> str:
    """The user's words behind a signal: a feedback comment, else the follow-up message."""
    if sig.source == "feedback":
        comments = [fb.get("comment") for fb in (conversation.get("meta") or {}).get("feedback") or []
                    if fb.get("message_index") == turn and fb.get("comment")]
        return comments[-1] if comments else ""
    return aftermath(conversation["messages"], turn) or ""


def run(ctx: StageContext) -> StageResult:
    """The hindsight signal of every assistant turn of the round's conversations → ``signals.jsonl``."""
    from .records import assistant_turns, read_jsonl, turn_id, write_jsonl

    rnd, cfg = ctx.rnd, ctx.cfg.signals
    done = recorded(ctx, NAME, [rnd.conversations])
    if done:
        return done
    if not rnd.conversations.exists():
        raise StageError(f"{rnd.conversations} is missing: run the collect step first")
    t0 = time.time()
    rows = []
    for conv in read_jsonl(rnd.conversations):
        turns = assistant_turns(conv)
        if cfg.enabled:
            sigs = turn_signals(conv, turns, cfg.min_confidence)
        else:  # explicit feedback only
            ratings = latest_feedback(conv)
            sigs = {t: Signal("confirmed" if ratings[t] == "up" else "corrected", 1.0, "feedback") if t in ratings
                    else Signal("unclear", 0.0, "none") for t in turns}
        for t in turns:
            s = sigs[t]
            rows.append({"id": turn_id(conv["id"], t), "label": s.label, "confidence": round(s.confidence, 4),
                         "source": s.source, "probs": s.probs, "text": evidence(conv, t, s)[:2000]})
    write_jsonl(rnd.signals, rows)
    labels = {k: sum(r["label"] == k for r in rows) for k in LABELS}
    sources = {k: sum(r["source"] == k for r in rows) for k in ("feedback", "aftermath", "none")}
    line = (f"turns {len(rows)} = " + " + ".join(f"{k} {v}" for k, v in labels.items())
            + f"  (feedback {sources['feedback']}, classified {sources['aftermath']}, no follow-up {sources['none']})")
    return ctx.record(NAME, inputs=[rnd.conversations], outputs=[rnd.signals], started=t0, line=line,
                      counts={"turns": len(rows), "labels": labels, "sources": sources})
