"""Across rounds: every comparison's summary and drift monitors in one table and one plot.

    selfevolve report   →   runs/<name>/report.md, runs/<name>/report.png
"""
from __future__ import annotations

import json
from pathlib import Path

from .records import write_atomic


def collect(run) -> list[dict]:
    """Every comparison summary of the run (rounds' eval/ folders, then the run's own), in round order."""
    found: list[Path] = []
    for rnd in run.rounds():
        found += sorted(rnd.eval_root.glob("*/summary.json"))
    found += sorted((run.dir / "eval").glob("*/summary.json"))
    out = []
    for p in found:
        s = json.loads(p.read_text())
        s["_round"] = s["b"]["round"] if s["b"]["round"] is not None else s["a"]["round"]
        out.append(s)
    return out


def training(run) -> list[dict]:
    rows = []
    for rnd in run.rounds():
        if rnd.train_meta.exists():
            meta = json.loads(rnd.train_meta.read_text())
            sft = meta["metrics"]["sft"]
            rows.append({"round": rnd.number, "examples": meta["examples"].get("train_sft"),
                         "dpo_examples": meta["examples"].get("train_dpo"), "steps": sft["steps"],
                         "loss": sft.get("final_loss"), "tokens": sft["tokens"], "tokens_per_s": sft["tokens_per_s"],
                         "dpo": "dpo" in meta["metrics"]})
    return rows


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def _f(x, fmt=".3f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(run, summaries: list[dict], train_rows: list[dict]) -> str:
    lines = [f"# Run `{run.dir.name}`", "", "## Comparisons (B vs A on held-out prompts)", ""]
    if summaries:
        lines += ["| round | B | A | n | W / T / L | B win rate (95% CI) | at equal length | verdict | "
                  "distinct-2 A → B | mean words A → B | perplexity A → B |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in summaries:
            r, da, db = s["result"], s["drift"]["a"], s["drift"]["b"]
            lg = s["length_controlled"].get("logistic")
            lc = f"{_pct(lg['win_rate_at_equal_length'])}" if lg else "–"
            lines.append(
                f"| {s['_round'] if s['_round'] is not None else '–'} | {s['b']['label']} | {s['a']['label']} | {r['n']} "
                f"| {r['wins']} / {r['ties']} / {r['losses']} | {_pct(r['win_rate'])} ({_pct(r['ci_low'])}–"
                f"{_pct(r['ci_high'])}) | {lc} | {r['verdict']} | {_f(da['distinct_2'])} → {_f(db['distinct_2'])} "
                f"| {da['mean_words']:.1f} → {db['mean_words']:.1f} "
                f"| {_f(da.get('perplexity_human'), '.2f')} → {_f(db.get('perplexity_human'), '.2f')} |")
    else:
        lines.append("No comparison yet: run `selfevolve compare base r1`.")
    lines += ["", "## Training", ""]
    if train_rows:
        lines += ["| round | SFT examples | DPO examples | steps | final loss | tokens | tokens/s |",
                  "|---|---|---|---|---|---|---|"]
        for t in train_rows:
            lines.append(f"| {t['round']} | {t['examples']} | {t['dpo_examples'] or '–'} | {t['steps']} | "
                         f"{_f(t['loss'], '.4f')} | {t['tokens']:,} | {t['tokens_per_s']:,.0f} |")
    else:
        lines.append("No round has been trained yet.")
    lines += ["", "![rounds](report.png)", "",
              "Each comparison's own report: `round-NNN/eval/<A>_vs_<B>/report.md`.", ""]
    return "\n".join(lines)


def plot(summaries: list[dict], path: Path) -> None:
    """Left: B's win rate with CI per round, one series per opponent. Right: distinct-2 and mean answer length
    per round (round 0 = the base model, when a comparison includes it)."""
    from .stats import _pyplot, _save

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    series: dict[str, list] = {}
    drift: dict[int, dict] = {}
    for s in summaries:
        if s["_round"] is None:
            continue
        r = s["result"]
        series.setdefault(s["a"]["label"], []).append((s["_round"], r["win_rate"], r["ci_low"], r["ci_high"]))
        for key in ("a", "b"):
            side = s[key]
            number = 0 if side["adapter"] is None else side["round"]
            if number is not None:
                drift[number] = s["drift"][key]
    for i, (opponent, pts) in enumerate(sorted(series.items())):
        pts.sort()
        xs = [p[0] + 0.08 * i for p in pts]
        ys = [p[1] for p in pts]
        err = [[max(0.0, p[1] - p[2]) for p in pts], [max(0.0, p[3] - p[1]) for p in pts]]
        ax1.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=f"vs {opponent}")
    ax1.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax1.margins(x=0.15)
    ax1.set(ylim=(-0.03, 1.03), xlabel="round", ylabel="win rate (95% CI)", title="round's adapter (B) win rate")
    if series:
        ax1.legend()
    rounds = sorted(drift)
    ax2.plot(rounds, [drift[n]["distinct_2"] for n in rounds], marker="o", color="#4f81bd", label="distinct-2")
    ax2.set(xlabel="round (0 = base)", ylabel="distinct-2", title="drift monitors")
    ax3 = ax2.twinx()
    ax3.plot(rounds, [drift[n]["mean_words"] for n in rounds], marker="s", color="#c0504d", label="mean words")
    ax3.set_ylabel("mean answer words")
    handles = ax2.get_legend_handles_labels()[0] + ax3.get_legend_handles_labels()[0]
    if rounds:
        ax2.legend(handles, [h.get_label() for h in handles], loc="best")
    ax1.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
    ax2.set_xticks(rounds)
    _save(fig, path)
    plt.close(fig)


def write_report(run) -> tuple[Path, Path, list[dict]]:
    summaries = collect(run)
    run.dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run.report, markdown(run, summaries, training(run)))
    plot(summaries, run.report_plot)
    return run.report, run.report_plot, summaries
