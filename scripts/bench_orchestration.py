"""The round's work outside the model, side by side: this tree against a git ref (default: HEAD).

Issue 15 item 4 counts as orchestration everything of a round but model work: process start, config, collect
(reading, PII scrubbing, writing), the loop, the across-rounds report. Each phase runs as a fresh process, as
`make iterate` runs it, alternately from the ref (a `git worktree` of it) and from this tree, ``--repeats`` times:

- ``collect``: `selfevolve collect` of the shipped sample chats into a fresh run;
- ``report``: `selfevolve report` of a run with one finished round (made once with ``--make-run``, or ``--run``);
- ``iterate, nothing new``: `selfevolve iterate` on that run (collect finds nothing; no model starts).

Outputs are checked identical between the two sides (collect's files byte for byte, the report's markdown).

    .venv/bin/python scripts/bench_orchestration.py --run /tmp/orun --out docs/bench/orchestration.md
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the console script as each side ships it: main() where it exists (it skips the teardown), else the app
CLI = "import selfevolve.cli as c; getattr(c, 'main', c.app)()"


def selfevolve(tree: Path, root: Path, *args: str) -> float:
    """Seconds for one `selfevolve ...` process run from ``tree`` with ``run.root=root``."""
    cmd = [sys.executable, "-c", CLI, *args, "--config", str(tree / "configs/default.yaml"),  # its own keys
           "--set", f"run.root={root}"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=tree, capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return time.perf_counter() - t


def digest(folder: Path, names: list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def phases(tree: Path, run: Path, scratch: Path) -> dict[str, tuple[float, str]]:
    """Each phase's seconds and a digest of its output, for the code in ``tree``."""
    out = {}
    fresh = scratch / "collect"
    shutil.rmtree(fresh, ignore_errors=True)
    secs = selfevolve(tree, fresh, "collect")
    out["collect"] = secs, digest(fresh / "default/round-001", ["conversations.jsonl", "heldout.jsonl"])
    work = scratch / "run"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(run, work)
    secs = selfevolve(tree, work, "report")
    out["report"] = secs, digest(work / "default", ["report.md"])
    secs = selfevolve(tree, work, "iterate")
    out["iterate, nothing new"] = secs, digest(work / "default", ["current.json"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="HEAD", help="the git ref to compare against")
    ap.add_argument("--run", type=Path, required=True, help="a run root whose run has one finished round")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    ref_tree = scratch / "ref"
    subprocess.run(["git", "worktree", "add", "--detach", str(ref_tree), args.ref], cwd=ROOT, check=True,
                   capture_output=True)
    times: dict[tuple[str, str], list[float]] = {}
    digests: dict[tuple[str, str], set[str]] = {}
    try:
        for i in range(args.repeats):
            for side, tree in (("ref", ref_tree), ("this tree", ROOT)):
                for phase, (secs, dig) in phases(tree, args.run, scratch / "work").items():
                    times.setdefault((phase, side), []).append(secs)
                    digests.setdefault((phase, side), set()).add(dig)
            print(f"repeat {i + 1}/{args.repeats} done", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    rev = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=ROOT, capture_output=True, text=True)
    lines = [f"| phase (fresh process each) | ref {rev.stdout.strip()} median s | this tree median s | ratio | "
             "outputs identical |", "|---|---|---|---|---|"]
    for phase in ("collect", "report", "iterate, nothing new"):
        ref, new = (statistics.median(times[(phase, s)]) for s in ("ref", "this tree"))
        same = digests[(phase, "ref")] == digests[(phase, "this tree")] and len(digests[(phase, "ref")]) == 1
        lines.append(f"| {phase} | {ref:.2f} | {new:.2f} | **{new / ref:.2f}x** | {'yes' if same else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(f"# Orchestration outside the model (scripts/bench_orchestration.py)\n\n"
                            f"{args.repeats} interleaved repeats, each phase a fresh process.\n\n{table}\n")


if __name__ == "__main__":
    main()
