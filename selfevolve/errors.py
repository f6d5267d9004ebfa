"""Errors every layer may raise; the CLI catches them and prints the message (exit 2).

Also the range checks the config dataclasses' ``validate(key)`` methods share (selfevolve/config.py and each
filter's ``Config``): they live here, not in config.py, because the filter modules are imported by config.py
and must not import it back.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable


class ConfigError(ValueError):
    """A config value, key or file that cannot be used; the message names the key."""


RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: v > 0, "positive"),
    "non_negative": (lambda v: v >= 0, "non-negative"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "open_unit": (lambda v: 0 < v < 1, "in (0, 1)"),
    "left_open_unit": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "right_open_unit": (lambda v: 0 <= v < 1, "in [0, 1)"),
}
"""Named ranges: the test and the phrase of the message. NaN fails every test (each comparison is False)."""


def check_ranges(obj: Any, key: str, **rules: Iterable[str]) -> None:
    """``check_ranges(self, key, positive=("max_tokens",), unit=("agreement",))``: each named field of ``obj``
    must lie in that range, else ``ConfigError("<key>.<field>: must be positive, got -5")``. A ``None`` value
    passes (optional fields use it for "off" / "auto")."""
    for rule, names in rules.items():
        ok, phrase = RANGES[rule]
        for name in names:
            value = getattr(obj, name)
            if value is not None and not ok(value):
                raise ConfigError(f"{key}.{name}: must be {phrase}, got {value!r}")


def check_choice(obj: Any, key: str, name: str, allowed: Iterable[str]) -> None:
    """Field ``name`` of ``obj`` must be one of ``allowed``."""
    allowed = tuple(allowed)
    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{key}.{name}: {value!r} is not one of {', '.join(allowed)}")
