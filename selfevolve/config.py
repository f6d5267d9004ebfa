"""One typed config tree with documented defaults.

YAML files (configs/*.yaml) and ``--set key.sub=value`` overrides fill the dataclasses of the sections.
Unknown keys and wrongly typed values are errors that name the key: a typo must never be a
silently ignored option. Nothing here instantiates code from YAML; values are plain data.

This module holds the tree (``Config``) and its loading and validation; the sections live beside it by area
(config_data.py: run, model, backend, ray, lora_slots, data, revise, curate, judge; config_train.py: train,
compare; config_serve.py: serve, gate) and are re-exported here, so ``from selfevolve.config import X`` stays
the one place to import them from.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_curate import DEFAULT_ORDER, CurateConfig, JudgeConfig
from .config_data import (BackendConfig, DataConfig, LoraSlotsConfig, ModelConfig, RayConfig, ReviseConfig,
                          RunConfig)
from .config_serve import GateConfig, ServeConfig
from .config_train import LR_SCHEDULERS, CompareConfig, DPOTrainConfig, LoraTrainConfig, TrainConfig
from .errors import ConfigError
from .grounding import GroundingConfig
from .pii import PiiConfig
from .publish import PublishConfig
from .signals import SignalConfig

__all__ = [
    "PROJECT_ROOT", "PACKAGE_DATA", "ConfigError", "Config", "load_config", "parse_override", "validate",
    "resolve_input", "MOVED",
    # the sections (defined in config_data / config_train / config_serve and the modules that own them)
    "RunConfig", "ModelConfig", "BackendConfig", "RayConfig", "LoraSlotsConfig", "DataConfig", "ReviseConfig",
    "DEFAULT_ORDER",
    "CurateConfig", "JudgeConfig", "LoraTrainConfig", "DPOTrainConfig", "TrainConfig", "LR_SCHEDULERS",
    "CompareConfig", "ServeConfig", "GateConfig", "SignalConfig", "GroundingConfig", "PublishConfig",
    "PiiConfig",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    lora_slots: LoraSlotsConfig = field(default_factory=LoraSlotsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
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
