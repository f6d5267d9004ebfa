"""The injection head: a logistic regression that reads the user text of a turn and says whether it tries to make
the model carry out an instruction or emit a payload, rather than ask or correct.

The pattern rules of injection_text.py catch the phrasings they were written for; measured, 36–93% of payloads
written later in new phrasings got through them (about a third as many with the head too). The head generalises
from meaning instead: MiniLM embeddings (selfevolve/embeddings.py) of the question and of the other user text of
the turn (earlier turns, corrections), their elementwise product (does the "correction" still talk about the
question?) and hashed character n-grams (cross-validation picked both). Trained by scripts/train_injection.py on
the tune half of selfevolve/data/injection_chats.jsonl plus selfevolve/data/injection_train_extra.jsonl only;
weights are plain JSON (selfevolve/data/injection_head.json), scored with numpy: no scikit-learn at run time.
A variant that scored each user message alone (max over the turn) measured worse on every split
(docs/bench/injection.md).
"""
from __future__ import annotations

import json
import math
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

HEAD_PATH = Path(__file__).resolve().parent.parent / "data" / "injection_head.json"
CHUNK = 800  # characters per embedded chunk: MiniLM reads 256 word pieces, about 1,000 characters of English
MAX_CHUNKS = 8  # first and last chunks of a very long text: its cost stays bounded, its ends are read
MAX_CHARS = 20_000  # n-grams of the first and last 10,000 characters


def user_texts(rec: dict) -> tuple[str, str]:
    """(question, rest): the user message the turn answers, and every other user message of the chat (earlier
    turns, then the corrections and later turns)."""
    ctx = [m["content"] for m in rec.get("context", []) if m.get("role") == "user"]
    after = [m["content"] for m in rec.get("aftermath", []) if m.get("role") == "user"]
    question = ctx[-1] if ctx else ""
    return question, "\n".join(ctx[:-1] + after)


def chunks(text: str) -> list[str]:
    parts = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    if len(parts) > MAX_CHUNKS:
        parts = parts[:MAX_CHUNKS // 2] + parts[-MAX_CHUNKS // 2:]
    return parts


def embed(texts: list[str]) -> np.ndarray:
    """One unit vector per text: the normalised mean of its chunks' MiniLM embeddings (zeros for empty text)."""
    from ..embeddings import encode

    pieces, owner = [], []
    for i, t in enumerate(texts):
        if t.strip():
            for c in chunks(t):
                pieces.append(c)
                owner.append(i)
    out = np.zeros((len(texts), 384), dtype=np.float32)
    if pieces:
        vecs = encode(pieces)
        np.add.at(out, np.asarray(owner), vecs)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def ngram_counts(text: str, field: str, buckets: int, ns: tuple[int, ...]) -> dict[int, float]:
    """Hashed character n-grams of ``text`` (casefolded, whitespace squeezed): bucket → sublinear tf, L2-normed.
    crc32 is stable across processes and Python versions, unlike hash()."""
    text = " ".join(text.casefold().split())
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS // 2] + " " + text[-MAX_CHARS // 2:]
    counts: dict[int, int] = {}
    padded = f" {text} "
    for n in ns:
        for i in range(len(padded) - n + 1):
            b = zlib.crc32((field + padded[i:i + n]).encode("utf-8")) % buckets
            counts[b] = counts.get(b, 0) + 1
    tf = {b: 1.0 + math.log(c) for b, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in tf.values())) or 1.0
    return {b: v / norm for b, v in tf.items()}


def dense_features(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """[question, rest, question * rest]: the product lets a linear model see whether the rest is about the
    question (a correction usually is; a demanded payload is not)."""
    return np.concatenate([q, r, q * r], axis=1)


@lru_cache(maxsize=2)
def load_head(path: str = str(HEAD_PATH)) -> dict:
    head = json.loads(Path(path).read_text(encoding="utf-8"))
    head["_dense"] = np.asarray(head["dense_coef"], dtype=np.float32) if head.get("dense_coef") else None
    return head


def score_texts(pairs: list[tuple[str, str]], head: dict | None = None) -> np.ndarray:
    """P(injection) for each (question, rest) pair."""
    head = head or load_head()
    if not pairs:
        return np.zeros(0)
    z = np.full(len(pairs), float(head["intercept"]))
    if head["_dense"] is not None:
        q = embed([p[0] for p in pairs])
        r = embed([p[1] for p in pairs])
        z += dense_features(q, r) @ head["_dense"]
    if head.get("ngram_coef"):
        coef = head["ngram_coef"]
        buckets, ns = head["ngram_buckets"], tuple(head["ngram_sizes"])
        for i, (qt, rt) in enumerate(pairs):
            for field, t in (("q", qt), ("r", rt)):
                z[i] += sum(v * coef.get(str(b), 0.0) for b, v in ngram_counts(t, field, buckets, ns).items())
    return 1.0 / (1.0 + np.exp(-z))


def score(records: list[dict], head: dict | None = None) -> np.ndarray:
    """P(injection) per turn."""
    return score_texts([user_texts(r) for r in records], head)
