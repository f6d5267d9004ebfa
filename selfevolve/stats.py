"""Quality statistics of a curated round: judge win rate with its CI, length distributions, the dataset
card (markdown) and its plots (PNG, matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path


def wilson(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    scipy's ``binomtest(k, n).proportion_ci("wilson")`` gives the same interval but only takes whole k;
    with ties counting half, k can be x.5, so the closed form is used with scipy's normal quantile (the
    tests check both agree on whole k). Per-record scores in [0, 1] have variance at most p(1-p), so the
    binomial interval is conservative for them."""
    from scipy.stats import norm

    if n == 0:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(scores: list[float], confidence: float = 0.95) -> dict | None:
    """Win rate of revised over original from per-record judge scores (mean over both orders, tie = ½).

    The record is the unit: its two orders are not independent judgments, so they are averaged, not counted twice."""
    if not scores:
        return None
    low, high = wilson(sum(scores), len(scores), confidence)
    return {"n": len(scores), "rate": sum(scores) / len(scores), "low": low, "high": high,
            "confidence": confidence, "method": "Wilson score interval, record = unit, ties count half"}


def length_summary(texts: list[str]) -> dict:
    import numpy as np

    if not texts:
        return {"n": 0}
    lengths = np.array([len(t) for t in texts])
    p10, median, p90 = np.percentile(lengths, [10, 50, 90])
    return {"n": len(texts), "mean": float(lengths.mean()), "p10": float(p10), "median": float(median),
            "p90": float(p90), "max": int(lengths.max())}


# ---------------------------------------------------------------- plots

def _save(fig, path: Path) -> None:
    """savefig to a temporary file, then rename: a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: the stage runs on servers
    import matplotlib.pyplot as plt

    return plt


def plot_lengths(before: dict[str, list[str]], after: dict[str, list[str]], path: Path) -> None:
    """Two panels (all read records / kept records), each a histogram of original vs revised lengths."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    every = [len(t) for texts in (before, after) for values in texts.values() for t in values] or [0]
    bins = np.histogram_bin_edges(every, bins=30)  # one set of bins: the panels and series compare directly
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
    for ax, (title, texts) in zip(axes, (("before curation", before), ("kept", after))):
        for label, values in texts.items():
            ax.hist([len(t) for t in values], bins=bins, alpha=0.55, label=label)
        ax.set(title=title, xlabel="characters", ylabel="answers")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    _save(fig, path)
    plt.close(fig)


def plot_filters(funnel: list[tuple[str, int, int]], path: Path) -> None:
    """Bar chart of the records each filter dropped, in the order the filters ran."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [name for name, _, _ in funnel] or ["(no filter)"]
    drops = [dropped for _, _, dropped in funnel] or [0]
    ax.bar(names, drops, color="#c0504d")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="records dropped per filter", ylabel="records")
    ax.tick_params(axis="x", rotation=20)
    _save(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------- card

def _fmt_lengths(label: str, s: dict) -> str:
    if not s["n"]:
        return f"| {label} | 0 | | | | |"
    return f"| {label} | {s['n']} | {s['mean']:.0f} | {s['median']:.0f} | {s['p10']:.0f}–{s['p90']:.0f} | {s['max']} |"


def card_markdown(*, round_no: int, read: int, kept: int, funnel: list[tuple[str, int, int]],
                  reasons: dict[str, Counter], win: dict | None, lengths: dict[str, dict],
                  sizes: dict[str, int], judge: str) -> str:
    lines = [f"# Curated data, round {round_no}", "",
             f"**read {read} = kept {kept} + dropped {read - kept}**", "",
             "## Filters (in the order they ran)", "",
             "| filter | seen | dropped | most common reasons |", "|---|---|---|---|"]
    for name, seen, dropped in funnel:
        top = "; ".join(f"{r} ×{n}" for r, n in reasons.get(name, Counter()).most_common(3))
        lines.append(f"| {name} | {seen} | {dropped} | {top.replace('|', '/')} |")
    lines += ["", "## Judge", ""]
    if win:
        lines.append(f"Win rate of the revised over the original answer ({judge}): **{win['rate']:.1%}** "
                     f"({win['confidence']:.0%} CI {win['low']:.1%}–{win['high']:.1%}, n={win['n']} records "
                     f"judged in both orders; {win['method']}).")
    else:
        lines.append("No record was judged (the judge filter is off, or nothing reached it).")
    lines += ["", "## Answer lengths (characters)", "",
              "| answers | n | mean | median | p10–p90 | max |", "|---|---|---|---|---|---|"]
    lines += [_fmt_lengths(label, s) for label, s in lengths.items()]
    lines += ["", "![lengths](lengths.png)", "", "![filters](filters.png)", "",
              "## Datasets", "",
              "| dataset | records | columns |", "|---|---|---|"]
    columns = {"sft": "id, round, prompt, completion", "dpo": "id, round, prompt, chosen, rejected"}
    for name, n in sizes.items():
        lines.append(f"| {name} | {n} | {columns[name.removeprefix('train_')]} |")
    lines += ["", "`prompt` is the conversation up to the turn (messages), `completion`/`chosen` the revised answer "
              "and `rejected` the original one, as assistant messages: TRL's conversational prompt-completion and "
              "preference formats. `train_*` accumulate every round so far, deduplicated by id and content."]
    return "\n".join(lines) + "\n"
