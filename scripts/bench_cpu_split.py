"""Training beside the served CPU engine: LoRA training steps per second of the embedded model, alone and while
the served engine generates, with torch's default threads on every core (before) against one thread per core
the engine leaves free (what the train stage of a borrowed round does now, selfevolve/cpu_split.py).

The served engine is started as `selfevolve serve` starts it (its cores from ``cpu_split.engine_cores``); a
thread keeps it generating (one 256-token request after another) during the "busy" variants. Each variant is a
fresh process: load the model, add a LoRA adapter, then forward + backward + step on a fixed batch for
``--seconds`` after one warm-up step.

    flock /tmp/selfevolve-model.lock .venv/bin/python scripts/bench_cpu_split.py --out docs/bench/cpu_split.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selfevolve.config import load_config  # noqa: E402
from selfevolve.cpu_split import BIND_ENV, engine_cores, parse_cores, pinned, training_cores  # noqa: E402
from selfevolve.records import write_atomic  # noqa: E402
from selfevolve.serve import VLLMServer, free_port  # noqa: E402


def worker(model_path: str, cores: list[int], seconds: float) -> None:
    """Steps per second of LoRA training on ``cores`` (all of them, torch's default threads, when empty)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with pinned(cores or None, log=lambda m: None):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32),
                               LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, 1000, (4, 128))

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()

        step()  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            n += 1
        print(json.dumps({"steps_per_s": n / (time.perf_counter() - t0), "threads": torch.get_num_threads()}))


class Busy(threading.Thread):
    """Keeps the served engine generating while ``on`` is set."""

    def __init__(self, server: VLLMServer):
        super().__init__(daemon=True)
        self.server, self.on, self.done = server, threading.Event(), threading.Event()

    def run(self) -> None:
        body = {"model": "base", "max_tokens": 256, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Tell a long story about a lighthouse keeper."}]}
        with httpx.Client(timeout=600) as http:
            while not self.done.is_set():
                if not self.on.wait(0.2):
                    continue
                try:
                    http.post(self.server.url + "/v1/chat/completions", json=body, headers=self.server.headers)
                except httpx.HTTPError:
                    if self.done.is_set():  # the server stops at the end
                        return
                    raise


def measure(model_path: str, cores: list[int], seconds: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", model_path, "--cores", ",".join(map(str, cores)),
                          "--seconds", str(seconds)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cores", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, parse_cores(args.cores), args.seconds)
    cfg = load_config(args.config)
    server = VLLMServer.from_config(cfg, log_path=ROOT / "bench_out/cpu_split/vllm.log", port=free_port())
    server.env[BIND_ENV] = engine_cores(1)[0]
    free = training_cores(parse_cores(server.env[BIND_ENV]))
    server.start()
    try:
        server.wait_ready(cfg.serve.startup_timeout_s)
        busy = Busy(server)
        busy.start()
        rows = []
        for load in ("idle", "generating"):
            for label, cores in ((f"one thread per free core {free} (now)", free),
                                 ("torch default threads, every core (before)", [])):
                (busy.on.set if load == "generating" else busy.on.clear)()
                r = measure(cfg.model.path, cores, args.seconds)
                rows.append((load, label, r["threads"], r["steps_per_s"]))
                print(rows[-1], flush=True)
        busy.on.clear()
        busy.done.set()
    finally:
        server.stop()
    base = {load: rows[i * 2 + 1][3] for i, load in enumerate(("idle", "generating"))}
    lines = ["# Training beside the served CPU engine (scripts/bench_cpu_split.py)", "",
             f"LoRA training steps/s of the embedded model (batch 4 x 128 tokens, {args.seconds:g} s per variant, "
             f"fresh process each), the served engine on cores {server.env[BIND_ENV]} as `selfevolve serve` starts "
             "it, idle or kept generating (256-token requests one after another).", "",
             "| served engine | training | torch threads | steps/s | ratio to 'before' |", "|---|---|---|---|---|"]
    lines += [f"| {load} | {label} | {t} | {s:.3f} | {s / base[load]:.2f} |" for load, label, t, s in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_atomic(Path(args.out), text)


if __name__ == "__main__":
    main()
