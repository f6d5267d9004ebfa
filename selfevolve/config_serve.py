"""Config sections of serving and promoting: ``serve`` (gateway + vLLM server) and ``gate`` (promotion and
deploy) (selfevolve/config.py assembles them into the one ``Config`` tree).

Each dataclass documents its defaults under each field and validates its own values (``validate(key)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigError, check_choice, check_ranges
from .memplan import check_parallel


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
    replicas: int = 1
    """vLLM servers ``selfevolve serve`` starts, on ``vllm_port``, ``vllm_port + 1``..., each with its own
    internal key; the gateway spreads requests over them (fewest in flight), checks them every
    ``health_interval_s`` and deploys / rolls back on all of them or none (selfevolve/gateway_pool.py). Each is a
    whole engine: on one GPU they share it (each takes ``gpu_memory_utilization``), on CPU they share the cores."""
    upstreams: list[str] = field(default_factory=list)
    """Already-running vLLM servers (``http://host:port``, started elsewhere with ``--enable-lora`` and
    ``--served-model-name base``) to use instead of starting any; ``replicas`` must stay 1. They must read the
    run's ``staged-adapters/`` folder at the same path (deploys load from there)."""
    upstream_key: str = ""
    """Bearer key of the ``upstreams`` (their ``--api-key``); ``SELFEVOLVE_UPSTREAM_KEY`` wins. Empty: none."""
    health_interval_s: float = 5.0
    """Seconds between health checks of each vLLM server (``GET /health``, and the live adapter still loaded).
    One that fails is out of service at once; one that answers again is brought to the live adapter first."""
    chat_key: str = ""
    """Bearer key for chat, feedback and models. Empty: ``SELFEVOLVE_CHAT_KEY`` from the environment, else one
    is generated and printed at start. (The environment variable wins over this value.)"""
    admin_key: str = ""
    """Bearer key for ``/admin/*`` (deploy, rollback, unload) and everything the chat key may do. Empty:
    ``SELFEVOLVE_ADMIN_KEY``, else generated and printed at start. (The environment variable wins.)"""
    consent_default: bool = False
    """Consent-to-train of an exchange that carries no ``X-Consent-Train`` header. False (opt-in): nothing a
    client sent is trained on unless it said so; consent is kept per message (selfevolve/store.py)."""
    startup_timeout_s: float = 300.0
    """Longest wait for vLLM to answer a real one-token generation after start."""
    request_timeout_s: float = 600.0
    """Gateway → vLLM read timeout per request (and per streamed chunk)."""
    drop_seed: bool = True
    """Remove a per-request sampling ``seed`` before forwarding (it kills the vLLM CPU engine)."""
    vllm_args: list[str] = field(default_factory=list)
    """Extra command-line arguments for the vLLM server, after the ones the fields below make."""
    borrow_priority: int = 0
    """Above 0: the round's requests through the served engine (``backend.use_server``) wait behind chats: the
    servers `selfevolve serve` starts run ``--scheduling-policy priority`` and iterate's requests carry this
    priority, chats 0 (vLLM: lower is sooner; a client cannot set its own). 0 (default): first come, first served,
    vLLM's default policy. Measured on the 2-core CPU box (docs/bench/borrow.md): chats during the round were no
    faster with priority 10 (p50 2.71 against 1.74 s); the round's wall time varies 3x with either policy (1289 to
    1433 s against 389 s), from the served CPU engine's spinning, not from the policy. Servers
    listed in ``upstreams`` were started elsewhere with a policy we cannot know: no priority."""
    gpu_memory_utilization: float = 0.9
    """vLLM server on GPU: share of each GPU's memory it takes at start (vLLM's own default, 0.9). A round on
    the same GPUs needs room beside it: iterate's engine (``backend.gpu_memory_utilization``) and training
    (selfevolve/memplan.py checks the plan at start and says what to change)."""
    tensor_parallel_size: int = 1
    """vLLM server: GPUs each layer is split over (``--tensor-parallel-size``)."""
    pipeline_parallel_size: int = 1
    """vLLM server: GPUs the layers are split over in stages (``--pipeline-parallel-size``)."""
    data_parallel_size: int = 1
    """vLLM server: engine replicas behind the one server (``--data-parallel-size``), each on
    tensor x pipeline GPUs."""
    enable_sleep_mode: bool = False
    """vLLM server on CUDA/ROCm/XPU: ``--enable-sleep-mode`` (weights offloaded, KV cache dropped on
    ``sleep(level=1)``, back on ``wake_up``). Refused on CPU."""
    plan_round: bool = True
    """At start, also check that a round (``make iterate``: its engine and training) fits beside the served
    engine on the same GPUs. False when iterate runs on other GPUs or another machine."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body the gateway reads (413 beyond, refused before reading when Content-Length says so).
    4 MiB holds a 128k-token conversation (~0.5 MB of text) several times over."""
    max_json_depth: int = 32
    """Deepest JSON nesting accepted (400 beyond). A chat request nests 5 deep, tool schemas ~10-20."""
    rate_limit_per_minute: float = 120.0
    """Sustained requests per minute per identity (a per-user key, or the shared chat key as a whole), token
    bucket; 429 with Retry-After beyond. 0: no rate limit. The admin key is never limited."""
    rate_limit_burst: int = 60
    """Requests an idle identity may send at once before ``rate_limit_per_minute`` applies."""
    max_concurrent_per_user: int = 8
    """Chat requests one identity may have in flight (a stream counts until it ends); 429 beyond. 0: no cap."""
    daily_request_quota: int = 0
    """Chat requests per identity per UTC day (in memory: a restart resets it); 429 until midnight UTC beyond.
    0: no quota."""

    def validate(self, key: str) -> None:
        for name in ("port", "vllm_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise ConfigError(f"{key}.{name}: must be a TCP port (1-65535), got {value!r}")
        check_ranges(self, key, positive=("startup_timeout_s", "request_timeout_s", "rate_limit_burst",
                                          "health_interval_s"),
                     non_negative=("rate_limit_per_minute", "max_concurrent_per_user", "daily_request_quota",
                                   "borrow_priority"))
        if not 1024 <= self.max_body_bytes <= 1 << 30:
            raise ConfigError(f"{key}.max_body_bytes: must be in [1024, 2**30], got {self.max_body_bytes!r}")
        if not 4 <= self.max_json_depth <= 500:  # 500: well under the JSON parser's own recursion guard
            raise ConfigError(f"{key}.max_json_depth: must be in [4, 500], got {self.max_json_depth!r}")
        if not self.host.strip():
            raise ConfigError(f"{key}.host: an empty address")
        self._validate_replicas(key)
        check_ranges(self, key, left_open_unit=("gpu_memory_utilization",))
        check_parallel(self, key)


    def _validate_replicas(self, key: str) -> None:
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool) or not 1 <= self.replicas <= 64:
            raise ConfigError(f"{key}.replicas: must be an integer in [1, 64], got {self.replicas!r}")
        if self.vllm_port + self.replicas - 1 > 65535:
            raise ConfigError(f"{key}.replicas: ports {self.vllm_port}..{self.vllm_port + self.replicas - 1} "
                              "go past 65535: lower vllm_port")
        if self.upstreams and self.replicas != 1:
            raise ConfigError(f"{key}: give replicas (servers started here) or upstreams (servers running "
                              "elsewhere), not both")
        seen = set()
        for url in self.upstreams:
            u = urlsplit(url) if isinstance(url, str) else None
            try:
                ok = u is not None and u.scheme in ("http", "https") and bool(u.hostname) and u.port is not None
            except ValueError:  # a port that is no number
                ok = False
            if not ok or u.path not in ("", "/") or u.query or u.fragment or u.username or u.password:
                raise ConfigError(f"{key}.upstreams: {url!r} is not a vLLM server address (http://host:port)")
            if url.rstrip("/") in seen:
                raise ConfigError(f"{key}.upstreams: {url!r} is listed twice")
            seen.add(url.rstrip("/"))


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
