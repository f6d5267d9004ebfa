"""Train: a LoRA adapter on a round's accumulated curated data, SFT then (optionally) DPO.

This module drives a round's training (fingerprint, skip or resume, adapter, meta, manifest) and is the stage;
the phases themselves (models, trainers, checkpoints) are in selfevolve/train_phases.py, the only module that
imports trl (inside the functions: ``import selfevolve`` stays fast), and the progress bar in
selfevolve/train_progress.py.

* SFT: TRL's ``SFTTrainer`` on the conversational prompt/completion set (``dataset/train_sft``), loss on the
  completion only (``completion_only_loss``), LoRA via a PEFT ``LoraConfig``.
* DPO (``train.dpo.enabled``): the SFT adapter trained further with ``DPOTrainer`` on ``dataset/train_dpo``; no
  ``ref_model`` is passed, so the reference is the model with the adapter disabled (``train.dpo.reference=base``)
  or a frozen copy of the adapter as DPO starts (``start``).
* Every round starts from the base model on the accumulated data (``train.init_from=base``), or from the latest
  earlier round's adapter (``previous``).
* Interrupted runs resume: each phase writes Trainer checkpoints under ``round-NNN/train_ckpt/<phase>/``; the
  latest *complete* one (its ``trainer_state.json``, written last, exists) is passed as ``resume_from_checkpoint``.
  A finished phase leaves ``train_ckpt/<phase>-final/``, so a crash in DPO does not redo SFT. Checkpoints made
  on other data or another config are discarded, never resumed.
* The adapter lands in ``round-NNN/adapter/`` (safetensors) by copy-to-tmp + rename, then ``train_meta.json``
  (config, sha256 of the training data, metrics) beside it and the ``train`` entry of the manifest.

bf16 mixed precision on CUDA and on CPUs with native bf16 (``train.precision``), fp32 elsewhere.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time

from . import manifest
from .adapters import is_adapter
from .layout import ADAPTER_WEIGHTS, RunLayout, phase_metrics
from .records import replace_dir, sha256_file, write_json
from .stage import StageContext, StageError, StageResult, recorded
from .train_phases import (CHECKPOINT_PREFIX, build_sft_trainer, common_args, dpo_phase, latest_checkpoint,
                           load_split, lora_config, on_cuda, precision, previous_adapter, set_threads,
                           sft_phase)
from .train_progress import callback_class as _callback_classes
from .train_worker import launch_phase

__all__ = ["NAME", "run", "train_round", "summary_line", "rows_sha256",
           # from train_phases / train_progress, imported from here by tests and scripts/bench_train.py
           "CHECKPOINT_PREFIX", "build_sft_trainer", "common_args", "is_adapter", "latest_checkpoint", "load_split",
           "lora_config", "on_cuda", "precision", "previous_adapter", "set_threads", "_callback_classes"]

NAME = "train"


def rows_sha256(rows) -> str:
    """sha256 of a dataset's rows in order, each as canonical JSON: the same data hashes the same whichever
    folder or file format holds it."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _fingerprint(cfg, data: dict) -> dict:
    """What a checkpoint or a finished adapter was made from: resuming or skipping needs all of it unchanged."""
    return {"model": str(cfg.model.path), "train": dataclasses.asdict(cfg.train), "data_sha256": data}


# ---------------------------------------------------------------- the round's training, step by step

def train_round(cfg, rnd, run=None, *, force: bool = False, callbacks=(), show_progress: bool = True,
                log=print) -> dict:
    """Train the round's adapter; returns the ``train_meta.json`` content (``skipped: true`` when the adapter
    already exists for the same data and config, unless ``force``). ``callbacks``: extra TrainerCallbacks
    (tests use them to interrupt a run or to look at the weights)."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _train_round(cfg, rnd, run or RunLayout(rnd.dir.parent), force=force, callbacks=callbacks,
                            show_progress=show_progress, log=log)
    finally:
        torch._C.set_num_threads(threads)  # train.torch_threads is training's only (set_threads: why torch._C)


def _train_round(cfg, rnd, run, *, force, callbacks, show_progress, log) -> dict:
    """Data and its fingerprint → up to date? → checkpoints of this fingerprint → phases → adapter, meta, manifest."""
    started = time.time()
    if callbacks and cfg.train.num_processes > 1:
        raise ValueError("train: callbacks cannot reach the processes of accelerate launch; "
                         "use train.num_processes=1 with them")
    set_threads(cfg)
    sft, dpo, data = _datasets(cfg, rnd, run, log)
    fingerprint = _fingerprint(cfg, data)
    meta = None if force else _up_to_date(rnd, fingerprint, log)
    if meta is not None:
        if (manifest.load(rnd.manifest)["stages"].get(NAME) or {}).get("status") != "complete":
            _record(rnd, meta, sft, dpo, started)  # killed after the adapter and its meta, before the entry
        return meta
    _reset_checkpoints(rnd, fingerprint, force, log)
    phases, final = _phases(cfg, rnd, run, sft, dpo, callbacks=callbacks, show_progress=show_progress, log=log)
    with replace_dir(rnd.adapter) as tmp:
        shutil.copytree(final, tmp, ignore=shutil.ignore_patterns(phase_metrics(final).name))
    meta = _meta(cfg, rnd, sft, dpo, data, fingerprint, phases, started)
    write_json(rnd.train_meta, meta)
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(rnd.train_ckpt, ignore_errors=True)
    _record(rnd, meta, sft, dpo, started)
    return meta


def _datasets(cfg, rnd, run, log):
    """The SFT set, the DPO set (None when DPO is off or it is empty) and the sha256 of everything trained from
    (``data``: the datasets, and the adapter training continues from)."""
    sft = load_split(rnd, "train_sft")
    if len(sft) == 0:
        raise ValueError(f"{rnd.dataset('train_sft')} has no records: nothing to train on")
    data = {"train_sft": rows_sha256(sft)}
    dpo = None
    if cfg.train.dpo.enabled:
        dpo = load_split(rnd, "train_dpo")
        data["train_dpo"] = rows_sha256(dpo)
        if len(dpo) == 0:
            log("train: train.dpo.enabled but the preference set is empty; SFT only")
            dpo = None
    if cfg.train.init_from == "previous":
        prev = previous_adapter(run, rnd)  # a retrained earlier round makes this round's adapter stale
        data["init_adapter"] = sha256_file(prev / ADAPTER_WEIGHTS) if prev else None
    return sft, dpo, data


def _up_to_date(rnd, fingerprint: dict, log) -> dict | None:
    """The recorded meta (marked ``skipped``) when the round's adapter was made from this fingerprint and is
    intact; None when it must be trained."""
    if not (rnd.train_meta.exists() and is_adapter(rnd.adapter)):
        return None
    meta = json.loads(rnd.train_meta.read_text())
    if meta.get("fingerprint") == fingerprint and meta.get("adapter_sha256") == sha256_file(rnd.adapter_weights):
        log(f"train: {rnd.adapter} is up to date (same data and config); --force retrains")
        return {**meta, "skipped": True}
    return None


def _reset_checkpoints(rnd, fingerprint: dict, force: bool, log) -> None:
    """Checkpoints of other data / another config must not be resumed: discard them (all of them with
    ``force``), then stamp the folder with this fingerprint."""
    stamp = rnd.train_fingerprint
    if rnd.train_ckpt.exists():
        old = json.loads(stamp.read_text()) if stamp.exists() else None
        if force or old != fingerprint:
            log("train: discarding checkpoints made from other data or config" if not force else
                "train: --force, discarding checkpoints")
            shutil.rmtree(rnd.train_ckpt)
    rnd.train_ckpt.mkdir(parents=True, exist_ok=True)
    write_json(stamp, fingerprint)


def _phases(cfg, rnd, run, sft, dpo, *, callbacks, show_progress, log):
    """SFT, then DPO when there is a preference set; a phase finished before (its ``-final`` folder) is reused.
    Returns the metrics per phase and the folder of the last phase's adapter."""
    phases: dict[str, dict] = {}
    done = rnd.train_phase_done("sft")
    if is_adapter(done) and phase_metrics(done).exists():
        log("train sft: already finished, reusing its adapter")
        phases["sft"] = {**json.loads(phase_metrics(done).read_text()), "reused": True}
    elif cfg.train.num_processes > 1:
        phases["sft"] = launch_phase(cfg, rnd, "sft", show_progress=show_progress, log=log)
    else:
        phases["sft"] = sft_phase(cfg, rnd, run, sft, callbacks=callbacks, show_progress=show_progress, log=log)
    final = done
    if dpo is not None:
        done = rnd.train_phase_done("dpo")
        if is_adapter(done) and phase_metrics(done).exists():
            phases["dpo"] = {**json.loads(phase_metrics(done).read_text()), "reused": True}
        elif cfg.train.num_processes > 1:
            phases["dpo"] = launch_phase(cfg, rnd, "dpo", start_adapter=final, show_progress=show_progress, log=log)
        else:
            phases["dpo"] = dpo_phase(cfg, rnd, dpo, final, callbacks=callbacks, show_progress=show_progress,
                                      log=log)
        final = done
    return phases, final


def _meta(cfg, rnd, sft, dpo, data: dict, fingerprint: dict, phases: dict, started: float) -> dict:
    """``train_meta.json``: the adapter and its sha256, where and how it was trained, on what, and the metrics."""
    import torch

    return {
        "round": rnd.number,
        "adapter": str(rnd.adapter),
        "adapter_sha256": sha256_file(rnd.adapter / "adapter_model.safetensors"),
        "base_model": str(cfg.model.path),
        "device": "cuda" if on_cuda() else "cpu",
        "dtype": precision(cfg),
        "torch_threads": torch.get_num_threads(),
        "data_sha256": data,
        "examples": {"train_sft": len(sft), **({"train_dpo": len(dpo)} if dpo is not None else {})},
        "config": dataclasses.asdict(cfg.train),
        "fingerprint": fingerprint,
        "metrics": phases,
        "seconds": round(time.time() - started, 2),
    }


def _record(rnd, meta: dict, sft, dpo, started: float) -> None:
    """The stage's manifest entry."""
    inputs = [p for p in (rnd.train_sft, rnd.train_dpo if dpo is not None else None) if p is not None and p.exists()]
    sft_m = meta["metrics"]["sft"]
    manifest.record_stage(rnd.manifest, NAME, inputs=inputs, outputs=[rnd.train_meta], line=summary_line(meta),
                          counts={"train_sft": len(sft), "train_dpo": len(dpo) if dpo is not None else 0,
                                  "steps": sft_m["steps"], "tokens_per_s": sft_m["tokens_per_s"]},
                          started=started, adapter_sha256=meta["adapter_sha256"])


# ---------------------------------------------------------------- the stage

def run(ctx: StageContext) -> StageResult:
    """Train the round's adapter on the accumulated curated data (``train_round`` itself skips an adapter that is
    up to date and resumes from checkpoints). A round whose curation kept fewer than ``gate.min_new_examples``
    new SFT records trains nothing: the adapter would be trained on the data of the round before."""
    rnd, cfg = ctx.rnd, ctx.cfg
    if not rnd.dataset("train_sft").exists():
        raise StageError(f"train: {rnd.dataset('train_sft')} is missing: run `selfevolve curate` first")
    new = (ctx.entry("curate") or {}).get("counts", {}).get("sft", 0)
    if new < cfg.gate.min_new_examples:
        done = recorded(ctx, NAME, [rnd.curated])
        if done:
            return done
        reason = (f"curation kept {new} new SFT record(s) < gate.min_new_examples={cfg.gate.min_new_examples}: "
                  "nothing new to train on")
        return ctx.record(NAME, inputs=[rnd.curated], outputs=[], counts={}, started=time.time(), line=reason,
                          no_candidate=reason)
    t0 = time.time()
    asleep = _free_gpu(ctx) if on_cuda() else None
    try:
        meta = train_round(cfg, rnd, ctx.run, force=ctx.force, show_progress=ctx.show_progress,
                           log=lambda m: ctx.say(NAME, m))
    finally:
        if asleep is not None:
            asleep.wake_up()  # compare goes on with the same engine, no restart
    entry = ctx.entry(NAME) or {}
    return StageResult(NAME, entry.get("counts", {}), summary_line(meta), ran=not meta.get("skipped"),
                       seconds=round(time.time() - t0, 1))


def _free_gpu(ctx: StageContext):
    """Make room for training on the GPU: iterate's engine sleeps (``backend.enable_sleep_mode``; returned, to
    be woken) or is closed; then the training's memory plan is checked against what is free now."""
    from .memplan import check_round

    asleep = None
    if ctx.cfg.backend.enable_sleep_mode and ctx.models.started and hasattr(ctx.models.get(), "sleep"):
        asleep = ctx.models.get()
        asleep.sleep()
    else:
        ctx.models.close()  # the engine holds most of the GPU memory
    serving = "running" if ctx.run.serve_info.exists() else "none"
    try:
        check_round(ctx.cfg, serving=serving, engine=False, log=lambda m: ctx.say(NAME, m))
    except Exception:
        if asleep is not None:
            asleep.wake_up()
        raise
    return asleep


def summary_line(meta: dict) -> str:
    parts = []
    for phase, m in meta["metrics"].items():
        resumed = f", resumed from {m['resumed_from']}" if m.get("resumed_from") else ""
        reused = " (reused)" if m.get("reused") else ""
        parts.append(f"{phase}{reused}: {m['steps']} steps, loss {m['train_loss']:.4f}, {m['tokens']:,} tokens, "
                     f"{m['tokens_per_s']:,.0f} tok/s, {m['seconds']:.1f}s{resumed}")
    head = "up to date; " if meta.get("skipped") else ""
    return head + "; ".join(parts)
