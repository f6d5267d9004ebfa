"""Which routes of the internal vLLM server answer without the internal key (docs/bench/vllm_routes.md).

Starts vLLM as `selfevolve serve` starts it (selfevolve/serve.py VLLMServer), with the guard (default) or, with
--no-guard, as it was started before selfevolve/vllm_guard.py (same arguments less ``--middleware ...
--disable-fastapi-docs``), asks every route of ``VLLM_ROUTES`` without the key, then tries the two doors for real:
a generation through ``POST /invocations`` and loading an adapter through ``POST /adapters``. Run it under
``flock /tmp/selfevolve-model.lock`` (it loads the model). Prints JSON.

    python scripts/bench_vllm_routes.py [--no-guard] [--adapter PEFT_FOLDER] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfevolve.serve import VLLMServer, free_port  # noqa: E402
from selfevolve.vllm_guard import VLLM_ROUTES  # noqa: E402


class Unguarded(VLLMServer):
    """The server as started before the guard: vLLM's own key check only."""

    def command(self):
        argv = super().command()
        return argv[: argv.index("--middleware")]

    def unguarded_routes(self, timeout: float = 5.0) -> list[str]:
        return []  # readiness must not refuse it: it is what is measured


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-guard", action="store_true")
    ap.add_argument("--adapter", default="", help="a PEFT adapter folder to try loading through POST /adapters")
    ap.add_argument("--model", default=str(ROOT / ".cache/models/SmolLM2-135M-Instruct"))
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    cls = Unguarded if a.no_guard else VLLMServer
    server = cls(a.model, port=free_port(), max_model_len=1024)
    t0 = time.time()
    out: dict = {"guard": not a.no_guard}
    with server:
        out["ready_s"] = round(time.time() - t0, 1)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            routes = {}
            for method, path in VLLM_ROUTES:
                r = c.request(method, path.replace("{", "").replace("}", ""), json={} if method == "POST" else None)
                routes[f"{method} {path}"] = r.status_code
            out["routes"] = routes
            out["answered_without_key"] = sorted(k for k, v in routes.items() if v not in (401, 404))
            gen = c.post("/invocations", json={"model": "base", "prompt": "The capital of France is", "max_tokens": 5,
                                               "temperature": 0})
            out["invocations"] = [gen.status_code, gen.text[:200]]
            if a.adapter:
                load = c.post("/adapters", json={"name": "unchecked", "src": a.adapter})
                out["adapters_load"] = [load.status_code, load.text[:200]]
            models = c.get("/v1/models", headers=server.headers).json()["data"]
            out["served_after"] = [m["id"] for m in models]
    print(json.dumps(out, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
