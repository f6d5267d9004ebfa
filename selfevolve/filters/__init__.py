"""Curate filters: an open registry (name → class) and :func:`build_filters`. The contract is in ``base.py``.

A filter is one module: every module of this package whose class has ``name``, ``Config`` (its config
dataclass, the ``curate.<name>`` section) and ``apply`` is registered, and so is any class another package
declares under the ``selfevolve.filters`` entry-point group. selfevolve/config.py builds ``curate`` from this
registry, so a new filter needs no edit anywhere else. Filter modules import their heavy dependencies
(datasketch, the embedder, models) inside functions: loading the config stays cheap.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from ..errors import ConfigError
from .base import Context, Decision, Filter

__all__ = ["FILTERS", "Context", "Decision", "Filter", "build_filters"]


def _is_filter(obj) -> bool:
    return isinstance(obj, type) and all(hasattr(obj, a) for a in ("name", "Config", "apply"))


def _discover() -> dict[str, type]:
    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if _is_filter(obj) and obj.__module__ == module.__name__:
                found[obj.name] = obj
    for ep in entry_points(group="selfevolve.filters"):
        obj = ep.load()
        if not _is_filter(obj):
            raise ConfigError(f"entry point selfevolve.filters:{ep.name} is not a filter class (name, Config, apply)")
        found[obj.name] = obj
    return found


FILTERS = _discover()


def build_filters(cfg) -> list[Filter]:
    """The enabled filters of ``cfg.curate.order``, in that order, each built from its own config section."""
    filters = []
    for name in cfg.curate.order:
        if name not in FILTERS:
            raise ConfigError(f"curate.order: unknown filter '{name}' (known: {', '.join(FILTERS)})")
        section = getattr(cfg.curate, name)
        if enabled(section, cfg):
            filters.append(FILTERS[name](section))
    return filters


def enabled(section, cfg) -> bool:
    """``enabled: true/false``, or ``None`` = auto: on only where the judge is another model
    (``judge.kind: openai``) — for the filters whose verdict rests on a model judging (measured at chance
    on the embedded model: README, "Which filters earn their default")."""
    on = section.enabled
    return cfg.judge.kind == "openai" if on is None else bool(on)
