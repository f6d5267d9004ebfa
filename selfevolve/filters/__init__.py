"""Curate filters: registry (name → class) and :func:`build_filters`. The contract is in ``base.py``.

Filter modules import their heavy dependencies (datasketch, scipy) inside functions, so that loading
the config (which checks ``curate.order`` against this registry) stays cheap.
"""
from __future__ import annotations

from .base import Context, Decision, Filter
from .consistency import ConsistencyFilter
from .diversity import DiversityFilter
from .judge import JudgeFilter
from .leakage import LeakageFilter
from .perplexity import PerplexityFilter
from .structural import StructuralFilter

FILTERS = {cls.name: cls for cls in (StructuralFilter, LeakageFilter, DiversityFilter, PerplexityFilter,
                                     ConsistencyFilter, JudgeFilter)}

__all__ = ["FILTERS", "Context", "Decision", "Filter", "build_filters"]


def build_filters(cfg) -> list[Filter]:
    """The enabled filters of ``cfg.curate.order``, in that order, each built from its own config section."""
    from ..config import ConfigError

    filters = []
    for name in cfg.curate.order:
        if name not in FILTERS:
            raise ConfigError(f"curate.order: unknown filter '{name}' (known: {', '.join(FILTERS)})")
        section = getattr(cfg.curate, name)
        if section.enabled:
            filters.append(FILTERS[name](section))
    return filters
