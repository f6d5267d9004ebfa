"""``summary.json`` of one comparison: its shape (:class:`CompareSummary`), read and written here so that what
reads it (reports, the gate, ``selfevolve report``) needs no part of selfevolve/compare.py's machinery."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from .records import write_json


class CompareSummary(TypedDict):
    """summary.json of one comparison (``round-NNN/eval/<A>_vs_<B>/``): what reports, the loop's gate and
    ``selfevolve report`` read."""

    label: str
    """``<A>_vs_<B>``, the folder's name (``dir``: its path)."""
    a: dict
    """Side A (:meth:`Side.to_dict`: spec, label, adapter, round); ``b``: side B, the candidate."""
    b: dict
    dir: str
    created: str
    """Local time the summary was written (ISO 8601, seconds); ``seconds``: wall time of the comparison."""
    seconds: float
    phase_seconds: dict
    """Seconds per phase (generate_a, generate_b, judge, perplexity, embeddings): where a slow one spends it."""
    prompts: dict
    """n, sources (count per source), file, heldout, heldout_files, heldout_conversations."""
    judge: str
    """Which judge: the same backend, or the served model and URL of an OpenAI-compatible one."""
    sampling: dict
    """temperature, top_p, max_tokens of the answers."""
    pairwise: bool
    """Whether the pairwise judge was asked (``compare.pairwise``); when not, ``result`` has n = 0."""
    result: dict
    """:func:`selfevolve.stats.win_summary`: n, wins, ties, losses, inconsistent, invalid, win_rate, ci_low,
    ci_high, confidence, verdict, method."""
    by_source: dict
    """Per prompt source: n, wins, ties, losses, win_rate."""
    length_controlled: dict
    """:func:`selfevolve.stats.length_controlled`: buckets, median_ratio, logistic."""
    drift: dict
    """Per side (``a``, ``b``): the drift monitors (selfevolve/drift.py)."""
    probes: dict
    """Per probe kind (taught, reworded, kept; selfevolve/probes.py): n, pass_a, pass_b, rates, diff with its
    paired bootstrap CI, fixed, broken, p_mcnemar. Empty when no probes were asked."""
    notes: list[str]
    """What a reader must know to read the numbers (no held-out prompts yet, an order-biased judge...)."""


def read_summary(path: Path) -> CompareSummary:
    return json.loads(Path(path).read_text())


def write_summary(path: Path, summary: CompareSummary) -> None:
    write_json(path, summary)
