"""The reports read what compare and the gate recorded: one comparison's report.md / rich table / winrate.png,
and ``selfevolve report`` across rounds. Summaries are hand-made (the numbers are known), one of them in the
shape written before probes and ``pairwise`` existed."""
import io
import json

from rich.console import Console

from selfevolve import manifest
from selfevolve.compare_report import plot_winrate, probe_rows, report_markdown, table
from selfevolve.layout import RunLayout
from selfevolve.records import write_json
from selfevolve.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def probe(n, pass_a, pass_b, fixed, broken, diff_ci, p):
    return {"n": n, "pass_a": pass_a, "pass_b": pass_b, "rate_a": pass_a / n, "rate_b": pass_b / n,
            "diff": (pass_b - pass_a) / n, "ci_low": diff_ci[0], "ci_high": diff_ci[1], "fixed": fixed,
            "broken": broken, "p_mcnemar": p, "confidence": 0.95}


PROBES = {"taught": probe(10, 3, 7, 4, 0, (0.1, 0.7), 0.125), "reworded": probe(10, 2, 5, 3, 0, (0.0, 0.6), 0.25),
          "kept": probe(8, 8, 7, 0, 1, (-0.375, 0.0), 1.0)}


def drift(words, d2, ppl):
    return {"distinct_1": 0.5, "distinct_2": d2, "mean_words": words, "std_words": 3.0, "mean_tokens": words * 1.3,
            "std_tokens": 4.0, "finish_length": 0, "perplexity_human": ppl, "embedding_spread": 0.4}


def summary(a: str, b: str, b_round: int | None, *, probes=None, pairwise=False, wins=0, legacy=False) -> dict:
    """A compare summary.json; ``legacy``: the shape before probes and ``pairwise`` (the judge always asked)."""
    n = 8 if (pairwise or legacy) else 0
    result = {"n": n, "wins": wins, "ties": n - wins, "losses": 0, "inconsistent": 0, "invalid": 0,
              "win_rate": (wins + (n - wins) / 2) / n if n else 0.5, "ci_low": 0.3 if n else 0.0,
              "ci_high": 0.9 if n else 1.0, "confidence": 0.95,
              "verdict": "no significant difference", "method": "B's win rate over prompts"}
    a_round = None if a == "base" else int(a.split("-")[1])
    s = {"label": f"{a}_vs_{b}", "created": "2025-01-01T00:00:00", "seconds": 1.0, "phase_seconds": {},
         "a": {"spec": a, "label": a, "adapter": None if a == "base" else f"/x/{a}/adapter", "round": a_round},
         "b": {"spec": b, "label": b, "adapter": f"/x/{b}/adapter", "round": b_round}, "dir": f"/x/{b}/eval",
         "prompts": {"n": 8, "sources": {"mt_bench": 8}}, "judge": "same backend (base model)",
         "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 192}, "result": result, "by_source": {},
         "length_controlled": {"buckets": [], "median_ratio": None}, "notes": [],
         "drift": {"a": drift(40.0, 0.61, 12.5), "b": drift(44.0, 0.58, 13.1)}}
    if not legacy:
        s.update(pairwise=pairwise, probes=probes or {})
    return s


def write_round(run: RunLayout, n: int, s: dict, decision: dict | None = None) -> None:
    """Round ``n`` with its comparison and, when given, the compare + gate manifest entries that point at it."""
    rnd = run.round(n)
    path = rnd.eval_dir(s["label"]) / "summary.json"
    write_json(path, s)
    if decision is not None:
        manifest.record_stage(rnd.manifest, "compare", inputs=[], outputs=[path], counts={}, started=0.0)
        manifest.record_stage(rnd.manifest, "gate", inputs=[path], outputs=[], counts={}, started=0.0,
                              decision=decision)


PROMOTED = {"promote": True, "reason": "round-002 vs round-001: taught 3→7/10, Δ +40.0%",
            "checks": [{"name": "taught", "ok": True, "text": "taught 3→7/10"}]}


def test_one_comparison_shows_probes_first_and_pairwise_not_asked(tmp_path):
    s = summary("round-001", "round-002", 2, probes=PROBES)
    md = report_markdown(s)
    assert md.index("## Probes") < md.index("## Pairwise judge") < md.index("## Drift monitors")
    assert "| taught | 10 | 3 → 7 (30.0% → 70.0%) | +40.0% (+10.0%…+70.0%) | 4 / 0 | 0.125 |" in md
    assert "| kept | 8 | 8 → 7 (100.0% → 87.5%) | -12.5% (-37.5%…+0.0%) | 0 / 1 | 1.000 |" in md
    assert "Not asked" in md and "Win rate of" not in md
    out = io.StringIO()
    Console(file=out, width=200).print(table(s))
    text = out.getvalue()
    assert "taught probes passed (of 10)" in text and "3 (30.0%)" in text and "7 (70.0%)" in text
    assert "+40.0% (+10.0%…+70.0%), 4 / 0, p=0.125" in text and "not asked" in text
    plot_winrate(s, tmp_path / "winrate.png")
    assert (tmp_path / "winrate.png").read_bytes()[:8] == PNG


def test_a_summary_from_before_probes_still_reads(tmp_path):
    s = summary("base", "round-001", 1, legacy=True, wins=6)
    assert probe_rows(s.get("probes")) == [(k, "–", "–", "–", "–", "–") for k in ("taught", "reworded", "kept")]
    md = report_markdown(s)
    assert "| taught | – | – | – | – | – |" in md and "**B = round-001 wins 6, ties 2, loses 0**" in md
    out = io.StringIO()
    Console(file=out, width=200).print(table(s))
    assert "6 / 2 / 0" in out.getvalue()
    plot_winrate(s, tmp_path / "w.png")
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG


def test_run_report_rows_per_round_gate_and_plot(tmp_path):
    run = RunLayout.of(tmp_path / "runs", "t")
    write_round(run, 1, summary("base", "round-001", 1, legacy=True, wins=6))  # before probes, no gate
    write_round(run, 2, summary("round-001", "round-002", 2, probes=PROBES), decision=PROMOTED)
    write_round(run, 2, summary("base", "round-002", 2, probes={}))  # a hand-run comparison in round 2: not gated
    md, png, summaries = write_report(run)
    text = md.read_text()
    assert len(summaries) == 3 and png.read_bytes()[:8] == PNG
    # probes: live → candidate rates with Wilson CIs, Δ with its CI; the gate only on the comparison it decided on
    assert ("| 2 | round-002 vs round-001 | 30.0% (10.8–60.3) → 70.0% (39.7–89.2); Δ +40.0% (+10.0%…+70.0%), n=10 "
            "| 20.0% (5.7–51.0) → 50.0% (23.7–76.3); Δ +30.0% (+0.0%…+60.0%), n=10 "
            "| 100.0% (67.6–100.0) → 87.5% (52.9–97.8); Δ -12.5% (-37.5%…+0.0%), n=8 "
            "| 0.610 → 0.580 | 12.50 → 13.10 | **promote** |") in text
    assert "| 2 | round-002 vs base | – | – | – | 0.610 → 0.580 | 12.50 → 13.10 | – |" in text
    assert "| 1 | round-001 vs base | – | – | – |" in text
    assert "- round 2: **promote** — round-002 vs round-001: taught 3→7/10, Δ +40.0%" in text
    # pairwise: the old summary's verdicts, "not asked" for the new ones
    assert "| 1 | round-001 | base | 8 | 6 / 2 / 0 | 87.5% (30.0%–90.0%) | – | no significant difference |" in text
    assert "| 2 | round-002 | round-001 | 8 | not asked | – | – | – |" in text


def test_run_report_without_comparisons(tmp_path):
    run = RunLayout.of(tmp_path / "runs", "empty")
    run.round(1).dir.mkdir(parents=True)
    md, png, summaries = write_report(run)
    assert summaries == [] and "No comparison yet" in md.read_text() and png.read_bytes()[:8] == PNG


def test_gate_of_a_round_that_trained_nothing_is_listed(tmp_path):
    run = RunLayout.of(tmp_path / "runs", "t")
    rnd = run.round(1)
    manifest.record_stage(rnd.manifest, "compare", inputs=[], outputs=[], counts={}, started=0.0,
                          no_candidate="curation kept 0 new SFT record(s)")
    manifest.record_stage(rnd.manifest, "gate", inputs=[], outputs=[], counts={}, started=0.0,
                          decision={"promote": False, "reason": "curation kept 0 new SFT record(s)", "candidate": None})
    md, _, _ = write_report(run)
    assert "- round 1: keep live — curation kept 0 new SFT record(s)" in md.read_text()
    assert json.loads(rnd.manifest.read_text())["stages"]["gate"]["decision"]["promote"] is False
