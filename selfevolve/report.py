"""Across rounds: what each round learnt (the probes), the gate's decision, every comparison's pairwise result
and drift monitors, and training, in one markdown file and one plot.

    selfevolve report   →   runs/<name>/report.md, runs/<name>/report.png

Summaries written before the probes existed read as "–" (no ``probes``); before ``pairwise`` existed the
judge was always asked.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import manifest
from .compare_summary import read_summary
from .compare_report import PROBE_KINDS, asked_judge
from .gate import summary_path
from .records import write_atomic
from .stats import wilson


def gate_decisions(run) -> dict[int, dict]:
    """Per decided round: the gate's decision (manifest ``stages.gate.decision``) with ``_label``, the comparison
    it decided on (None when the round trained nothing)."""
    out = {}
    for rnd in run.rounds():
        stages = manifest.load(rnd.manifest)["stages"]
        gate, compare = stages.get("gate") or {}, stages.get("compare") or {}
        if gate.get("status") != "complete" or "decision" not in gate:
            continue
        label = summary_path(rnd.dir, compare).parent.name if compare.get("outputs") else None
        out[rnd.number] = {**gate["decision"], "_label": label}
    return out


def collect(run, decisions: dict[int, dict] | None = None) -> list[dict]:
    """Every comparison summary of the run (rounds' eval/ folders, then the run's own), in round order; the one
    a round's gate decided on carries the decision as ``_gate`` (else None)."""
    decisions = gate_decisions(run) if decisions is None else decisions
    found: list[tuple[Path, dict | None]] = []
    for rnd in run.rounds():
        d = decisions.get(rnd.number)
        found += [(e.summary, d if d and d["_label"] == e.dir.name else None) for e in rnd.comparisons()]
    found += [(e.summary, None) for e in run.comparisons()]
    out = []
    for p, decision in found:
        s = dict(read_summary(p))
        s["_round"] = s["b"]["round"] if s["b"]["round"] is not None else s["a"]["round"]
        s["_gate"] = decision
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


def rate_ci(passed: int, n: int) -> str:
    """A pass rate with its 95% Wilson interval: ``70.0% (39.7–89.2)``."""
    low, high = wilson(passed, n)
    return f"{passed / n:.1%} ({low * 100:.1f}–{high * 100:.1f})"


def probe_cell(p: dict | None) -> str:
    """live → candidate pass rates with Wilson CIs, and the paired Δ with its bootstrap CI; "–" without probes."""
    if not p or not p.get("n"):
        return "–"
    return (f"{rate_ci(p['pass_a'], p['n'])} → {rate_ci(p['pass_b'], p['n'])}; Δ {p['diff']:+.1%} "
            f"({p['ci_low']:+.1%}…{p['ci_high']:+.1%}), n={p['n']}")


def _gate_text(d: dict | None) -> str:
    return "–" if d is None else ("**promote**" if d["promote"] else "keep live")


def _probe_section(summaries: list[dict]) -> list[str]:
    lines = ["## What users taught: probes, drift and the gate", "",
             "Pass rates of live (A) → candidate (B) with 95% Wilson intervals; Δ = B − A with its paired bootstrap "
             "CI. taught = corrected questions asked fresh, reworded = the same rephrased, kept = confirmed questions "
             "asked fresh.", "",
             "| round | B vs A | taught | reworded | kept | distinct-2 A → B | perplexity A → B | gate |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        pr, da, db = s.get("probes") or {}, s["drift"]["a"], s["drift"]["b"]
        cells = [probe_cell(pr.get(k)) for k in PROBE_KINDS]
        lines.append(f"| {s['_round'] if s['_round'] is not None else '–'} | {s['b']['label']} vs {s['a']['label']} "
                     f"| {' | '.join(cells)} | {_f(da['distinct_2'])} → {_f(db['distinct_2'])} "
                     f"| {_f(da.get('perplexity_human'), '.2f')} → {_f(db.get('perplexity_human'), '.2f')} "
                     f"| {_gate_text(s['_gate'])} |")
    return lines + [""]


def _gate_section(decisions: dict[int, dict]) -> list[str]:
    lines = ["## Gate decisions", ""]
    lines += [f"- round {n}: {_gate_text(d)} — {d['reason']}" for n, d in sorted(decisions.items())] or \
             ["No round has been through the gate yet."]
    return lines + [""]


def _pairwise_section(summaries: list[dict]) -> list[str]:
    lines = ["## Comparisons (B vs A on held-out prompts)", "",
             "| round | B | A | n | W / T / L | B win rate (95% CI) | at equal length | verdict | "
             "distinct-2 A → B | mean words A → B | perplexity A → B |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        r, da, db = s["result"], s["drift"]["a"], s["drift"]["b"]
        if asked_judge(s):
            lg = s["length_controlled"].get("logistic")
            judged = (f"{r['wins']} / {r['ties']} / {r['losses']} | {_pct(r['win_rate'])} ({_pct(r['ci_low'])}–"
                      f"{_pct(r['ci_high'])}) | {_pct(lg['win_rate_at_equal_length']) if lg else '–'} | {r['verdict']}")
        else:
            judged = "not asked | – | – | –"
        lines.append(
            f"| {s['_round'] if s['_round'] is not None else '–'} | {s['b']['label']} | {s['a']['label']} "
            f"| {s['prompts']['n']} | {judged} | {_f(da['distinct_2'])} → {_f(db['distinct_2'])} "
            f"| {da['mean_words']:.1f} → {db['mean_words']:.1f} "
            f"| {_f(da.get('perplexity_human'), '.2f')} → {_f(db.get('perplexity_human'), '.2f')} |")
    return lines


def markdown(run, summaries: list[dict], train_rows: list[dict], decisions: dict[int, dict] | None = None) -> str:
    lines = [f"# Run `{run.dir.name}`", ""]
    if summaries:
        lines += _probe_section(summaries)
    lines += _gate_section(decisions or {})
    if summaries:
        lines += _pairwise_section(summaries)
    else:
        lines.append("No comparison yet: run `selfevolve iterate` (or `selfevolve compare base r1`).")
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


def round_probes(summaries: list[dict]) -> dict[int, dict]:
    """Per round, the probes of the comparison its gate decided on, else of its last comparison with probes."""
    out: dict[int, dict] = {}
    for s in sorted(summaries, key=lambda s: s["_gate"] is not None):  # gated ones last: they win
        if s["_round"] is not None and s.get("probes"):
            out[s["_round"]] = s["probes"]
    return out


def _plot_probes(ax, summaries: list[dict]) -> None:
    per_round = round_probes(summaries)
    colors = {"taught": "#4f81bd", "reworded": "#9bbb59", "kept": "#c0504d"}
    for i, kind in enumerate(PROBE_KINDS):
        pts = sorted((n, p[kind]) for n, p in per_round.items() if (p.get(kind) or {}).get("n"))
        if not pts:
            continue
        xs = [n + 0.08 * (i - 1) for n, _ in pts]
        for side, style, label in (("b", "-", f"{kind}, candidate"), ("a", ":", f"{kind}, live")):
            rates = [p[f"rate_{side}"] for _, p in pts]
            cis = [wilson(p[f"pass_{side}"], p["n"]) for _, p in pts]
            err = [[max(0.0, r - lo) for r, (lo, _) in zip(rates, cis)],
                   [max(0.0, hi - r) for r, (_, hi) in zip(rates, cis)]]
            ax.errorbar(xs, rates, yerr=err if side == "b" else None, linestyle=style, color=colors[kind],
                        marker="o" if side == "b" else "x", capsize=4, label=label)
    ax.set(ylim=(-0.03, 1.03), xlabel="round", ylabel="pass rate (95% Wilson CI)", title="probes: live vs candidate")
    ax.margins(x=0.15)
    if per_round:
        ax.set_xticks(sorted(per_round))
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no probes yet", ha="center", va="center", transform=ax.transAxes)


def _plot_pairwise(ax, summaries: list[dict]) -> None:
    series: dict[str, list] = {}
    for s in summaries:
        if s["_round"] is not None and asked_judge(s) and s["result"]["n"]:
            r = s["result"]
            series.setdefault(s["a"]["label"], []).append((s["_round"], r["win_rate"], r["ci_low"], r["ci_high"]))
    for i, (opponent, pts) in enumerate(sorted(series.items())):
        pts.sort()
        err = [[max(0.0, p[1] - p[2]) for p in pts], [max(0.0, p[3] - p[1]) for p in pts]]
        ax.errorbar([p[0] + 0.08 * i for p in pts], [p[1] for p in pts], yerr=err, marker="o", capsize=4,
                    label=f"vs {opponent}")
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.margins(x=0.15)
    ax.set(ylim=(-0.03, 1.03), xlabel="round", ylabel="win rate (95% CI)", title="pairwise judge: B's win rate")
    if series:
        ax.legend()
        ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
    else:
        ax.text(0.5, 0.5, "not asked", ha="center", va="center", transform=ax.transAxes)


def _plot_drift(ax2, summaries: list[dict]) -> None:
    drift: dict[int, dict] = {}
    for s in summaries:
        for key in ("a", "b"):
            side = s[key]
            number = 0 if side["adapter"] is None else side["round"]
            if number is not None and s["_round"] is not None:
                drift[number] = s["drift"][key]
    rounds = sorted(drift)
    ax2.plot(rounds, [drift[n]["distinct_2"] for n in rounds], marker="o", color="#4f81bd", label="distinct-2")
    ax2.set(xlabel="round (0 = base)", ylabel="distinct-2", title="drift monitors")
    ax3 = ax2.twinx()
    ax3.plot(rounds, [drift[n]["mean_words"] for n in rounds], marker="s", color="#c0504d", label="mean words")
    ax3.set_ylabel("mean answer words")
    if rounds:
        handles = ax2.get_legend_handles_labels()[0] + ax3.get_legend_handles_labels()[0]
        ax2.legend(handles, [h.get_label() for h in handles], loc="best")
    ax2.set_xticks(rounds)


def plot(summaries: list[dict], path: Path) -> None:
    """Left: taught / reworded / kept pass rates per round, candidate (with CI) and live. Middle: B's pairwise
    win rate with CI, one series per opponent ("not asked" when no judge was). Right: distinct-2 and mean
    answer length per round (round 0 = the base model, when a comparison includes it)."""
    from .stats import pyplot, save_figure

    plt = pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.2))
    _plot_probes(ax1, summaries)
    _plot_pairwise(ax2, summaries)
    _plot_drift(ax3, summaries)
    save_figure(fig, path)
    plt.close(fig)


def write_report(run) -> tuple[Path, Path, list[dict]]:
    decisions = gate_decisions(run)
    summaries = collect(run, decisions)
    run.dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run.report, markdown(run, summaries, training(run), decisions))
    plot(summaries, run.report_plot)
    return run.report, run.report_plot, summaries
