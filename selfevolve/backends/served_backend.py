"""The round's generation through `selfevolve serve`'s engine (issue 15): no second engine beside the served one.

``backend.kind: vllm`` with ``backend.use_server: auto`` (the default) and this run's server up (its serve.json
and admin key, written by selfevolve/gateway.py, and /health answering) → :class:`ServedBackend`, else the
in-process engine as before. It speaks to the gateway's admin engine routes (selfevolve/gateway_engine.py):
capture-free, the admin key's. An adapter (compare's candidate, a round's adapter) is loaded there under a private
name on first use, checked like a deploy, and unloaded when the backend closes.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import httpx

from ..gateway_pool import KEEPALIVE_S
from .base import LoopStopStream
from .openai_backend import OpenAIBackend


class ServedBackendError(RuntimeError):
    """The served engine refused or failed an adapter load (the message says why)."""


def find_server(run, timeout_s: float = 3.0) -> tuple[str, str] | None:
    """(gateway URL, admin key) when this run's `selfevolve serve` is up, else None. A stale serve.json (the
    server died without removing it) is no server: /health must answer with a model server in service."""
    try:
        url = json.loads(run.serve_info.read_text())["url"]
        key = run.admin_key.read_text().strip()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        r = httpx.get(f"{url}/health", timeout=timeout_s)
        ok = r.status_code == 200 and r.json().get("vllm")
    except (httpx.HTTPError, ValueError):
        return None
    return (url, key) if ok and key else None


class ServedBackend(OpenAIBackend):
    """OpenAI-compatible calls to ``<gateway>/admin/engine/v1`` with the admin key; ``adapter`` is a folder path
    as for the in-process engine (loaded there under a private name), None the base model."""

    name = "served"

    def __init__(self, url: str, admin_key: str, cfg):
        super().__init__(replace(cfg, base_url=f"{url.rstrip('/')}/admin/engine/v1", api_key=admin_key,
                                 served_model="base"))
        self.url = url.rstrip("/")
        # idle connections dropped before the gateway's server closes them (uvicorn: 5 s, as vLLM's), or a load
        # could go out on one being closed; the OpenAI client's retries cover the chat calls
        self._admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {admin_key}"},
                                   timeout=cfg.request_timeout_s, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S))
        self._names: dict[str, str] = {}  # adapter folder → its private name on the server

    def _served_name(self, adapter: str | None) -> str | None:
        if adapter is None:
            return None
        path = str(Path(adapter).resolve())
        if path not in self._names:
            r = self._admin.post("/admin/engine/adapters/load", json={"path": path})
            if r.status_code != 200:
                raise ServedBackendError(f"the served engine at {self.url} refused adapter {path}: "
                                         f"HTTP {r.status_code}: {r.text[:500]}")
            self._names[path] = r.json()["name"]
        return self._names[path]

    def chat(self, batch, sampling, schema=None, adapter=None, stop_repeats=None):
        return super().chat(batch, sampling, schema=schema, adapter=self._served_name(adapter),
                            stop_repeats=stop_repeats)

    def stream(self, adapter: str | None = None) -> LoopStopStream:
        return LoopStopStream(self, adapter)

    def logprobs(self, contexts, completions, adapter=None):
        return super().logprobs(contexts, completions, adapter=self._served_name(adapter))

    def close(self) -> None:
        """Unload what this backend loaded (a failure is only reported: the server prunes nothing else)."""
        for path, name in list(self._names.items()):
            try:
                r = self._admin.post("/admin/engine/adapters/unload", json={"name": name})
                if r.status_code not in (200, 404):
                    print(f"served engine: could not unload {name} ({path}): HTTP {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as e:
                print(f"served engine: could not unload {name} ({path}): {e}")
            self._names.pop(path, None)
        self._admin.close()
        super().close()
