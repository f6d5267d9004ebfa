"""Training-stage throughput vs a bare TRL SFTTrainer script, side by side.

    python scripts/bench_train.py [--config configs/default.yaml] [--steps 6] [--batch-size 8] [--max-length 512]
                                  [--variants default,padding_free,packing] [--repeats 1] [--set key=value ...]
    python scripts/bench_train.py --random-qwen-1.5b [--steps 20] [--batch-size 8] [--max-length 1024]   # CUDA

Both sides: the same model, the same data (SFT prompt/completion records built from every assistant turn of the
shipped sample chats, repeated to fill the steps), the same LoRA (``train.lora``), the same number of optimizer
steps, the same batch size, learning rate and max_length, the same precision (``train.precision``: bf16 autocast on CUDA and on CPUs with native bf16, else fp32; the
``fp32`` variant forces fp32 on ours), the same
thread count. The baseline is what a TRL user writes: ``SFTTrainer(model, args=SFTConfig(...), peft_config=...)``
with TRL's defaults for everything else (random sampler, padded batches, gradient checkpointing on). Ours is
``selfevolve.train.build_sft_trainer``, exactly what the stage runs, with each variant's batch layout
(``default`` = the config as it is; ``ungrouped`` = without length grouping; ``padding_free`` / ``packing``
switch those on).

Tokens/s = non-padding tokens the Trainer consumed (``num_input_tokens_seen``) / wall time of the training loop
(``on_train_begin`` → ``on_train_end``; model loading and tokenisation excluded on both sides). Runs alternate
(baseline, ours, baseline, ...) so that load from other processes hits both alike. With ``--random-qwen-1.5b``
(CUDA) the model is a random-weight Qwen2.5-1.5B (config written inline) and MFU = tokens/s · 4N / peak, with
N = base parameters (LoRA: forward 2N + backward through the activations 2N, no weight gradients of the base).
Writes bench_out/bench_train.{json,md}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN25_15B = dict(  # Qwen/Qwen2.5-1.5B-Instruct config.json, the parts that set the shapes
    architectures=["Qwen2ForCausalLM"], hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
    rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, hidden_act="silu", attention_dropout=0.0,
    use_sliding_window=False,
)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}

VARIANTS = {
    "default": [],
    "ungrouped": ["train.group_by_length=false"],  # ablation: random batches, padded
    # ablation: transformers' mega-batch grouping instead of ours; compare whole epochs only
    # (scripts/bench_train_grouping.py): a fixed number of steps draws different batches on each side
    "hf_grouping": ["train.grouping=hf"],
    "padding_free": ["train.padding_free=true", "train.packing=false"],
    "packing": ["train.packing=true"],
    "fp32": ["train.precision=fp32"],  # ablation: what `train.precision: auto` picks bf16 over on AMX / AVX512-BF16
}


def sft_records(repeat_to: int) -> list[dict]:
    from selfevolve.config import PACKAGE_DATA
    from selfevolve.records import assistant_turns, read_jsonl

    recs = []
    for conv in read_jsonl(PACKAGE_DATA / "sample_chats.jsonl"):
        msgs = conv["messages"]
        for i in assistant_turns(conv):
            recs.append({"prompt": msgs[:i], "completion": [msgs[i]]})
    out = []
    while len(out) < repeat_to:
        out += recs
    return out[:max(repeat_to, len(recs))]


def peak_flops() -> tuple[float | None, str]:
    import torch

    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value, name
    return None, name


def make_model(args, cfg):
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    if args.random_qwen_15b:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        conf = Qwen2Config(**QWEN25_15B)
        conf._attn_implementation = cfg.train.attn_implementation or "sdpa"
        with torch.device("cuda"):  # random init on the GPU: seconds instead of a minute on the CPU
            model = Qwen2ForCausalLM(conf)
        return model.to(torch.bfloat16)
    kw = {"attn_implementation": cfg.train.attn_implementation} if cfg.train.attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.bfloat16 if cuda else torch.float32, **kw)


def run_baseline(args, cfg, dataset, tokenizer, out_dir: Path) -> dict:
    """The bare TRL script: SFTConfig with the shared settings, TRL defaults for the rest."""
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from selfevolve.train import _callback_classes, precision

    cuda = torch.cuda.is_available()
    model = make_model(args, cfg)
    lc = cfg.train.lora
    cb = _callback_classes()("baseline", False)
    targs = SFTConfig(output_dir=str(out_dir), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                      learning_rate=cfg.train.learning_rate, max_length=args.max_length, seed=cfg.train.seed,
                      bf16=precision(cfg) == "bf16", use_cpu=not cuda, report_to="none", logging_steps=1, save_strategy="no",
                      disable_tqdm=True, include_num_input_tokens_seen="non_padding")
    trainer = SFTTrainer(model=model, args=targs, train_dataset=dataset, processing_class=tokenizer, callbacks=[cb],
                         peft_config=LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # quiet, like ours; no effect on speed
    return _measure(trainer, cb, model, "baseline (bare TRL)")


def run_ours(args, cfg, dataset, tokenizer, out_dir: Path, variant: str) -> dict:
    from selfevolve.config import _apply, parse_override
    from selfevolve.train import _callback_classes, build_sft_trainer, lora_config

    import copy

    vcfg = copy.deepcopy(cfg)
    for o in VARIANTS[variant]:
        _apply(vcfg, parse_override(o))
    model = make_model(args, vcfg)
    cb = _callback_classes()(variant, False)
    trainer = build_sft_trainer(vcfg, model, tokenizer, dataset, out_dir, peft_config=lora_config(vcfg),
                                callbacks=[cb])
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return _measure(trainer, cb, model, f"ours ({variant})")


def _measure(trainer, cb, model, name: str) -> dict:
    import torch

    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    base_params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n)
    res = {"name": name, "steps": trainer.state.global_step, "tokens": int(cb.session_tokens),
           "seconds": round(cb.seconds, 3), "wall_seconds": round(wall, 3), "tokens_per_s": round(cb.tokens_per_s, 1),
           "loss": round(float(out.training_loss), 4), "rows": len(trainer.train_dataset),
           "base_params": base_params}
    if torch.cuda.is_available():
        res["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    del trainer, model
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. train.torch_threads=1")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--variants", default="default", help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--random-qwen-1.5b", dest="random_qwen_15b", action="store_true",
                    help="CUDA only: random-weight Qwen2.5-1.5B, reports MFU")
    ap.add_argument("--out", default=str(ROOT / "bench_out"))
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from selfevolve.config import load_config
    from selfevolve.train import precision, set_threads

    cuda = torch.cuda.is_available()
    if args.random_qwen_15b and not cuda:
        sys.exit("--random-qwen-1.5b needs CUDA")
    cfg = load_config(args.config, [*args.set, f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}",
                                    f"train.max_length={args.max_length}", "train.save_steps=100000",
                                    "train.grad_accum=1"])
    if not Path(cfg.model.path).is_absolute():
        cfg.model.path = str(ROOT / cfg.model.path)
    set_threads(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)  # the Qwen run borrows it: ids < Qwen's vocab
    # Enough records for the baseline's steps (the packed variant needs fewer rows).
    dataset = Dataset.from_list(sft_records(args.steps * args.batch_size))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"unknown variant {v} (known: {', '.join(VARIANTS)})")

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    results: dict[str, list[dict]] = {}
    try:
        for rep in range(args.repeats):
            res = run_baseline(args, cfg, dataset, tokenizer, tmp / f"base{rep}")
            results.setdefault("baseline", []).append(res)
            print(json.dumps(res), flush=True)
            for v in variants:
                res = run_ours(args, cfg, dataset, tokenizer, tmp / f"{v}{rep}", v)
                results.setdefault(v, []).append(res)
                print(json.dumps(res), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def agg(runs):
        tokens, secs = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
        return {"tokens_per_s": tokens / secs if secs else 0.0, "tokens": tokens, "seconds": secs,
                "steps": runs[0]["steps"], "loss": runs[0]["loss"], "rows": runs[0]["rows"],
                "base_params": runs[0]["base_params"], **({"max_memory_gb": runs[0]["max_memory_gb"]}
                                                          if "max_memory_gb" in runs[0] else {})}

    summary = {k: agg(v) for k, v in results.items()}
    base_tps = summary["baseline"]["tokens_per_s"]
    peak, gpu = peak_flops() if cuda else (None, "cpu")
    for k, s in summary.items():
        s["ratio_vs_baseline"] = s["tokens_per_s"] / base_tps if base_tps else None
        if peak:
            s["mfu"] = s["tokens_per_s"] * 4 * s["base_params"] / peak
    info = {"device": gpu, "torch_threads": torch.get_num_threads(), "model": "random Qwen2.5-1.5B" if
            args.random_qwen_15b else cfg.model.path, "steps": args.steps, "batch_size": args.batch_size,
            "max_length": args.max_length, "lora": dataclasses.asdict(cfg.train.lora),
            "precision": precision(cfg), "repeats": args.repeats, "peak_flops": peak}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps({"info": info, "summary": summary, "runs": results}, indent=2))
    lines = ["# Training throughput: ours vs bare TRL SFTTrainer", "",
             f"{info['model']} on {gpu}, {info['precision']}, {args.steps} steps × batch {args.batch_size}, "
             f"max_length {args.max_length}, LoRA r={cfg.train.lora.r}, {torch.get_num_threads()} threads, "
             f"{args.repeats} repeat(s).", "",
             "| run | steps | rows | tokens | seconds | tokens/s | ÷ baseline |" + (" MFU |" if peak else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if peak else "")]
    for k, s in summary.items():
        mfu = f" {s['mfu']:.1%} |" if peak else ""
        lines.append(f"| {k} | {s['steps']} | {s['rows']} | {s['tokens']:,} | {s['seconds']:.1f} | "
                     f"{s['tokens_per_s']:,.0f} | {s['ratio_vs_baseline']:.2f} |{mfu}")
    (out / "bench_train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
