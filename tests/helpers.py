"""Helpers the tests and scripts/bench_deploy.py share (not part of the package: nothing in selfevolve/ needs them).

scripts/bench_deploy.py puts tests/ on ``sys.path`` to import them, rather than keeping a copy.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path


def build_random_adapter(model_path: str, out: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter with random (non-zero) weights, so its answers differ from the base model's:
    what the deploy tests and scripts/bench_deploy.py load, without training one."""
    import torch
    from peft import LoraConfig, get_peft_model

    from selfevolve.hf import load_model

    torch.manual_seed(seed)
    # dtype "auto": the checkpoint's own, as from_pretrained's default (the adapter is saved in it)
    model = get_peft_model(load_model(model_path, dtype="auto"),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                      init_lora_weights=False))
    model.save_pretrained(str(out))
    return Path(out)


class GatewayThread:
    """uvicorn serving an app on 127.0.0.1 in a background thread (tests, benchmarks). ``stop`` always joins."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        from selfevolve.serve import free_port

        self.port = port or free_port(host)
        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "GatewayThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(10)

    def __enter__(self) -> "GatewayThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
