"""Crash safety by fault injection: kill -9 `selfevolve iterate` at sampled durable steps of every stage, rerun,
and compare the final outputs with an uninterrupted run's.

1. A reference run (no kill) with ``SELFEVOLVE_FAULT=count:<file>`` lists the failpoints each stage reaches
   (selfevolve/faults.py: atomic writes before / after their rename, journal appends torn and whole, Trainer
   steps and checkpoints, folder swaps).
2. ``--kills`` (stage, k) points are drawn from those lists with a fixed seed, every stage at least once, and run
   as one chain in stage order: `iterate` with ``SELFEVOLVE_FAULT=<stage>:<k>`` must die by SIGKILL (-9); the run
   folder is checked (every JSON file parses, every JSONL line parses but the journal's torn last one, every
   complete manifest entry's outputs are intact, temp files only under hidden temp names, current.json valid
   and naming a complete adapter); the next rerun gets the next point. A rerun that resumed has fewer points in
   that stage than the reference: its kill lands at the stage's end (reported as ``<stage>:end``).
3. A last rerun without a fault must finish; its outputs are compared with the reference run's: the same record
   ids in the same order and the same statuses/labels for collect, signals and revise, no duplicate ids, every
   revision curated or rejected exactly once, the same number of SFT/DPO examples, an adapter, the gate's
   decision, deploy's action and current.json. Revised text comes from the model; where a resumed revise
   produced a different text than the reference (batch composition), the checks that depend on text
   (statuses, curated ids) are reported rather than asserted.

    flock /tmp/selfevolve-model.lock .venv/bin/python scripts/bench_crash.py --kills 24 --seed 14
      → docs/bench/crash.md

tests/test_crash_integration.py runs the same chain (fewer kills, the same checks).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selfevolve.adapters import is_adapter  # noqa: E402
from selfevolve.layout import RunLayout  # noqa: E402
from selfevolve.live import round_of  # noqa: E402
from selfevolve.manifest import is_complete, load as load_manifest  # noqa: E402

SELFEVOLVE = str(Path(sys.executable).parent / "selfevolve")
STAGES = ("collect", "signals", "revise", "curate", "train", "compare", "gate", "deploy")
MUST_COVER = ("collect", "revise", "curate", "train", "compare", "deploy")
# Small and deterministic: the 18 shipped teach chats, the transformers backend (starts in seconds, no engine
# processes to orphan), greedy revision, 4 training steps with a checkpoint every 2, a handful of compare items.
# The gate only asks for taught probes to exist: four steps teach nothing; this is about resuming.
CHEAP = [
    "data.inputs=[builtin:teach_chats.jsonl]", "data.heldout_share=0", "data.gateway=false",
    "backend.kind=hf", "revise.temperature=0", "revise.max_tokens=64", "revise.critique_max_tokens=32",
    "revise.journal_every=1", "revise.max_failed_share=1.0",
    "train.max_steps=4", "train.save_steps=2", "train.batch_size=4",
    "compare.max_prompts=2", "compare.max_heldout=0", "compare.max_tokens=32", "compare.max_probes=2",
    "compare.probe_max_tokens=32", "compare.embeddings=false",
    "compare.human_texts=",  # the human-text perplexity loads a second transformers model: most of a compare kill's cost
    "gate.min_taught_gain=-1", "gate.max_kept_drop=1", "gate.max_perplexity_rise=100", "gate.min_distinct2_ratio=0",
]
TMP_FILE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # records.write_atomic / atomic_jsonl
TMP_DIR = re.compile(r"^\..+\.(tmp|old)$")  # records.replace_dir
KILLED = re.compile(r"faults: kill -9 at (\S+)(?: \((.*)\))?")
MANIFEST_TMP = "write manifest.json: temp written"


def command(run_root: Path, model_path: str | Path) -> list[str]:
    sets = CHEAP + [f"run.root={run_root}", f"model.path={model_path}"]
    return [SELFEVOLVE, "iterate", "--no-progress", "--config", str(ROOT / "configs/default.yaml"),
            *[f"--set={s}" for s in sets]]


def iterate(run_root: Path, model_path, fault: str | None, log: Path, timeout: float = 600) -> dict:
    """One `selfevolve iterate` in its own session; anything it started is killed with it (what a supervisor
    restarting a crashed job does). Returns the exit status, seconds, and where a failpoint killed it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SELFEVOLVE_FAULT", None)
    if fault:
        env["SELFEVOLVE_FAULT"] = fault
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(command(run_root, model_path), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    text = log.read_text(errors="replace")
    m = KILLED.search(text)
    return {"fault": fault, "rc": rc, "seconds": round(time.time() - t0, 1), "landed": m.group(1) if m else None,
            "landed_point": m.group(2) if m and m.group(2) else None,
            "log": str(log), "tail": text[-2500:]}


def reference(run_root: Path, model_path, work: Path) -> tuple[dict, dict[str, list[str]]]:
    """The uninterrupted run and the failpoints each stage reached in it."""
    counts = work / "ref_points.json"
    res = iterate(run_root, model_path, f"count:{counts}", work / "ref.log")
    if res["rc"] != 0:
        raise RuntimeError(f"the reference run failed (rc {res['rc']}):\n{res['tail']}")
    return res, json.loads(counts.read_text())


def sample(points: dict[str, list[str]], kills: int, rng: random.Random) -> list[tuple[str, int | str, str]]:
    """``kills`` distinct (stage, k, point name) in chain order. Each stage is killed once where its work is done
    but not recorded (its manifest entry in the temp file, not renamed: a rerun must see the finished outputs or
    redo them, never duplicate them), named rather than counted (``@...``) since a resumed rerun reaches it after
    fewer points; the other kills are spread evenly over the stages (the six the issue names must have points),
    k drawn at random within each. Evenly rather than in proportion to the points: revise has the most (two per
    journaled turn), but each kill there costs a model load."""
    missing = [s for s in MUST_COVER if not points.get(s)]
    if missing:
        raise RuntimeError(f"the reference run reached no failpoint in {missing}: {points}")
    named = {s: max(i for i, n in enumerate(points[s], 1) if MANIFEST_TMP in n) for s in STAGES
             if any(MANIFEST_TMP in n for n in points.get(s, []))}
    chosen: list[tuple[str, int | str]] = [(s, "@" + MANIFEST_TMP) for s in named][:kills]
    # Random picks leave out the named point and the one after it (the entry renamed into place: the stage is
    # complete, so the named kill that follows would land on the stage's end instead of its manifest write).
    skip = {s: {k, k + 1} for s, k in named.items()}
    left = {s: [k for k in range(1, len(points[s]) + 1) if k not in skip.get(s, ())] for s in STAGES if points.get(s)}
    while len(chosen) < kills and any(left.values()):
        for s in rng.sample(sorted(left), len(left)):
            if left[s] and len(chosen) < kills:
                chosen.append((s, left[s].pop(rng.randrange(len(left[s])))))
    # the named kill last in its stage: the random ones count from a full run of the stage
    order = sorted(chosen, key=lambda p: (STAGES.index(p[0]), p[1] if isinstance(p[1], int) else 1 << 30))
    return [(s, k, points[s][(k if isinstance(k, int) else named[s]) - 1]) for s, k in order]


# ---------------------------------------------------------------- invariants after a kill

def check_files(run: RunLayout) -> tuple[list[str], list[str]]:
    """Problems in the run folder right after a kill, and the leftover temp names (not problems: hidden names no
    stage reads)."""
    problems, leftovers = [], []
    journals = {r.revisions_journal for r in run.rounds()}
    for p in sorted(run.dir.rglob("*")):
        rel = p.relative_to(run.dir)
        if any(TMP_DIR.match(part) for part in rel.parts[:-1]):
            continue  # inside a half-built folder swap: never read
        if TMP_FILE.match(p.name) or (p.is_dir() and TMP_DIR.match(p.name)):
            leftovers.append(str(rel))
            continue
        if p.name.endswith(".tmp"):
            problems.append(f"{rel}: a temp file under a name a stage could read")
        elif p.suffix == ".json" and p.is_file():
            try:
                json.loads(p.read_text(encoding="utf-8"))
            except ValueError as e:
                problems.append(f"{rel}: partial JSON ({e})")
        elif p.suffix == ".jsonl" and p.is_file():
            problems += _check_jsonl(p, rel, torn_ok=p in journals)
    for rnd in run.rounds():
        for stage, entry in load_manifest(rnd.manifest)["stages"].items():
            if entry.get("status") == "complete" and not is_complete(rnd.manifest, stage, None):
                problems.append(f"{rnd.dir.name}: {stage} is recorded complete but its outputs changed")
    problems += _check_current(run)
    return problems, leftovers


def _check_jsonl(p: Path, rel, torn_ok: bool) -> list[str]:
    data = p.read_text(encoding="utf-8")
    lines = data.split("\n")
    body, last = lines[:-1], lines[-1]  # a file of whole lines ends with "\n": last == ""
    out = []
    for n, line in enumerate(body, 1):
        try:
            json.loads(line)
        except ValueError:
            out.append(f"{rel}:{n}: partial JSONL line")
    if last and not torn_ok:
        out.append(f"{rel}: ends in a partial line")
    return out


def _check_current(run: RunLayout) -> list[str]:
    if not run.current.exists():
        return []
    try:
        live = json.loads(run.current.read_text())["live"]
    except (ValueError, KeyError) as e:
        return [f"current.json: unreadable ({e})"]
    if live is not None and not (round_of(live) and is_adapter(run.round(round_of(live)).adapter)):
        return [f"current.json: live={live!r} names no complete adapter folder"]
    return []


# ---------------------------------------------------------------- final outputs against the reference

def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def outputs(run: RunLayout) -> dict:
    rnd = run.round(1)
    stages = load_manifest(rnd.manifest)["stages"]
    revs = _read(rnd.revisions)
    return {
        "rounds": [r.number for r in run.rounds()],
        "statuses": {s: stages.get(s, {}).get("status") for s in STAGES},
        "conversations": [c["id"] for c in _read(rnd.conversations)],
        "heldout": [c["id"] for c in _read(rnd.heldout)],
        "import_rejected": len(_read(rnd.import_rejected)),
        "signals": [(s["id"], s["label"]) for s in _read(rnd.signals)],
        "revisions": [(r["id"], r.get("status")) for r in revs],
        "revised_text": {r["id"]: (r.get("criticism"), r.get("revised")) for r in revs},
        "journal_left": rnd.revisions_journal.exists(),
        "curated": sorted(r["id"] for r in _read(rnd.curated)),
        "rejected": sorted((r["id"], r.get("filter")) for r in _read(rnd.rejected)),
        "sft": [r["id"] for r in _read(rnd.sft)], "dpo": [r["id"] for r in _read(rnd.dpo)],
        "train_sft": [r["id"] for r in _read(rnd.train_sft)],
        "adapter": is_adapter(rnd.adapter),
        "steps": stages.get("train", {}).get("counts", {}).get("steps"),
        "decision": (stages.get("gate") or {}).get("decision"),
        "deploy": (stages.get("deploy") or {}).get("action"),
        "live": json.loads(run.current.read_text())["live"] if run.current.exists() else None,
    }


def compare(ref: dict, got: dict) -> tuple[list[str], list[str]]:
    """Mismatches (asserted) and notes (text-dependent differences, reported)."""
    bad, notes = [], []

    def same(key, what=None):
        if ref[key] != got[key]:
            bad.append(f"{what or key}: reference {str(ref[key])[:300]} != rerun {str(got[key])[:300]}")

    for key in ("rounds", "statuses", "conversations", "heldout", "import_rejected", "signals", "adapter", "steps",
                "deploy", "live"):
        same(key)
    for key in ("conversations", "revisions", "sft", "dpo", "train_sft", "curated"):
        ids = [x[0] if isinstance(x, (tuple, list)) else x for x in got[key]]
        dup = [i for i, n in Counter(ids).items() if n > 1]
        if dup:
            bad.append(f"{key}: duplicate ids {dup[:5]}")
    if [i for i, _ in ref["revisions"]] != [i for i, _ in got["revisions"]]:
        bad.append("revisions: not the same turns in the same order")
    if got["journal_left"]:
        bad.append("revisions.journal.jsonl left behind after the round finished")
    rev_ids = sorted(i for i, _ in got["revisions"])
    if sorted(got["curated"] + [i for i, _ in got["rejected"]]) != rev_ids:
        bad.append("curate: not every revision ends curated or rejected exactly once")
    if len(got["sft"]) + len(got["dpo"]) == 0:
        bad.append("curate: no training examples")
    if got["decision"] is None or "promote" not in got["decision"]:
        bad.append("gate: no decision recorded")
    changed = [i for i in ref["revised_text"] if ref["revised_text"][i] != got["revised_text"].get(i)]
    if changed:  # text from the model differs: what follows from the text is compared as a note
        notes.append(f"{len(changed)} of {len(ref['revised_text'])} revisions have a different text than the "
                     f"reference (resumed batches): {changed[:4]}")
        target = notes
    else:
        target = bad
    for key in ("revisions", "curated", "rejected", "sft", "dpo", "train_sft"):
        if ref[key] != got[key]:
            target.append(f"{key}: reference {len(ref[key])} {str(ref[key])[:200]} != rerun {len(got[key])} "
                          f"{str(got[key])[:200]}")
    if (ref["decision"] or {}).get("promote") != (got["decision"] or {}).get("promote"):
        notes.append(f"gate: promote {ref['decision'].get('promote')} (reference) vs "
                     f"{(got['decision'] or {}).get('promote')} (its adapter trained through resumed checkpoints)")
    return bad, notes


# ---------------------------------------------------------------- the chain

def chain(run_root: Path, model_path, plan: list[tuple[str, int, str]], work: Path, log=print) -> dict:
    """Each point of ``plan`` in turn: iterate must die by SIGKILL, the folder must hold; then a clean rerun."""
    run = RunLayout(run_root / "default")
    kills, problems, leftovers = [], [], set()
    for i, (stage, k, name) in enumerate(plan, 1):
        res = iterate(run_root, model_path, f"{stage}:{k}", work / f"kill-{i:02d}.log")
        res["point"] = name
        kills.append(res)
        log(f"kill {i:2d}/{len(plan)} {stage}:{k} ({name}) → rc {res['rc']}, landed {res['landed']}, "
            f"{res['seconds']}s")
        if res["rc"] != -signal.SIGKILL:
            problems.append(f"{stage}:{k}: expected death by SIGKILL, got rc {res['rc']}:\n{res['tail'][-1500:]}")
            break
        found, left = check_files(run)
        problems += [f"after {stage}:{k}: {p}" for p in found]
        leftovers |= set(left)
    final = iterate(run_root, model_path, None, work / "final.log")
    log(f"final rerun → rc {final['rc']}, {final['seconds']}s")
    if final["rc"] != 0:
        problems.append(f"the final rerun failed (rc {final['rc']}):\n{final['tail']}")
    found, left = check_files(run)
    problems += [f"after the final rerun: {p}" for p in found]
    return {"kills": kills, "final": final, "problems": problems, "leftovers_seen": sorted(leftovers),
            "leftovers_at_end": left}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_crash"))
    ap.add_argument("--model", default=str(ROOT / ".cache/models/SmolLM2-135M-Instruct"))
    ap.add_argument("--out", type=Path, default=ROOT / "docs/bench/crash.md")
    args = ap.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    t0 = time.time()
    ref_res, points = reference(args.work / "ref", args.model, args.work)
    print(f"reference run: {ref_res['seconds']}s; points per stage: { {s: len(v) for s, v in points.items()} }")
    plan = sample(points, args.kills, random.Random(args.seed))
    print(f"seed {args.seed}: {len(plan)} kill points")
    res = chain(args.work / "chain", args.model, plan, args.work)
    bad, notes = compare(outputs(RunLayout(args.work / "ref" / "default")),
                         outputs(RunLayout(args.work / "chain" / "default")))
    res.update(seconds=round(time.time() - t0, 1), reference_seconds=ref_res["seconds"], points=points, plan=plan,
               mismatches=bad, notes=notes, seed=args.seed)
    (args.work / "result.json").write_text(json.dumps(res, indent=1, default=str))
    args.out.write_text(report(res))
    print(report(res))
    sys.exit(1 if bad or res["problems"] else 0)


def report(res: dict) -> str:
    per = Counter(s for s, _, _ in res["plan"])
    ends = Counter(k["landed"].split(":")[0] for k in res["kills"] if k["landed"] and k["landed"].endswith(":end"))
    rows = "\n".join(f"| {s} | {len(res['points'].get(s, []))} | {per.get(s, 0)} | {ends.get(s, 0)} |" for s in STAGES)
    kills = "\n".join(f"| {i} | {k['fault']} | {k['landed']} | {k['landed_point'] or 'after its last point'} | "
                      f"{k['rc']} | {k['seconds']} |"
                      for i, k in enumerate(res["kills"], 1))
    return f"""# Crash safety by fault injection (scripts/bench_crash.py)

`selfevolve iterate` on the 18 shipped teach chats (SmolLM2-135M, transformers backend, 4 training steps with a
checkpoint every 2), killed with SIGKILL at {len(res['kills'])} failpoints (seed {res['seed']}), rerun after each
kill, then finished with a clean rerun and compared with an uninterrupted run.
Whole bench: {res['seconds']} s (reference run {res['reference_seconds']} s).

| stage | failpoints in a full run | kills | landed at the stage's end (resumed rerun) |
|---|---|---|---|
{rows}

Reruns: {len(res['kills']) + 1} ({len(res['kills'])} killed, 1 clean). Kills that did not die by SIGKILL or left a
bad file: {len(res['problems'])}. Mismatches with the uninterrupted run: {len(res['mismatches'])}.
Temp files left by kills (hidden names, never read): {len(res['leftovers_seen'])} seen, \
{len(res['leftovers_at_end'])} at the end.

{chr(10).join('- ' + p for p in res['problems'] + res['mismatches']) or 'No problem and no mismatch.'}

Notes (text from the model, compared but not asserted):
{chr(10).join('- ' + n for n in res['notes']) or '- none: every revision text equals the reference run'}

| # | SELFEVOLVE_FAULT | landed | where (this rerun's point) | rc | s |
|---|---|---|---|---|---|
{kills}
"""


if __name__ == "__main__":
    main()
