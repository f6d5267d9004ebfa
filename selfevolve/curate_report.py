"""The curated round's dataset card (markdown) and its plots: answer lengths before and after curation,
records dropped per filter. The statistics come from selfevolve/stats.py."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from .stats import pyplot, save_figure

def plot_lengths(before: dict[str, list[str]], after: dict[str, list[str]], path: Path) -> None:
    """Two panels (all read records / kept records), each a histogram of original vs revised lengths."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    every = [len(t) for texts in (before, after) for values in texts.values() for t in values] or [0]
    bins = np.histogram_bin_edges(every, bins=30)  # one set of bins: the panels and series compare directly
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
    for ax, (title, texts) in zip(axes, (("before curation", before), ("kept", after))):
        for label, values in texts.items():
            ax.hist([len(t) for t in values], bins=bins, alpha=0.55, label=label)
        ax.set(title=title, xlabel="characters", ylabel="answers")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def plot_filters(funnel: list[tuple[str, int, int]], path: Path) -> None:
    """Bar chart of the records each filter dropped, in the order the filters ran."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [name for name, _, _ in funnel] or ["(no filter)"]
    drops = [dropped for _, _, dropped in funnel] or [0]
    ax.bar(names, drops, color="#c0504d")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="records dropped per filter", ylabel="records")
    ax.tick_params(axis="x", rotation=20)
    save_figure(fig, path)
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
