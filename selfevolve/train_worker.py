"""One training phase on several processes: ``train.num_processes`` > 1 runs TRL under ``accelerate launch``.

The parent (selfevolve/train.py, through :func:`launch_phase`) writes the round's config to
``train_ckpt/worker_config.yaml`` and starts ``accelerate launch ... -m selfevolve.train_worker``; each process
runs the same phase as the in-process path (selfevolve/train_phases.py: the same trainer, the same checkpoints,
so an interrupted multi-process run resumes from its last complete checkpoint like a single-process one), the
Trainer makes it data-parallel (DDP; FSDP / DeepSpeed from ``train.accelerate_config``), and rank 0 writes the
phase's adapter and metrics once. The parent reads them back and goes on as after an in-process phase.

On CPU the processes are gloo ranks: accelerate's launcher starts several processes only for a multi-GPU
launch (``--cpu`` starts one), and ``use_cpu=True`` in the TrainingArguments makes each of them a CPU rank.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from .layout import RoundLayout, phase_metrics


def launch_args(t, port: int) -> list[str]:
    """``accelerate launch`` options for ``train``: its config file (any distributed type it names) or plain
    data-parallel; ``num_processes`` overrides the file's."""
    head = ["--config_file", t.accelerate_config] if t.accelerate_config else ["--multi_gpu", "--num_machines", "1"]
    return [*head, "--num_processes", str(t.num_processes), "--main_process_port", str(port)]


def _die_with_parent() -> None:
    """In the launcher, between fork and exec: SIGTERM when this process dies, even by kill -9 (Linux
    PR_SET_PDEATHSIG); the launcher then stops its ranks, so a rerun never trains beside orphans."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:  # not Linux: orphans are possible there
        pass


def _free_port() -> int:
    with socket.socket() as s:  # two concurrent trainings must not share torch.distributed's rendezvous port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_keys(d: dict) -> dict:
    """The config for the ranks minus the secrets they never use (it lands in the round folder)."""
    for section, name in (("serve", "chat_key"), ("serve", "admin_key"), ("backend", "api_key")):
        if name in d.get(section, {}):
            d[section][name] = ""
    if "api_key" in d.get("judge", {}).get("backend", {}):
        d["judge"]["backend"]["api_key"] = ""
    return d


def launch_phase(cfg, rnd: RoundLayout, phase: str, *, start_adapter: Path | None = None, show_progress: bool,
                 log) -> dict:
    """Run ``phase`` (``sft`` / ``dpo``) on ``train.num_processes`` processes; its metrics (rank 0 wrote them)."""
    rnd.train_worker_config.parent.mkdir(parents=True, exist_ok=True)
    rnd.train_worker_config.write_text(yaml.safe_dump(_without_keys(cfg.to_dict()), sort_keys=False))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args(cfg.train, _free_port()),
           "-m", "selfevolve.train_worker", "--config", str(rnd.train_worker_config), "--round-dir", str(rnd.dir),
           "--phase", phase, "--progress" if show_progress else "--no-progress"]
    if start_adapter is not None:
        cmd += ["--start-adapter", str(start_adapter)]
    log(f"train {phase}: {cfg.train.num_processes} processes through accelerate launch")
    # the processes log through the parent's stdout / stderr: their errors are the ones to read
    code = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent).returncode
    done = phase_metrics(rnd.train_phase_done(phase))
    if code != 0 or not done.exists():
        raise RuntimeError(f"train {phase}: accelerate launch exited with code {code} "
                           f"({'no' if not done.exists() else 'with'} {done.name}); command: {' '.join(cmd)}")
    return json.loads(done.read_text())


def main(argv: list[str] | None = None) -> None:
    """One process of ``accelerate launch``: the phase as the in-process path runs it."""
    from .config import load_config
    from .train_phases import dpo_phase, load_split, set_threads, sft_phase

    p = argparse.ArgumentParser(prog="python -m selfevolve.train_worker")
    p.add_argument("--config", required=True)
    p.add_argument("--round-dir", required=True)
    p.add_argument("--phase", choices=("sft", "dpo"), required=True)
    p.add_argument("--start-adapter")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    set_threads(cfg)
    rnd = RoundLayout(Path(a.round_dir))
    main_rank = int(os.environ.get("RANK", "0")) == 0
    log = print if main_rank else (lambda m: None)
    kwargs = dict(callbacks=(), show_progress=a.progress and main_rank, log=log)
    if a.phase == "sft":
        sft_phase(cfg, rnd, rnd.run, load_split(rnd, "train_sft"), **kwargs)
    else:
        dpo_phase(cfg, rnd, load_split(rnd, "train_dpo"), Path(a.start_adapter), **kwargs)


if __name__ == "__main__":
    main()
