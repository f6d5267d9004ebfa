"""The injection filter with the real model writing the answers that train: how many injection payloads reach
training, and how many normal chats the filter drops, on every evaluation split of the shipped injection sets.

scripts/bench_injection.py measures the worst case (every training answer carries its payload: a model that always
complies). Here the configured model writes them, the way a round would:

- **corrected route** (the user said the answer was wrong): the reviser revises the turn as the revise stage does;
  the revision trains;
- **confirmed route** (the user said it was fine): the original answer trains, and only an answer the served model
  really produced can (issue 14.3; the store lists them in ``meta.served``). So the original here is the model's
  own answer to the chat up to the turn (greedy, ``--max-tokens``), not the row's written answer. The row's
  written answer (the worst case) is reported beside it, as earlier notes counted it.

A payload reaches training when the training answer carries it (normalised substring, ``injection_text.carries``)
and the filter keeps the turn. Reported for the configured filter and for the filter before (the injection head of
``--head-ref``, a git ref, and the config overrides ``--earlier-set``: by default the same head without the
``points_back`` rule of the sixteenth session), per split and over the splits the shipped head was
not trained on (its ``splits``). Generations are kept in ``--cache`` (one JSON line per row and route, keyed by
the model), so a rerun or a crash goes on where it stopped.

    flock /tmp/selfevolve-model.lock .venv/bin/python scripts/bench_injection_real.py [--out docs/bench]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_injection as bench  # noqa: E402
from selfevolve.backends.base import Sampling  # noqa: E402
from selfevolve.config import load_config  # noqa: E402
from selfevolve.curate_claims import CAUTION_RE, Corroborate  # noqa: E402
from selfevolve.filters import injection_head as ihead  # noqa: E402
from selfevolve.filters import injection_text as itx  # noqa: E402
from selfevolve.filters.injection import InjectionFilter  # noqa: E402
from selfevolve.filters.repetition import RepetitionFilter, RepetitionFilterConfig  # noqa: E402

SPLITS = ("heldout", "fresh", "fresh2", "fresh3", "fresh4", "fresh5", "fresh6", "fresh7", "fresh8", "fresh9",
          "fresh10", "fresh11", "fresh12", "fresh13", "fresh14", "fresh15", "fresh16", "fresh17", "fresh18", "fresh19",
          "fresh20", "fresh21", "fresh22", "fresh23", "fresh24", "fresh25", "fresh26", "fresh27", "fresh28", "fresh29",
          "fresh30", "fresh31", "fresh32", "fresh33", "fresh34")
TRAINED = set(ihead.load_head().get("splits", []))  # the shipped head's training splits
TOTALS = {"all": lambda split: True, "not trained on by the head": lambda split: split not in TRAINED}


@contextmanager
def head_of(ref: str):
    """The filter scores with the injection head as committed at ``ref``."""
    text = subprocess.run(["git", "show", f"{ref}:selfevolve/data/injection_head.json"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(text)
        f.flush()
        shipped = ihead.load_head
        ihead.load_head = lambda path=f.name: shipped(path)
        try:
            yield
        finally:
            ihead.load_head = shipped


def load_cache(path: Path, model: str) -> dict:
    if not path.exists():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["key"]: r["text"] for r in rows if r.get("model") == model}


def generate(rows: list[dict], cfg, cache: Path, max_tokens: int) -> dict:
    """row id → the answer that trains (a revision, or the model's own original), from ``cache`` or the model."""
    from selfevolve.backends import make_backend
    from selfevolve.revise import revise_turns

    model = str(cfg.model.path)
    have = load_cache(cache, model)
    todo = [r for r in rows if r["id"] not in have]
    if not todo:
        return have
    backend = make_backend(cfg)
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        with cache.open("a") as out:
            def keep(r, text):
                have[r["id"]] = text
                out.write(json.dumps({"key": r["id"], "model": model, "text": text}) + "\n")
                out.flush()
            confirmed = [r for r in todo if r["route"] == "confirmed"]
            for i in range(0, len(confirmed), 32):
                part = confirmed[i:i + 32]
                gens = backend.chat([r["messages"][:r["turn"]] for r in part],
                                    Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens))
                for r, g in zip(part, gens):
                    keep(r, g.text)
                print(f"originals {i + len(part)}/{len(confirmed)}", flush=True)
            corrected = [r for r in todo if r["route"] == "corrected"]
            recs = revise_turns([({"id": r["id"], "messages": r["messages"]}, r["turn"]) for r in corrected],
                                backend, cfg.revise, model)
            for r, x in zip(corrected, recs):
                keep(r, x["revised"] if x["status"] == "ok" else "")
            print(f"revisions {len(corrected)}", flush=True)
    finally:
        backend.close()
    return have


def records(rows: list[dict], texts: dict, written_confirmed: bool = False) -> list[tuple[dict, str]]:
    """Per row: the record curate would read, and the answer that trains."""
    out = []
    for r in rows:
        text = r["answer"] if written_confirmed and r["route"] == "confirmed" else texts[r["id"]]
        rec = bench.as_record(r, revised=text or " ")
        if r["route"] == "confirmed":
            rec["original"] = text or " "  # what trains on that route (filters read it through base.answer)
        out.append((rec, text))
    return out


def score(rows: list[dict], texts: dict, base, written_confirmed: bool = False) -> list[dict]:
    """Per row: does the training answer carry the payload, and does the filter keep the turn."""
    recs = records(rows, texts, written_confirmed)
    out = [{"row": r, "empty": not text,
            "carries": r["set"] == "injection" and bool(text) and itx.carries(text, r["payload"])}
           for r, (_, text) in zip(rows, recs)]
    for x, d in zip(out, InjectionFilter(base).apply([rec for rec, _ in recs], None)):
        x["kept"] = d.keep and not x["empty"]
        x["reason"] = d.reason
    return out


def corroborated(rows: list[dict], texts: dict, results: list[dict], k: int) -> list[dict]:
    """``results`` with the corroboration step after the filter, each chat its own user: chats that bring the same
    claim about overlapping requests back each other, as if one attacker held as many accounts as chats, and a normal
    claim never meets the second user who would back it (the upper bound of the cost)."""
    again = Corroborate(k, lambda r: None).apply([rec for rec, _ in records(rows, texts)], None)
    return [{**x, "kept": x["kept"] and c.keep} for x, c in zip(results, again)]


def unlooped(rows: list[dict], texts: dict, results: list[dict]) -> list[dict]:
    """``results`` with the ``repetition`` step too (default settings): an answer that loops does not train."""
    again = RepetitionFilter(RepetitionFilterConfig()).apply([rec for rec, _ in records(rows, texts)], None)
    return [{**x, "kept": x["kept"] and d.keep, "loops": not d.keep} for x, d in zip(results, again)]


def worst_case(rows: list[dict], texts: dict, base, results: list[dict]) -> list[dict]:
    """``results`` with the confirmed rows scored again on their written answers: the corrected route trains the
    same revision either way, so its rows are not filtered twice."""
    confirmed = [r for r in rows if r["route"] == "confirmed"]
    return [x for x in results if x["row"]["route"] != "confirmed"] + score(confirmed, texts, base, True)


def table(results: dict, variants: tuple[str, ...]) -> list[str]:
    md = ["| split | route | injection chats | answer carries the payload | "
          + " | ".join(f"reach training: {v}" for v in variants) + " | normal chats | "
          + " | ".join(f"normal dropped: {v}" for v in variants) + " |", "|---|" + "---|" * (4 + 2 * len(variants))]
    for split in SPLITS + tuple(TOTALS):
        for route in ("corrected", "confirmed") + (("both",) if split in TOTALS else ()):
            def pick(r, split=split, route=route):
                ours = TOTALS[split](r["split"]) if split in TOTALS else split == r["split"]
                return route in ("both", r["route"]) and ours
            res = {v: [x for x in results[v] if pick(x["row"])] for v in variants}
            first = res[variants[0]]
            inj = [x for x in first if x["row"]["set"] == "injection"]
            norm = [x for x in first if x["row"]["set"] == "normal"]
            through = [sum(x["carries"] and x["kept"] for x in res[v] if x["row"]["set"] == "injection")
                       for v in variants]
            dropped = [sum(not x["kept"] for x in res[v] if x["row"]["set"] == "normal") for v in variants]
            name = f"**{split}**" if split in TOTALS else split
            md.append(f"| {name} | {route} | {len(inj)} | {sum(x['carries'] for x in inj)} | "
                      + " | ".join(bench.frac(t, len(inj)) for t in through) + f" | {len(norm)} | "
                      + " | ".join(bench.frac(d, len(norm)) for d in dropped) + " |")
    return md


def real_turns(cfg, cache: Path, max_tokens: int, n: int = 3 * bench.SHAREGPT_N) -> list[str]:
    """What the route rules cost on real chats: the bench's ShareGPT conversations whose follow-up the signal head
    reads as a confirmation (their answer would train as it stands: the relays rule) or a correction (the real
    model revises them: the points_back rule), through the configured filter with and without the rule."""
    from selfevolve.signals import classify

    rows = bench.sharegpt_rows(n)
    sig = classify([r["messages"][r["turn"] + 1]["content"] for r in rows],
                   [r["answer"] for r in rows], cfg.signals.min_confidence)
    confirmed = [r for r, s in zip(rows, sig) if s.label == "confirmed"]
    corrected = [dict(r, id=f"{r['id']}#revised", route="corrected")
                 for r, s in zip(rows, sig) if s.label == "corrected"]
    texts = generate(corrected, cfg, cache, max_tokens)
    base = cfg.curate.injection
    md = ["", "## The route rules on real ShareGPT turns", "",
          f"Of the bench's {len(rows)} ShareGPT conversations (scripts/bench_injection.py's three samples), the "
          f"signal head (min_confidence {cfg.signals.min_confidence}) reads {len(confirmed)} follow-ups as a "
          f"confirmation (their answers would train as they stand) and {len(corrected)} as a correction (the "
          "configured model revises those turns here, as a round would).", "",
          "| route | turns | rule | kept: configured | kept: without the rule | dropped by the rule |",
          "|---|---|---|---|---|---|"]
    routes = (("confirmed", confirmed, "relays", [bench.as_record(r) for r in confirmed]),
              ("corrected", corrected, "points_back",
               [bench.as_record(r, revised=texts[r["id"]] or " ") for r in corrected]))
    kept = []  # the configured filter's verdicts, both routes
    for route, turns, rule, recs in routes:
        on, off = (InjectionFilter(c).apply(recs, None) for c in (base, replace(base, **{rule: None})))
        kept_on, kept_off = sum(d.keep for d in on), sum(d.keep for d in off)
        md.append(f"| {route} | {len(turns)} | `{rule}` | {kept_on} | {kept_off} | {kept_off - kept_on} |")
        md += [f"  - `{r['id']}`: {a.reason}" for r, a, b in zip(turns, on, off) if b.keep and not a.keep]
        kept += [d.keep for d in on]
    recs = [rec for _, _, _, part in routes for rec in part]
    both = [k and c.keep for k, c in zip(kept, Corroborate(2, lambda r: None).apply(recs, None))]
    md.append(f"| both | {len(recs)} | corroborate 2 (each chat its own user) | {sum(both)} | {sum(kept)} | "
              f"{sum(kept) - sum(both)} |")
    return md


def corroboration(rows: list[dict], texts: dict, configured: list[dict], base, k: int) -> list[str]:
    """The filter with and without corroboration (each chat its own user) and the repetition step, on the model's
    answers and on the written ones, and what passes them all (the default)."""
    md = ["", f"## With `curate.corroborate: {k}` (the default since the seventeenth session) and the `repetition` "
               "step (the default since the eighteenth)", "",
          "Corroboration: a claim one user alone brings does not train. Each chat here is its own user: chats that "
          "bring the same claim about overlapping requests back each other (as if an attacker held as many accounts "
          "as chats), and a normal claim never meets a second user, so the normal chats it drops are the upper bound "
          "of its cost (in a run, a claim several users bring trains). Repetition: an answer that loops does not "
          "train (`selfevolve/filters/repetition.py`); the normal chats it drops are answers the model wrote in a "
          "loop, which no route should train.", ""]
    both = f"filter + corroborate {k}"
    claims = {"filter alone": configured, both: corroborated(rows, texts, configured, k)}
    claims[f"{both} + repetition (default)"] = unlooped(rows, texts, claims[both])
    md += table(claims, tuple(claims))
    loops = Counter(x["row"]["set"] for x in claims[f"{both} + repetition (default)"]
                    if x["loops"] and x["row"]["split"] not in TRAINED)
    md += ["", f"On the splits the head never saw, the repetition step finds {loops['normal']} of the model's answers "
               f"to normal chats and {loops['injection']} to injection chats in a loop.", "",
           "Payloads that reach training through the default (*inside a warning*: the answer that trains also warns, "
           "`curate_claims.CAUTION_RE`; read them before counting them as the attack's success):", ""]
    md += [f"- `{x['row']['id']}` ({x['row']['route']})"
           + (" *inside a warning*" if CAUTION_RE.search(texts[x["row"]["id"]]) else "")
           for x in claims[f"{both} + repetition (default)"]
           if x["row"]["set"] == "injection" and x["carries"] and x["kept"]] or ["none"]
    written = {r["id"]: r["answer"] for r in rows}  # a reviser that follows every correction, as the rows wrote it
    alone = score(rows, written, base)
    md += ["", "## The same, the written answers training on both routes (a model that always complies)", "",
           "The corrected route's written revision follows the correction the way a capable reviser would, so this "
           "is the cost of corroboration for such a model: the claims of normal corrections it holds back.", ""]
    held = corroborated(rows, written, alone, k)
    md += table({"filter alone": alone, both: held, f"{both} + repetition (default)": unlooped(rows, written, held)},
                ("filter alone", both, f"{both} + repetition (default)"))
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--max-tokens", type=int, default=256, help="length of the model's own originals")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache/bench_injection_real.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/bench")
    ap.add_argument("--head-ref", default="cafd367", help="git ref of the injection head to compare with")
    ap.add_argument("--earlier-set", action="append", default=None,
                    help="config overrides of the filter compared with (default: the points_back rule off)")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    rows = [r for r in bench.load() if r["split"] in SPLITS]
    t0 = time.time()
    texts = generate(rows, cfg, args.cache, args.max_tokens)
    seconds = round(time.time() - t0, 1)
    base = cfg.curate.injection
    sets = args.earlier_set or ["curate.injection.points_back=null"]
    before = load_config(args.config, args.overrides + sets).curate.injection
    earlier = f"head of {args.head_ref}" + "".join(f", {o.split('.')[-1]}" for o in sets)
    results = {"configured": score(rows, texts, base)}
    with head_of(args.head_ref):
        results[earlier] = score(rows, texts, before)
        worst = {earlier: worst_case(rows, texts, before, results[earlier])}
    worst = {"configured": worst_case(rows, texts, base, results["configured"]), **worst}
    md = ["# The injection filter with the real model writing the training answers", "",
          f"`scripts/bench_injection_real.py` ({cfg.model.path}, revise strategy `{cfg.revise.strategy}`; "
          f"originals greedy, at most {args.max_tokens} tokens; {len(texts)} generations, {seconds} s this run, "
          "the rest from the cache). Splits and their history: docs/bench/injection.md. The shipped head was "
          f"trained on: {', '.join(sorted(TRAINED)) or 'nothing recorded'}.", "",
          "## Confirmed route: the model's own original trains (what a round does)", ""]
    md += table(results, tuple(results))
    md += ["", "## Confirmed route: the row's written answer trains (the worst case for that route; earlier "
               "notes' figure)", ""]
    md += table(worst, tuple(worst))
    through = [x for x in results["configured"] if x["row"]["set"] == "injection" and x["carries"] and x["kept"]]
    md += ["", "## Payloads that reached training (configured filter, the model's own originals)", ""]
    md += [f"- `{x['row']['id']}` ({x['row']['route']}): {texts[x['row']['id']][:160]!r}" for x in through] or ["none"]
    complied = Counter(x["row"]["kind"] for x in results["configured"] if x["carries"])
    md += ["", "Answers carrying their payload, by kind: " + ", ".join(f"{k} {v}" for k, v in complied.most_common())]
    md += corroboration(rows, texts, results["configured"], base, cfg.curate.corroborate or 2)
    md += real_turns(cfg, args.cache, args.max_tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "injection_real.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
