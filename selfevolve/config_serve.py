"""Config sections of serving and promoting: ``serve`` (gateway + vLLM server) and ``gate`` (promotion and
deploy) (selfevolve/config.py assembles them into the one ``Config`` tree).

Each dataclass documents its defaults under each field and validates its own values (``validate(key)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError, check_choice, check_ranges


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
    max_perplexity_rise: float = 2.0
    """... and the candidate's perplexity of held-out human text is at most this times the live one's (drift).
    Training on a few dozen terse answers raises it even when nothing breaks: measured on the teach chats, ×1.42
    for the default recipe (kept 6/6), ×2.5–5 for 10–20 epochs (kept 6/6 too, but the model's text distribution
    moved far). 2 admits the default recipe with margin and blocks the over-trained ones."""
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
