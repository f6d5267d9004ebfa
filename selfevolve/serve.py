"""The vLLM OpenAI server as a child process: start, wait until it really generates, health, stop.

The server binds 127.0.0.1 on an internal port and requires an internal API key (``VLLM_API_KEY``, made
per start, never printed) that only the gateway holds, so clients reach it through the gateway only. vLLM's own
key check covers /v1-style paths only (``/invocations`` generates and ``POST /adapters`` loads adapters without
it), so the server runs with selfevolve/vllm_guard.py's middleware: only the routes selfevolve calls, each with
the key; and :meth:`VLLMServer.wait_ready` probes every route vLLM 0.32 has without the key and stops the server
if one answers that the guard did not refuse. Its environment cannot open more: dev-mode routes are off, and the
SageMaker layer vLLM bundles gets an empty folder instead of /opt/ml/model (it imports model.py found there) and
none of its handler variables. Runtime LoRA loading is on (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): the gateway's
deploy loads checked copies of adapters by name.

The process gets its own process group; ``stop`` terminates the group and kills it after a timeout, and on Linux
the child also gets SIGTERM when the thread that started it dies (``die_with_parent``).

Never send a per-request ``seed`` to the CPU engine: it kills it (the gateway drops it, ``serve.drop_seed``).
"""
from __future__ import annotations

import atexit
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .vllm_guard import ALLOWED, GUARD_HEADER, VLLM_ROUTES

BASE_NAME = "base"
"""Served name of the base model (``--served-model-name``): ``model="base"`` is the model without adapter."""


ENV_DROPPED = ("SAGEMAKER_", "CUSTOM_FASTAPI_", "CUSTOM_SCRIPT_FILENAME", "VLLM_SERVER_DEV_MODE",
               "VLLM_DEBUG_LOG_API_SERVER_RESPONSE")
"""Environment variables (prefixes) removed before vLLM starts: each would add routes, load code or log answers."""


class ServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class VLLMServer:
    """One vLLM OpenAI-compatible server process. Use as a context manager, or ``start``/``wait_ready``/``stop``."""

    def __init__(self, model_path: str | Path, *, port: int, max_lora_rank: int = 16, max_loras: int = 4,
                 max_model_len: int = 4096, kvcache_gb: int = 2, seed: int = 0, extra_args: list[str] | None = None,
                 log_path: str | Path | None = None, api_key: str | None = None, die_with_parent: bool = True,
                 stop_timeout_s: float = 30.0, env: dict | None = None):
        self.model_path = str(model_path)
        self.port = port
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.max_model_len = max_model_len
        self.kvcache_gb = kvcache_gb
        self.seed = seed
        self.extra_args = list(extra_args or [])
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.die_with_parent = die_with_parent
        self.stop_timeout_s = stop_timeout_s
        self.env = dict(env or {})  # e.g. the CPU cores of one replica (selfevolve/gateway.py model_servers)
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._empty: tempfile.TemporaryDirectory | None = None

    @classmethod
    def from_config(cls, cfg, log_path: str | Path | None = None, port: int | None = None,
                    env: dict | None = None) -> "VLLMServer":
        from .memplan import serve_engine_args  # the serve.* engine fields, after the GPU memory plan is checked

        s = cfg.serve
        # iterate's borrowed requests wait behind chats (serve.borrow_priority)
        policy = ["--scheduling-policy", "priority"] if s.borrow_priority else []
        return cls(cfg.model.path, port=port or s.vllm_port, max_lora_rank=cfg.lora_slots.max_rank,
                   max_loras=cfg.lora_slots.serve,
                   max_model_len=cfg.model.max_model_len, kvcache_gb=cfg.backend.cpu_kvcache_gb,
                   seed=cfg.backend.seed, extra_args=[*serve_engine_args(cfg), *policy, *s.vllm_args],
                   log_path=log_path, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
                "--served-model-name", BASE_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
                "--max-model-len", str(self.max_model_len), "--enable-prefix-caching", "--seed", str(self.seed),
                *self.extra_args,  # ours last: argparse keeps the last value, and --middleware appends
                "--middleware", "selfevolve.vllm_guard.RequireKey", "--disable-fastapi-docs"]

    def environment(self) -> dict:
        """The server's environment: ours, less :data:`ENV_DROPPED`, plus the key and the LoRA settings."""
        env = {k: v for k, v in {**os.environ, **self.env}.items() if not k.startswith(ENV_DROPPED)}
        if self._empty is None:
            self._empty = tempfile.TemporaryDirectory(prefix="vllm-sagemaker-")  # 0700, stays empty
        env.update(VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", VLLM_CPU_KVCACHE_SPACE=str(self.kvcache_gb),
                   VLLM_API_KEY=self.api_key, VLLM_SERVER_DEV_MODE="0", SAGEMAKER_MODEL_PATH=self._empty.name)
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        return env

    def start(self) -> "VLLMServer":
        if self.proc is not None:
            raise ServerError("server already started")
        env = self.environment()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_die_with_parent if self.die_with_parent else None)
        atexit.register(self.stop)
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()[-20000:]
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def generate_ok(self, timeout: float = 30.0, model: str = BASE_NAME) -> bool:
        """True when the server answers a real one-token generation."""
        try:
            r = httpx.post(f"{self.url}/v1/completions", headers=self.headers, timeout=timeout,
                           json={"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0})
            return r.status_code == 200 and bool(r.json().get("choices"))
        except (httpx.HTTPError, ValueError):
            return False

    def health(self, timeout: float = 5.0) -> bool:
        """Process alive and ``/health`` answers 200 (cheap; :meth:`generate_ok` is the real check)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/health", headers=self.headers, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 300.0, poll_s: float = 1.0) -> "VLLMServer":
        """Block until a one-token generation answers; raise with the log tail if the process exits or time runs out."""
        if self.proc is None:
            raise ServerError("server not started")
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"vLLM exited with code {code} during startup; log {self.log_path}:\n{self.log_tail()}")
            if self.health(timeout=2.0) and self.generate_ok(timeout=max(1.0, min(30.0, deadline - time.monotonic()))):
                open_routes = self.unguarded_routes()
                if open_routes:
                    self.stop()
                    raise ServerError("vLLM answers routes the guard should refuse (selfevolve/vllm_guard.py): "
                                      + "; ".join(open_routes) + " — not serving")
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"vLLM not ready after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(poll_s)

    def unguarded_routes(self, timeout: float = 5.0) -> list[str]:
        """Every route vLLM 0.32 has (and one it has not), asked without the key, and those we do not use asked
        with it: ``METHOD path -> status`` of each the guard did not refuse (empty: the port is closed to all
        but the key holder, on the routes selfevolve uses)."""
        found = []
        with httpx.Client(base_url=self.url, timeout=timeout) as c:
            for method, path in (*VLLM_ROUTES, ("GET", "/no-such-route")):
                tries = [{}] + ([self.headers] if (method, path) not in ALLOWED else [])
                for headers in tries:
                    r = c.request(method, path.replace("{", "").replace("}", ""), headers=headers,
                                  json={} if method in ("POST", "PUT") else None)
                    if r.headers.get(GUARD_HEADER) is None or r.status_code not in (401, 404):
                        found.append(f"{method} {path}{' (with key)' if headers else ''} -> {r.status_code}")
        return found

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout`` (default ``stop_timeout_s``); idempotent."""
        timeout = self.stop_timeout_s if timeout is None else timeout
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if proc is not None:
            try:  # children left in the group (engine core) after the leader exited
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._empty is not None:
            self._empty.cleanup()
            self._empty = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "VLLMServer":
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
