"""Config sections of curation: ``curate`` (the filter chain, one section per registered filter, and the rules
about users that frame it) and ``judge`` (the model a judging filter asks). selfevolve/config.py assembles them into
the one ``Config`` tree with the others (config_data.py).

Each section documents its defaults and validates its own values (``validate(key)``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config_data import BackendConfig
from .errors import ConfigError, check_choice, check_ranges
from .filters import FILTERS


# ---------------------------------------------------------------- curate (filters run in curate.order)

DEFAULT_ORDER = ["signal", "structural", "repetition", "grounding", "leakage", "injection", "diversity", "perplexity",
                 "judge", "claims", "self_consistency"]
"""Filters run in this order (cheap first); a record dropped by one never reaches the next. A filter not
listed, or with ``enabled: false``, does not run. ``signal`` routes each turn by what the user said next;
the model-backed filters (perplexity, judge, self-consistency) come last."""


def _curate_config():
    """``curate``: ``order`` plus one section per registered filter (selfevolve/filters: each filter module
    brings its own config dataclass, so a new filter is one module and no edit here)."""
    fields = [("order", list[str], field(default_factory=lambda: list(DEFAULT_ORDER)))]
    # Per-user caps (selfevolve/curate.py, after every filter): no user supplies more than max_user_share of the
    # round's SFT (or DPO) examples; the excess is dropped with reason user_cap. 0.2: with ~100-250 poisoned
    # examples enough to plant a behaviour, one user needs a round of 500-1250 examples from others to get
    # there. 1.0 = no cap. Users: a gateway chat's meta.user; an imported file is one user (its source), capped
    # only with cap_imports (the operator chose it; a round of one file would otherwise keep nothing).
    fields += [("max_user_share", float, field(default=0.2)), ("cap_imports", bool, field(default=False))]
    # A revision that takes a claim from its user's correction alone trains only once this many distinct users of
    # the run brought the same claim (selfevolve/curate_claims.py; null: off). 2: one user does not teach a claim
    # to everyone, and a correction waits for a second user. A run with one gateway identity holds nothing.
    # docs/bench/injection_real.md measures what it stops and, where each chat is its own user, what it holds back.
    fields += [("corroborate", int | None, field(default=2))]
    # Per-user key names (`selfevolve keys issue <name>`: the operator, staff) whose claims train without waiting for
    # corroboration; they still count as identities and as other users' second voice.
    fields += [("trusted_users", list[str], field(default_factory=list))]
    fields += [(name, cls.Config, field(default_factory=cls.Config)) for name, cls in FILTERS.items()]
    return dataclasses.make_dataclass("CurateConfig", fields, namespace={"validate": _validate_curate})


def _validate_curate(self, key: str) -> None:
    """``curate.order``: registered filters, each once; the user rules' settings in range (the filters' sections
    validate themselves)."""
    for name in self.order:
        if name not in FILTERS:
            raise ConfigError(f"{key}.order: unknown filter '{name}' (known: {', '.join(FILTERS)})")
    if len(set(self.order)) != len(self.order):
        raise ConfigError(f"{key}.order: a filter is listed twice ({', '.join(self.order)})")
    check_ranges(self, key, left_open_unit=("max_user_share",))
    if self.corroborate is not None and self.corroborate < 2:
        raise ConfigError(f"{key}.corroborate: {self.corroborate} is not 2 or more (one user is no corroboration; "
                          "null turns it off)")


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
