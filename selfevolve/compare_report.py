"""A comparison's report: report.md, the short rich table the CLI prints, winrate.png and lengths.png.
Everything here reads the summary compare wrote (selfevolve/compare.py); nothing is computed again.

The probes (taught / reworded / kept, selfevolve/probes.py) come first: they are the evidence the gate decides
on. Summaries written before the probes existed have no ``probes`` (shown as "–") and no ``pairwise`` key
(their judge was always asked)."""
from __future__ import annotations

from pathlib import Path

from .stats import pyplot, save_figure


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def _num(x, fmt=".3f") -> str:
    return "–" if x is None else format(x, fmt)


PROBE_KINDS = ("taught", "reworded", "kept")
"""selfevolve.probes.KINDS, in the order the reports show them."""

PROBE_HEAD = ("probes", "n", "live → candidate passed", "Δ pass rate (CI)", "fixed / broken", "McNemar p")
"""Columns of :func:`probe_rows` (A = live, B = candidate)."""


def _signed(x) -> str:
    return "–" if x is None else f"{x:+.1%}"


def _p(x) -> str:
    return "–" if x is None else f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def probe_rows(probes: dict | None) -> list[tuple[str, ...]]:
    """One row per probe kind (:data:`PROBE_HEAD`); "–" where a kind had no probes or the summary none at all."""
    rows = []
    for kind in PROBE_KINDS:
        p = (probes or {}).get(kind) or {"n": 0}
        if not p["n"]:
            rows.append((kind, "0" if probes else "–", "–", "–", "–", "–"))
            continue
        rows.append((kind, str(p["n"]), f"{p['pass_a']} → {p['pass_b']} ({_pct(p['rate_a'])} → {_pct(p['rate_b'])})",
                     f"{_signed(p['diff'])} ({_signed(p['ci_low'])}…{_signed(p['ci_high'])})",
                     f"{p['fixed']} / {p['broken']}", _p(p["p_mcnemar"])))
    return rows


def probe_markdown(probes: dict | None) -> list[str]:
    """The probes table in markdown, with a line on how to read it."""
    conf = next((p["confidence"] for p in (probes or {}).values() if p.get("n")), 0.95)
    lines = ["| " + " | ".join(PROBE_HEAD) + " |", "|" + "---|" * len(PROBE_HEAD)]
    lines += ["| " + " | ".join(r) + " |" for r in probe_rows(probes)]
    return lines + ["", f"_Questions asked fresh to both sides, scored by the users' own words: taught = corrected "
                        f"turns, reworded = the same rephrased, kept = confirmed turns. Δ = candidate − live with a "
                        f"paired bootstrap {conf:.0%} CI; fixed = live failed, candidate passed; broken = the "
                        f"reverse; McNemar's exact test on those two._"]


def asked_judge(s: dict) -> bool:
    """Whether the pairwise judge was asked (summaries from before ``pairwise`` existed always asked it)."""
    return s.get("pairwise", True)


def drift_rows(d: dict) -> list[tuple[str, str]]:
    length = f"{d['mean_words']:.1f} ± {d['std_words']:.1f}"
    tokens = f"{d['mean_tokens']:.1f} ± {d['std_tokens']:.1f}" if "mean_tokens" in d else "–"
    return [("distinct-1", _num(d["distinct_1"])), ("distinct-2", _num(d["distinct_2"])),
            ("answer words (mean ± std)", length), ("answer tokens (mean ± std)", tokens),
            ("answers cut at max_tokens", str(d.get("finish_length", "–"))),
            ("perplexity of human texts", _num(d.get("perplexity_human"), ".2f")),
            ("embedding spread", _num(d.get("embedding_spread")))]


def _by_source_lines(s: dict) -> list[str]:
    groups = s.get("by_source") or {}
    if len(groups) < 2:
        return []
    parts = [f"{k}: {v['wins']} / {v['ties']} / {v['losses']} ({_pct(v['win_rate'])}, n={v['n']})"
             for k, v in groups.items()]
    return ["Per source (wins / ties / losses of B, win rate): " + "; ".join(parts) + ".", ""]


def _pairwise_markdown(s: dict) -> list[str]:
    r, lc, b = s["result"], s["length_controlled"], s["b"]["label"]
    if not asked_judge(s):
        return ["## Pairwise judge", "", "Not asked (`compare.pairwise`; the embedded model's judge flips with the "
                "order): the probes and the drift monitors are the evidence.", ""]
    lines = ["## Pairwise judge", "", f"Judge: {s['judge']}.", "",
             f"**B = {b} wins {r['wins']}, ties {r['ties']}, loses {r['losses']}** "
             f"({r['inconsistent']} ties are order flips, {r['invalid']} unreadable verdicts).", "",
             f"**Win rate of {b}: {_pct(r['win_rate'])}** ({r['confidence']:.0%} CI {_pct(r['ci_low'])}–"
             f"{_pct(r['ci_high'])}) → **{r['verdict']}**.", "", *_by_source_lines(s), f"_{r['method']}._", "",
             "### Length-controlled", ""]
    if "logistic" in lc and lc["logistic"]["slope"] is None:
        lines.append(f"Win rate at equal length: {lc['logistic']['note']}.")
    elif "logistic" in lc:
        lg = lc["logistic"]
        lines.append(f"Win rate at equal length (logistic regression of the outcome on log length ratio): "
                     f"**{_pct(lg['win_rate_at_equal_length'])}** (CI {_pct(lg['ci_low'])}–{_pct(lg['ci_high'])}); "
                     f"slope {lg['slope']:+.2f} ({lg['note']}).")
    lines += ["", "| length ratio B/A (words) | prompts | B win rate |", "|---|---|---|"]
    lines += [f"| {bk['range']} | {bk['n']} | {_pct(bk['win_rate'])} |" for bk in lc["buckets"]]
    return lines + [""]


def report_markdown(s: dict) -> str:
    a, b = s["a"]["label"], s["b"]["label"]
    lines = [f"# {b} vs {a}", "",
             f"{s['prompts']['n']} held-out prompts ({', '.join(f'{k} {v}' for k, v in s['prompts']['sources'].items())}); "
             f"answers at temperature {s['sampling']['temperature']}, max {s['sampling']['max_tokens']} tokens. "
             f"A = {a} (live), B = {b} (candidate).", "",
             "## Probes", "", *probe_markdown(s.get("probes")), "", *_pairwise_markdown(s),
             "## Drift monitors", "", f"| metric | A = {a} | B = {b} |", "|---|---|---|"]
    for (name, va), (_, vb) in zip(drift_rows(s["drift"]["a"]), drift_rows(s["drift"]["b"])):
        lines.append(f"| {name} | {va} | {vb} |")
    lines += ["", "![win rate](winrate.png)", "", "![lengths](lengths.png)", ""]
    if s["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in s["notes"]] + [""]
    lines += ["Files: generations.jsonl (both answers per prompt), judgments.jsonl (both verdicts and reasons), "
              "probes.jsonl (each probe's answers and pass / fail).", ""]
    return "\n".join(lines)


def table(s: dict):
    """The short rich table the CLI prints: the probes first, then the pairwise judge and the drift monitors."""
    from rich.table import Table

    r, lc = s["result"], s["length_controlled"]
    t = Table(title=f"{s['b']['label']} (B, candidate) vs {s['a']['label']} (A, live)")
    t.add_column("metric")
    t.add_column(f"A = {s['a']['label']}", justify="right")
    t.add_column(f"B = {s['b']['label']}", justify="right")
    probes = s.get("probes") or {}
    for kind, _, _, diff, fixed_broken, p_value in probe_rows(probes):
        p = probes.get(kind) or {"n": 0}
        if not p["n"]:
            t.add_row(f"{kind} probes", "–", "–")
            continue
        t.add_row(f"{kind} probes passed (of {p['n']})", f"{p['pass_a']} ({_pct(p['rate_a'])})",
                  f"{p['pass_b']} ({_pct(p['rate_b'])})")
        t.add_row(f"  {kind}: Δ (CI), fixed / broken, McNemar p", "", f"{diff}, {fixed_broken}, p={p_value}")
    if not asked_judge(s):
        t.add_row("pairwise judge", "", "not asked")
    else:
        t.add_row(f"B wins / ties / losses ({r['n']} prompts)", "", f"{r['wins']} / {r['ties']} / {r['losses']}")
        t.add_row("B win rate (CI)", "", f"{_pct(r['win_rate'])} ({_pct(r['ci_low'])}–{_pct(r['ci_high'])})")
        if "logistic" in lc:
            lg = lc["logistic"]
            t.add_row("B win rate at equal length", "",
                      f"{_pct(lg['win_rate_at_equal_length'])} ({_pct(lg['ci_low'])}–{_pct(lg['ci_high'])})")
        t.add_row("verdict", "", r["verdict"])
        groups = s.get("by_source") or {}
        if len(groups) > 1:
            for name, g in groups.items():
                t.add_row(f"B win rate, {name} ({g['n']})", "", _pct(g["win_rate"]))
    for (name, va), (_, vb) in zip(drift_rows(s["drift"]["a"]), drift_rows(s["drift"]["b"])):
        t.add_row(name, va, vb)
    return t


def _plot_probes(ax, s: dict) -> None:
    """Pass rate per probe kind, live vs candidate, each with its Wilson interval."""
    import numpy as np

    from .stats import wilson

    probes = s.get("probes") or {}
    kinds = [k for k in PROBE_KINDS if (probes.get(k) or {}).get("n")]
    x = np.arange(len(kinds))
    for off, side, label, color in ((-0.2, "a", f"{s['a']['label']} (live)", "#bbbbbb"),
                                    (0.2, "b", f"{s['b']['label']} (candidate)", "#4f81bd")):
        rates = [probes[k][f"rate_{side}"] for k in kinds]
        cis = [wilson(probes[k][f"pass_{side}"], probes[k]["n"]) for k in kinds]
        err = [[max(0.0, r - lo) for r, (lo, _) in zip(rates, cis)], [max(0.0, hi - r) for r, (_, hi) in zip(rates, cis)]]
        ax.bar(x + off, rates, width=0.4, yerr=err, capsize=4, color=color, label=label)
    ax.set_xticks(x, [f"{k}\n(n={probes[k]['n']})" for k in kinds])
    ax.set(ylim=(0, 1.05), ylabel="pass rate (95% Wilson CI)", title="probes: asked fresh, scored by users' words")
    ax.legend()


def _plot_pairwise(ax1, ax2, s: dict) -> None:
    r = s["result"]
    ax1.bar(["wins", "ties", "losses"], [r["wins"], r["ties"], r["losses"]], color=["#4f81bd", "#bbbbbb", "#c0504d"])
    ax1.set(title=f"{s['b']['label']} vs {s['a']['label']}: outcomes for B", ylabel="prompts")
    names, rates, lows, highs = ["win rate"], [r["win_rate"]], [r["ci_low"]], [r["ci_high"]]
    lg = s["length_controlled"].get("logistic")
    if lg and lg["win_rate_at_equal_length"] is not None:
        names.append("at equal length")
        rates.append(lg["win_rate_at_equal_length"])
        lows.append(lg["ci_low"])
        highs.append(lg["ci_high"])
    err = [[max(0.0, v - lo) for v, lo in zip(rates, lows)], [max(0.0, hi - v) for v, hi in zip(rates, highs)]]
    ax2.bar(names, rates, yerr=err, capsize=6, color="#4f81bd")
    ax2.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax2.set(ylim=(0, 1), title=f"B win rate, {r['confidence']:.0%} CI")


def plot_winrate(s: dict, path: Path) -> None:
    """The probes' pass rates (when there are probes) and the pairwise outcomes (when the judge was asked)."""
    plt = pyplot()
    has_probes = any((p or {}).get("n") for p in (s.get("probes") or {}).values())
    pairwise = asked_judge(s) and s["result"]["n"] > 0
    ratios = ([3] if has_probes else []) + ([3, 2] if pairwise else [])
    if not ratios:  # neither: say so in the picture rather than draw empty axes
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no probes and no pairwise judge: see the drift monitors", ha="center", va="center")
        save_figure(fig, path)
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, len(ratios), figsize=(3 * sum(ratios) / 2 + 1, 3.5), squeeze=False,
                             gridspec_kw={"width_ratios": ratios})
    axes = list(axes[0])
    if has_probes:
        _plot_probes(axes.pop(0), s)
    if pairwise:
        _plot_pairwise(axes[0], axes[1], s)
    save_figure(fig, path)
    plt.close(fig)


def plot_lengths(len_a: list[int], len_b: list[int], label_a: str, label_b: str, path: Path) -> None:
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.histogram_bin_edges((len_a + len_b) or [0], bins=20)
    ax.hist(len_a, bins=bins, alpha=0.55, label=f"A = {label_a}")
    ax.hist(len_b, bins=bins, alpha=0.55, label=f"B = {label_b}")
    ax.set(title="answer lengths", xlabel="words", ylabel="answers")
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)
