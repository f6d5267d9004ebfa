"""The phases of training one round's adapter (SFT, then DPO): the base model and datasets they load, the
TrainingArguments they share, the trainers they build, and the checkpoints they resume from.

selfevolve/train.py drives them (fingerprint, resume-or-skip, adapter, meta, manifest). trl, peft, transformers,
datasets and torch are imported inside the functions that need them: importing this module stays fast.
"""
from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

from . import faults
from .adapters import is_adapter
from .hf import load_model, load_tokenizer
from .layout import phase_metrics
from .records import replace_dir, write_json
from .train_progress import callback_class
from .train_sampler import bucketed

CHECKPOINT_PREFIX = "checkpoint-"


# ---------------------------------------------------------------- checkpoints and adapters (no torch needed)

def on_cuda() -> bool:
    """Whether training runs on a GPU."""
    import torch

    return torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX512-BF16). Elsewhere bf16 is emulated and
    slower than fp32. torch exposes the check only under private names: without them, assume not."""
    import torch

    checks = [getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(c()) for c in checks if c is not None)


def precision(cfg) -> str:
    """``bf16`` or ``fp32``: what ``train.precision`` means on this machine."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    return "bf16" if on_cuda() or cpu_has_bf16() else "fp32"


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
    """Delete the checkpoints interrupted mid-save (no ``trainer_state.json``); their names."""
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


# ---------------------------------------------------------------- model and data

def set_threads(cfg) -> None:
    """``train.torch_threads`` (0: leave torch's default). torch._C's own setter: an in-process vLLM CPU engine
    that ran in this process replaced ``torch.set_num_threads`` with a no-op for good (as in cpu_split.pinned)."""
    if cfg.train.torch_threads > 0:
        import torch

        torch._C.set_num_threads(cfg.train.torch_threads)


def _load_base(cfg):
    """The base model (bf16 weights on CUDA with bf16 precision; fp32 on CPU, where autocast runs the matmuls in
    bf16: bf16 weights measured no faster there; ``train.attn_implementation``) and its tokenizer."""
    kwargs = {"attn_implementation": cfg.train.attn_implementation} if cfg.train.attn_implementation else {}
    bf16_weights = on_cuda() and precision(cfg) == "bf16"
    model = load_model(cfg.model.path, dtype="bfloat16" if bf16_weights else "float32", **kwargs)
    return model, load_tokenizer(cfg.model.path)


def lora_config(cfg, task_type: str = "CAUSAL_LM"):
    """PEFT ``LoraConfig`` from ``train.lora``."""
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
        bf16=precision(cfg) == "bf16",  # mixed precision (autocast); TRL's own default would be bf16 everywhere
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
        # several processes (train.num_processes): every LoRA parameter takes part in every forward pass, so DDP's
        # search for unused ones (the Trainer's default without gradient checkpointing) is a wasted graph walk
        ddp_find_unused_parameters=False,
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
    """Train, resuming from the latest complete checkpoint; the phase's metrics."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # log dicts on stdout; the bar shows the same numbers
    dropped = _drop_incomplete_checkpoints(ckpt_dir) if trainer.accelerator.is_main_process else []
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
    group = t.group_by_length and not padding_free
    args = SFTConfig(
        **common_args(cfg, output_dir, lr=t.learning_rate, epochs=t.epochs, max_steps=t.max_steps,
                      padding_free=padding_free),
        max_length=None if (t.padding_free and not t.packing) else t.max_length,
        packing=t.packing,
        packing_strategy="bfd",
        padding_free=t.padding_free,
        completion_only_loss=True,
        # whole-set length buckets come from train_sampler.py (see there why), transformers' grouping with "hf"
        train_sampling_strategy="group_by_length" if group and t.grouping == "hf" else "random",
    )
    trainer_cls = bucketed(SFTTrainer) if group and t.grouping == "buckets" else SFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=list(callbacks))
    attn = getattr(model.config, "_attn_implementation", None) or ""
    if padding_free and "flash" not in attn:
        warnings.warn(f"train: padding-free batches with attn_implementation={attn!r}: without a varlen (flash) "
                      "kernel the flattened batch gets one dense block-diagonal mask, usually slower than padding",
                      stacklevel=2)
    if t.padding_free and not t.packing:
        _truncate_prepared(trainer, t.max_length)
    return trainer


def sft_phase(cfg, rnd, run, dataset, *, callbacks, show_progress, log) -> dict:
    """The SFT phase from the base model (or the previous round's adapter); its adapter and metrics land in
    ``train_ckpt/sft-final/``."""
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
    callback = callback_class()("sft", show_progress)
    ckpt = rnd.train_phase_ckpt("sft")
    trainer = build_sft_trainer(cfg, model, tokenizer, dataset, ckpt, peft_config=peft_config,
                                callbacks=[callback, faults.trainer_callback(), *callbacks])
    metrics = _run_phase(trainer, "sft", ckpt, callback, log)
    metrics["init_from"] = init
    _finish(trainer, rnd.train_phase_done("sft"), metrics)
    return metrics


def _finish(trainer, done: Path, metrics: dict) -> None:
    """The phase's adapter and metrics, written once: by rank 0 under ``accelerate launch`` (every rank holds
    the same weights after the last all-reduce), then the other ranks wait for it."""
    if trainer.accelerator.is_main_process:
        _save_adapter(trainer.model, done)
        write_json(phase_metrics(done), metrics)
    trainer.accelerator.wait_for_everyone()


def dpo_phase(cfg, rnd, dataset, start_adapter: Path, *, callbacks, show_progress, log) -> dict:
    """The DPO phase on ``start_adapter`` (the SFT one); its adapter and metrics land in ``train_ckpt/dpo-final/``."""
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    t, d = cfg.train, cfg.train.dpo
    base, tokenizer = _load_base(cfg)
    model = PeftModel.from_pretrained(base, str(start_adapter), is_trainable=True)
    callback = callback_class()("dpo", show_progress)
    ckpt = rnd.train_phase_ckpt("dpo")
    args = DPOConfig(**common_args(cfg, ckpt, lr=d.learning_rate, epochs=d.epochs, max_steps=d.max_steps,
                                   padding_free=False),
                     beta=d.beta, max_length=t.max_length)
    # No ref_model: TRL then uses the PEFT model itself as the reference, through a frozen "ref" copy of the
    # adapter when one exists (``start``) or with the adapters disabled (``base``).
    trainer_cls = bucketed(DPOTrainer) if t.group_by_length and t.grouping == "buckets" else DPOTrainer
    trainer = trainer_cls(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[callback, faults.trainer_callback(), *callbacks])
    if d.reference == "base" and "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")
        trainer.model.set_adapter("default")
    metrics = _run_phase(trainer, "dpo", ckpt, callback, log)
    metrics["reference"] = d.reference
    _finish(trainer, rnd.train_phase_done("dpo"), metrics)
    return metrics
