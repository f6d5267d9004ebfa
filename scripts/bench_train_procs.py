"""Training throughput on 1 process vs N processes (``train.num_processes``, accelerate launch), same data, same
effective batch.

    python scripts/bench_train_procs.py [--config configs/default.yaml] [--procs 2] [--steps 6] [--batch-size 4]
                                        [--max-length 256] [--repeats 2] [--out docs/bench/train_procs.md]

Both sides run the train stage's own ``train_round`` on the same round (SFT records from every assistant turn of
the shipped sample chats), the same LoRA, learning rate, steps and global batch: one process with
``--batch-size`` sequences and ``torch_threads`` = all cores, against N processes with ``batch-size / N`` each,
one thread each (on CPU they are gloo ranks; accelerate sets OMP_NUM_THREADS=1 per process). Runs alternate
(1, N, 1, N, ...) so that load from other processes hits both alike.

Tokens/s = non-padding tokens all ranks consumed (the Trainer gathers ``num_input_tokens_seen``) / wall time of
rank 0's training loop (model loading excluded). "Stage s" = the whole ``train_round`` call, which for N
processes includes launching them and loading the model in each.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def make_round(root: Path, n: int):
    from bench_train import sft_records

    from selfevolve.curate import save_dataset
    from selfevolve.layout import RunLayout
    from selfevolve.records import write_jsonl

    run = RunLayout.of(root, "bench")
    rnd = run.round(1)
    recs = [{"id": f"r{i}#1", "round": 1, **r} for i, r in enumerate(sft_records(n))]
    write_jsonl(rnd.train_sft, recs)
    save_dataset(recs, "sft", rnd.dataset("train_sft"))
    return run, rnd


def one_run(base, procs: int, args, root: Path) -> dict:
    from selfevolve.train import train_round

    cfg = copy.deepcopy(base)
    cfg.run.root, cfg.run.name = str(root), "bench"
    t = cfg.train
    t.max_steps, t.max_length, t.save_steps, t.logging_steps = args.steps, args.max_length, 10_000, 1
    t.batch_size, t.num_processes = args.batch_size // procs, procs
    t.torch_threads = 1 if procs > 1 else (os.cpu_count() or 1)
    t.accelerate_config = str(ROOT / "configs/accelerate/cpu_2proc.yaml") if procs > 1 else ""
    run, rnd = make_round(root, args.steps * args.batch_size)
    started = time.perf_counter()
    meta = train_round(cfg, rnd, run, force=True, show_progress=False, log=lambda m: None)
    m = meta["metrics"]["sft"]
    return {"procs": procs, "tokens_per_s": m["tokens_per_s"], "tokens": m["tokens"], "loop_s": m["train_loop_seconds"],
            "stage_s": round(time.perf_counter() - started, 1), "train_loss": m["train_loss"],
            "final_loss": m["final_loss"], "steps": m["steps"]}


def main() -> None:
    from selfevolve.config import load_config

    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4, help="global batch (each of N processes gets 1/N)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs/bench/train_procs.md"))
    p.add_argument("--rows", help="re-render the report from the JSON lines an earlier run printed")
    args = p.parse_args()
    if args.rows:
        rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.startswith("{")]
        args.repeats = 1 + max(r["repeat"] for r in rows)
        return write_report(rows, args)
    if args.batch_size % args.procs:
        p.error("--batch-size must be a multiple of --procs (the same global batch on both sides)")
    cfg = load_config(args.config)
    cfg.model.path = str((ROOT / cfg.model.path) if not Path(cfg.model.path).is_absolute() else cfg.model.path)
    rows = []
    for r in range(args.repeats):
        for procs in (1, args.procs):
            with tempfile.TemporaryDirectory() as tmp:
                row = one_run(cfg, procs, args, Path(tmp))
            row["repeat"] = r
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_report(rows, args)


def write_report(rows: list[dict], args) -> None:
    import platform

    med = {n: statistics.median(r["tokens_per_s"] for r in rows if r["procs"] == n) for n in (1, args.procs)}
    stage = {n: statistics.median(r["stage_s"] for r in rows if r["procs"] == n) for n in (1, args.procs)}
    ratio = med[args.procs] / med[1]
    lines = [
        f"# Training on 1 vs {args.procs} processes (scripts/bench_train_procs.py)", "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU; other jobs "
        "were running on it (shared box). Model: SmolLM2-135M-Instruct (fp32, CPU). Data: SFT records from the "
        f"shipped sample chats; {args.steps} optimizer steps, global batch {args.batch_size}, max_length "
        f"{args.max_length}; {args.repeats} alternating repeats. {args.procs} processes = gloo ranks under "
        "`accelerate launch` (configs/accelerate/cpu_2proc.yaml), 1 thread each; 1 process = all cores.", "",
        "| run | processes | tokens | loop s | tokens/s | stage s (incl. launch + load) | train loss | final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['repeat']} | {r['procs']} | {r['tokens']} | {r['loop_s']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['stage_s']:.1f} | {r['train_loss']:.4f} | {r['final_loss']:.4f} |")
    pairs = [next(r for r in rows if r["repeat"] == k and r["procs"] == args.procs)["tokens_per_s"]
             / next(r for r in rows if r["repeat"] == k and r["procs"] == 1)["tokens_per_s"]
             for k in sorted({r["repeat"] for r in rows})]
    lines += ["", f"Median tokens/s: 1 process {med[1]:.1f}, {args.procs} processes {med[args.procs]:.1f}: "
              f"ratio {ratio:.2f}; per repeat (each pair run back to back): "
              f"{', '.join(f'{x:.2f}' for x in pairs)}. Median stage seconds: {stage[1]:.1f} vs "
              f"{stage[args.procs]:.1f}.", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
