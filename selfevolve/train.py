"""Train: a LoRA adapter on a round's accumulated curated data, SFT then (optionally) DPO.

The only module that imports trl and peft (inside the functions: ``import selfevolve`` stays fast).

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

fp32 on CPU, bf16 on CUDA.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from .adapters import is_adapter
from .records import replace_dir, sha256_file, write_json
from .stage import StageContext, StageError, StageResult, recorded

NAME = "train"
CHECKPOINT_PREFIX = "checkpoint-"


# ---------------------------------------------------------------- small helpers (no torch needed)

def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def rows_sha256(rows) -> str:
    """sha256 of a dataset's rows in order, each as canonical JSON: the same data hashes the same whichever
    folder or file format holds it."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def latest_checkpoint(folder: Path) -> Path | None:
    """The highest ``checkpoint-N`` whose ``trainer_state.json`` exists (the Trainer writes it last, so a
    checkpoint without it was interrupted mid-save)."""
    if not folder.is_dir():
        return None
    done = []
    for p in folder.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = p.name.removeprefix(CHECKPOINT_PREFIX)
        if p.is_dir() and suffix.isdigit() and (p / "trainer_state.json").is_file():
            done.append((int(suffix), p))
    return max(done)[1] if done else None


def _drop_incomplete_checkpoints(folder: Path) -> list[str]:
    dropped = []
    if folder.is_dir():
        for p in folder.glob(f"{CHECKPOINT_PREFIX}*"):
            if p.is_dir() and not (p / "trainer_state.json").is_file():
                shutil.rmtree(p, ignore_errors=True)
                dropped.append(p.name)
    return dropped


def _save_adapter(model, dest: Path) -> None:
    """``save_pretrained`` of the trained (``default``) adapter, swapped into place whole (records.replace_dir)."""
    with replace_dir(dest) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=["default"], safe_serialization=True)
        if not is_adapter(tmp):
            raise RuntimeError(f"saving the adapter produced no adapter_model.safetensors in {tmp}")


def previous_adapter(run, rnd) -> Path | None:
    """The adapter of the latest round before ``rnd`` that has one."""
    earlier = [r for r in run.rounds() if r.number < rnd.number and is_adapter(r.adapter)]
    return earlier[-1].adapter if earlier else None


def _fingerprint(cfg, data: dict) -> dict:
    """What a checkpoint or a finished adapter was made from: resuming or skipping needs all of it unchanged."""
    return {"model": str(cfg.model.path), "train": dataclasses.asdict(cfg.train), "data_sha256": data}


# ---------------------------------------------------------------- progress: tokens/s

def _callback_classes():
    from transformers import TrainerCallback

    class ThroughputCallback(TrainerCallback):
        """A rich progress bar (step / total, tokens/s, loss) and the tokens/s of this session.

        Tokens are the Trainer's ``num_input_tokens_seen`` (non-padding tokens; with padding-free batches, all),
        which lives in the trainer state, so a resumed run keeps counting."""

        def __init__(self, phase: str, show: bool):
            self.phase, self.show = phase, show
            self.progress = self.task = None
            self.t0 = self.tokens0 = self.step0 = 0
            self.seconds = 0.0
            self.tokens = self.session_tokens = self.steps = 0
            self.last_loss: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            from .progress import console

            self.t0 = time.perf_counter()
            self.tokens0, self.step0 = state.num_input_tokens_seen, state.global_step
            if self.show:
                self.progress = Progress(
                    TextColumn(f"[bold]train {self.phase}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console)
                self.progress.start()
                self.task = self.progress.add_task(self.phase, total=state.max_steps, completed=state.global_step,
                                                   stats="")

        def _update(self, state):
            self.seconds = time.perf_counter() - self.t0
            self.tokens, self.steps = state.num_input_tokens_seen, state.global_step
            self.session_tokens = self.tokens - self.tokens0
            if self.progress is not None:
                loss = f"  loss {self.last_loss:.3f}" if self.last_loss is not None else ""
                self.progress.update(self.task, completed=state.global_step,
                                     stats=f"{self.tokens_per_s:,.0f} tok/s{loss}")

        @property
        def tokens_per_s(self) -> float:
            return self.session_tokens / self.seconds if self.seconds > 0 else 0.0

        def on_step_end(self, args, state, control, **kwargs):
            self._update(state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])
            self._update(state)

        def on_train_end(self, args, state, control, **kwargs):
            self._update(state)
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return ThroughputCallback


# ---------------------------------------------------------------- model and data

def set_threads(cfg) -> None:
    if cfg.train.torch_threads > 0:
        import torch

        torch.set_num_threads(cfg.train.torch_threads)


def _load_base(cfg):
    from .hf import load_model, load_tokenizer

    kwargs = {"attn_implementation": cfg.train.attn_implementation} if cfg.train.attn_implementation else {}
    model = load_model(cfg.model.path, dtype="bfloat16" if on_cuda() else "float32", **kwargs)
    return model, load_tokenizer(cfg.model.path)


def lora_config(cfg, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    lc = cfg.train.lora
    return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                      bias="none", task_type=task_type)


def load_split(rnd, name: str):
    """A round's HF dataset (``train_sft`` / ``train_dpo``) with only TRL's columns."""
    from datasets import load_from_disk

    path = rnd.dataset(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `selfevolve curate` for round {rnd.number} first")
    ds = load_from_disk(str(path))
    return ds.remove_columns([c for c in ("id", "round") if c in ds.column_names])


def common_args(cfg, output_dir: Path, *, lr: float, epochs: float, max_steps: int, padding_free: bool) -> dict:
    """TrainingArguments shared by the SFT and DPO phases (and by scripts/bench_train.py)."""
    t, cuda = cfg.train, on_cuda()
    return dict(
        output_dir=str(output_dir),
        learning_rate=lr,
        num_train_epochs=epochs if max_steps <= 0 else 1.0,
        max_steps=max_steps if max_steps > 0 else -1,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=cuda,  # TRL defaults bf16 to True; on CPU we train in fp32
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=t.gradient_checkpointing,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        report_to="none",
        disable_tqdm=True,  # our own bar (ThroughputCallback) shows tokens/s
        dataloader_num_workers=0,
        # Non-padding tokens; a padding-free batch has no padding, and its pad id (= eos here) would be miscounted.
        include_num_input_tokens_seen="all" if padding_free else "non_padding",
    )


# ---------------------------------------------------------------- phases

def _truncate_prepared(trainer, max_length: int) -> None:
    """Padding-free without packing: TRL does not enforce max_length, so cut the tokenized examples here (the
    same keep-start truncation TRL applies to padded batches) and drop ones left without a completion token."""
    ds = trainer.train_dataset

    def cut(ex):
        return {"input_ids": ex["input_ids"][:max_length], "labels": ex["labels"][:max_length]}

    ds = ds.map(cut).filter(lambda ex: any(x != -100 for x in ex["labels"]))
    trainer.train_dataset = ds


def _run_phase(trainer, phase: str, ckpt_dir: Path, callback, log) -> dict:
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # log dicts on stdout; the bar shows the same numbers
    dropped = _drop_incomplete_checkpoints(ckpt_dir)
    resume = latest_checkpoint(ckpt_dir)
    if dropped:
        log(f"train {phase}: removed incomplete checkpoints {', '.join(sorted(dropped))}")
    if resume is not None:
        log(f"train {phase}: resuming from {resume.name}")
    started = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    state = trainer.state
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    return {
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "resumed_from": resume.name if resume else None,
        "resumed_from_step": int(resume.name.removeprefix(CHECKPOINT_PREFIX)) if resume else 0,
        "train_loss": float(out.training_loss),  # mean over this session's steps
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "tokens": int(state.num_input_tokens_seen),
        "session_tokens": int(callback.session_tokens),
        "seconds": round(seconds, 3),
        "train_loop_seconds": round(callback.seconds, 3),
        "tokens_per_s": round(callback.tokens_per_s, 1),
        "examples": len(trainer.train_dataset),
    }


def build_sft_trainer(cfg, model, tokenizer, dataset, output_dir: Path, *, peft_config=None, callbacks=()):
    """The SFT trainer exactly as the stage uses it (scripts/bench_train.py measures this one)."""
    from trl import SFTConfig, SFTTrainer

    t = cfg.train
    padding_free = t.packing or t.padding_free
    args = SFTConfig(
        **common_args(cfg, output_dir, lr=t.learning_rate, epochs=t.epochs, max_steps=t.max_steps,
                      padding_free=padding_free),
        max_length=None if (t.padding_free and not t.packing) else t.max_length,
        packing=t.packing,
        packing_strategy="bfd",
        padding_free=t.padding_free,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if (t.group_by_length and not padding_free) else "random",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=list(callbacks))
    attn = getattr(model.config, "_attn_implementation", None) or ""
    if padding_free and "flash" not in attn:
        import warnings

        warnings.warn(f"train: padding-free batches with attn_implementation={attn!r}: without a varlen (flash) "
                      "kernel the flattened batch gets one dense block-diagonal mask, usually slower than padding",
                      stacklevel=2)
    if t.padding_free and not t.packing:
        _truncate_prepared(trainer, t.max_length)
    return trainer


def _sft_phase(cfg, rnd, run, dataset, *, callbacks, show_progress, log) -> dict:
    from peft import PeftModel

    model, tokenizer = _load_base(cfg)
    init = "base"
    peft_config = None
    prev = previous_adapter(run, rnd) if cfg.train.init_from == "previous" else None
    if prev is not None:
        model = PeftModel.from_pretrained(model, str(prev), is_trainable=True)
        init = str(prev.parent.name)
        log(f"train sft: continuing from {prev}")
    else:
        if cfg.train.init_from == "previous":
            log("train sft: no earlier round has an adapter; starting from the base model")
        peft_config = lora_config(cfg)
    callback = _callback_classes()("sft", show_progress)
    ckpt = rnd.train_phase_ckpt("sft")
    trainer = build_sft_trainer(cfg, model, tokenizer, dataset, ckpt, peft_config=peft_config,
                                callbacks=[callback, *callbacks])
    metrics = _run_phase(trainer, "sft", ckpt, callback, log)
    metrics["init_from"] = init
    _save_adapter(trainer.model, rnd.train_phase_done("sft"))
    write_json(rnd.train_phase_done("sft") / "phase_metrics.json", metrics)
    return metrics


def _dpo_phase(cfg, rnd, dataset, start_adapter: Path, *, callbacks, show_progress, log) -> dict:
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    t, d = cfg.train, cfg.train.dpo
    base, tokenizer = _load_base(cfg)
    model = PeftModel.from_pretrained(base, str(start_adapter), is_trainable=True)
    callback = _callback_classes()("dpo", show_progress)
    ckpt = rnd.train_phase_ckpt("dpo")
    args = DPOConfig(**common_args(cfg, ckpt, lr=d.learning_rate, epochs=d.epochs, max_steps=d.max_steps,
                                   padding_free=False),
                     beta=d.beta, max_length=t.max_length)
    # No ref_model: TRL then uses the PEFT model itself as the reference, through a frozen "ref" copy of the
    # adapter when one exists (``start``) or with the adapters disabled (``base``).
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[callback, *callbacks])
    if d.reference == "base" and "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")
        trainer.model.set_adapter("default")
    metrics = _run_phase(trainer, "dpo", ckpt, callback, log)
    metrics["reference"] = d.reference
    _save_adapter(trainer.model, rnd.train_phase_done("dpo"))
    write_json(rnd.train_phase_done("dpo") / "phase_metrics.json", metrics)
    return metrics


# ---------------------------------------------------------------- the stage

def train_round(cfg, rnd, run=None, *, force: bool = False, callbacks=(), show_progress: bool = True,
                log=print) -> dict:
    """Train the round's adapter; returns the ``train_meta.json`` content (``skipped: true`` when the adapter
    already exists for the same data and config, unless ``force``). ``callbacks``: extra TrainerCallbacks
    (tests use them to interrupt a run or to look at the weights)."""
    import torch

    from .layout import RunLayout

    threads = torch.get_num_threads()
    try:
        return _train_round(cfg, rnd, run or RunLayout(rnd.dir.parent), force=force, callbacks=callbacks,
                            show_progress=show_progress, log=log)
    finally:
        torch.set_num_threads(threads)  # train.torch_threads applies to training only, not to the caller


def _train_round(cfg, rnd, run, *, force, callbacks, show_progress, log) -> dict:
    from . import manifest

    started = time.time()
    set_threads(cfg)
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
        data["init_adapter"] = sha256_file(prev / "adapter_model.safetensors") if prev else None
    fingerprint = _fingerprint(cfg, data)

    if not force and rnd.train_meta.exists() and is_adapter(rnd.adapter):
        meta = json.loads(rnd.train_meta.read_text())
        if meta.get("fingerprint") == fingerprint and meta.get("adapter_sha256") == sha256_file(
                rnd.adapter / "adapter_model.safetensors"):
            log(f"train: {rnd.adapter} is up to date (same data and config); --force retrains")
            return {**meta, "skipped": True}

    # Checkpoints of other data / another config must not be resumed.
    stamp = rnd.train_ckpt / "fingerprint.json"
    if rnd.train_ckpt.exists():
        old = json.loads(stamp.read_text()) if stamp.exists() else None
        if force or old != fingerprint:
            log("train: discarding checkpoints made from other data or config" if not force else
                "train: --force, discarding checkpoints")
            shutil.rmtree(rnd.train_ckpt)
    rnd.train_ckpt.mkdir(parents=True, exist_ok=True)
    write_json(stamp, fingerprint)

    phases: dict[str, dict] = {}
    done = rnd.train_phase_done("sft")
    if is_adapter(done) and (done / "phase_metrics.json").exists():
        log("train sft: already finished, reusing its adapter")
        phases["sft"] = {**json.loads((done / "phase_metrics.json").read_text()), "reused": True}
    else:
        phases["sft"] = _sft_phase(cfg, rnd, run, sft, callbacks=callbacks, show_progress=show_progress, log=log)
    final = done
    if dpo is not None:
        done = rnd.train_phase_done("dpo")
        if is_adapter(done) and (done / "phase_metrics.json").exists():
            phases["dpo"] = {**json.loads((done / "phase_metrics.json").read_text()), "reused": True}
        else:
            phases["dpo"] = _dpo_phase(cfg, rnd, dpo, final, callbacks=callbacks, show_progress=show_progress,
                                       log=log)
        final = done

    with replace_dir(rnd.adapter) as tmp:
        shutil.copytree(final, tmp, ignore=shutil.ignore_patterns("phase_metrics.json"))
    import torch

    meta = {
        "round": rnd.number,
        "adapter": str(rnd.adapter),
        "adapter_sha256": sha256_file(rnd.adapter / "adapter_model.safetensors"),
        "base_model": str(cfg.model.path),
        "device": "cuda" if on_cuda() else "cpu",
        "dtype": "bf16" if on_cuda() else "fp32",
        "torch_threads": torch.get_num_threads(),
        "data_sha256": data,
        "examples": {"train_sft": len(sft), **({"train_dpo": len(dpo)} if dpo is not None else {})},
        "config": dataclasses.asdict(cfg.train),
        "fingerprint": fingerprint,
        "metrics": phases,
        "seconds": round(time.time() - started, 2),
    }
    write_json(rnd.train_meta, meta)
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(rnd.train_ckpt, ignore_errors=True)
    inputs = [p for p in (rnd.train_sft, rnd.train_dpo if dpo is not None else None) if p is not None and p.exists()]
    sft_m = phases["sft"]
    manifest.record_stage(rnd.manifest, NAME, inputs=inputs, outputs=[rnd.train_meta], line=summary_line(meta),
                          counts={"train_sft": len(sft), "train_dpo": len(dpo) if dpo is not None else 0,
                                  "steps": sft_m["steps"], "tokens_per_s": sft_m["tokens_per_s"]},
                          started=started, adapter_sha256=meta["adapter_sha256"])
    return meta


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
    if on_cuda():
        ctx.models.close()  # the engine holds most of the GPU memory
    t0 = time.time()
    meta = train_round(cfg, rnd, ctx.run, force=ctx.force, show_progress=ctx.show_progress,
                       log=lambda m: ctx.say(NAME, m))
    entry = ctx.entry(NAME) or {}
    return StageResult(NAME, entry.get("counts", {}), summary_line(meta), ran=not meta.get("skipped"),
                       seconds=round(time.time() - t0, 1))


def summary_line(meta: dict) -> str:
    parts = []
    for phase, m in meta["metrics"].items():
        resumed = f", resumed from {m['resumed_from']}" if m.get("resumed_from") else ""
        reused = " (reused)" if m.get("reused") else ""
        parts.append(f"{phase}{reused}: {m['steps']} steps, loss {m['train_loss']:.4f}, {m['tokens']:,} tokens, "
                     f"{m['tokens_per_s']:,.0f} tok/s, {m['seconds']:.1f}s{resumed}")
    head = "up to date; " if meta.get("skipped") else ""
    return head + "; ".join(parts)
