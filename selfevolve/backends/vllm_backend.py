"""In-process vLLM engine: batched chat, JSON-schema structured output, LoRA by path, prompt log-probs.

Prompts are rendered with the model's own chat template here (not inside ``LLM.chat``) so that a prompt
longer than the context is answered with an ``error`` generation instead of failing the whole batch,
and so that ``logprobs`` can find where the completion starts.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .base import Generation, Sampling, per_item


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is caught later by vllm itself
        return True


_live_in_process = 0
"""In-process engines alive in this process. vLLM's parallel groups are per process: a second in-process engine
would share them and tear them down under the first when it closes (``pipeline model parallel group is not
initialized``), so while one is alive the next runs in vLLM's own processes."""


@contextmanager
def _in_process():
    """vLLM reads ``VLLM_ENABLE_V1_MULTIPROCESSING`` when an engine is built: set for this engine only, so that
    a `vllm serve` started later from this process (it inherits the environment) keeps its own default. The
    in-process engine core also caches vLLM's environment variables for good once started; uncached, the next
    engine built here reads them again."""
    from vllm import envs

    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old
        envs.disable_envs_cache()


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_path: str, cfg, max_model_len: int = 4096, *, slots):
        """``cfg``: a BackendConfig; ``slots``: the LoraSlotsConfig (max_rank, engine = this engine's slots)."""
        # vLLM's INFO lines drown our progress bar, and its WARNING level prints ~270 lines per start here (one
        # per fp32 weight cast to bf16, from the GGUF-converted checkpoint); errors still surface as exceptions.
        # VLLM_LOGGING_LEVEL=WARNING or INFO brings them back.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        cpu = _on_cpu()
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_gb))
        from vllm import LLM

        self.model_path = str(model_path)
        self.max_model_len = max_model_len
        kwargs = dict(
            model=self.model_path,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            enable_lora=True,
            max_lora_rank=slots.max_rank,
            max_loras=slots.engine,
            max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed,  # engine-wide: per-request seeds crash the CPU engine
            disable_log_stats=False,  # keeps get_metrics() (prefix-cache hits) available
        )
        if cfg.block_size:
            kwargs["block_size"] = cfg.block_size
        if not cpu:
            kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization,
                          tensor_parallel_size=cfg.tensor_parallel_size,
                          pipeline_parallel_size=cfg.pipeline_parallel_size, enable_sleep_mode=cfg.enable_sleep_mode)
        elif cfg.enable_sleep_mode:  # config validation cannot know the platform; vLLM's own error is vaguer
            from ..memplan import check_devices

            check_devices("backend", 1, 1, 1, True, None)
        global _live_in_process
        self.in_process = cpu and cfg.in_process == "auto" and _live_in_process == 0
        if self.in_process:
            kwargs["distributed_executor_backend"] = "uni"
        with _in_process() if self.in_process else nullcontext():
            self.llm = LLM(**kwargs)
        _live_in_process += self.in_process
        self.sleeping = False
        # Off CPU, and on CPU with our LoRA ops plugin in effect, prompt log-probs are scored in one batch.
        from ..vllm_cpu_lora import in_effect

        self.batched_logprobs = not cpu or in_effect()
        self.tokenizer = self.llm.get_tokenizer()
        self._lora_ids: dict[str, int] = {}
        self._requests = 0

    # ------------------------------------------------------------ helpers
    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        if path not in self._lora_ids:
            self._lora_ids[path] = len(self._lora_ids) + 1
        return LoRARequest(f"adapter-{self._lora_ids[path]}", self._lora_ids[path], path)

    def render(self, messages: list[dict]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    def _params(self, sampling: Sampling, schema: dict | None, stop_repeats: tuple[int, int, int] | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import RepetitionDetectionParams, RequestOutputKind, StructuredOutputsParams

        structured = StructuredOutputsParams(json=schema) if schema is not None else None
        repeats = None
        if stop_repeats is not None:
            lo, hi, count = stop_repeats
            repeats = RepetitionDetectionParams(min_pattern_size=lo, max_pattern_size=hi, min_count=count)
        # FINAL_ONLY: the stream reads finished requests only; the default (CUMULATIVE) builds an output object
        # with the whole text so far for every running request at every step, which LLM.chat does not pay.
        return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, structured_outputs=structured,
                              repetition_detection=repeats, output_kind=RequestOutputKind.FINAL_ONLY)

    # ------------------------------------------------------------ protocol
    def stream(self, adapter: str | None = None) -> "VLLMStream":
        return VLLMStream(self, adapter)

    def chat(self, batch, sampling: Sampling, schema=None, adapter=None, stop_repeats=None) -> list[Generation]:
        samplings, schemas = per_item(sampling, len(batch)), per_item(schema, len(batch))
        stream = self.stream(adapter)
        stream.stop_repeats = stop_repeats
        for i, messages in enumerate(batch):
            stream.submit(i, messages, samplings[i], schemas[i])
        results: list[Generation | None] = [None] * len(batch)
        for i, gen in stream:
            results[i] = gen
        return results  # type: ignore[return-value]

    def logprobs(self, contexts, completions, adapter=None) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, spans = [], []
        for messages, completion in zip(contexts, completions):
            ctx = self.render(messages)
            comp = self.tokenizer.encode(completion, add_special_tokens=False)
            ids = (ctx + comp)[: self.max_model_len - 1]
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            spans.append((len(ctx), len(ids)))
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        lora = self._lora(adapter)
        if self.batched_logprobs:
            outs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
        else:
            # vLLM's own CPU LoRA ops die ("einsum(): subscript b has size …") when several prompts with
            # prompt_logprobs share a step; one at a time they are exact (selfevolve/vllm_cpu_lora.py fixes it).
            outs = [self.llm.generate([p], params, use_tqdm=False, lora_request=lora)[0] for p in prompts]
        result = []
        for out, (start, end) in zip(outs, spans):
            ids = out.prompt_token_ids
            result.append([out.prompt_logprobs[j][ids[j]].logprob for j in range(start, end)])
        return result

    def sleep(self) -> None:
        """Free the GPU for training (``backend.enable_sleep_mode``): level 1 offloads the weights to CPU RAM and
        drops the KV cache (prefix cache included); :meth:`wake_up` brings them back without a restart."""
        self.llm.sleep(level=1)
        self.sleeping = True

    def wake_up(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def close(self) -> None:
        import gc

        global _live_in_process
        if not hasattr(self, "llm"):
            return  # closed already
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        _live_in_process -= self.in_process
        # An in-process engine core freezes the garbage collector's heap once started (vLLM's serving-time
        # optimisation), itself included: unfrozen, its reference cycles and the KV cache go (measured: 3.4 GiB
        # resident with the engine, 1.3 GiB after, the same after each of three engines).
        gc.unfreeze()
        gc.collect()


class VLLMStream:
    """Requests go straight into the engine and come back as each finishes (``LLMEngine.step``), so work
    submitted meanwhile — the next turns, a retry — keeps the continuous batch full instead of waiting
    for the slowest request of a fixed batch."""

    stop_repeats: tuple[int, int, int] | None = None
    """(min, max pattern tokens, repeats): a plain-text request whose output ends in a token pattern of that size
    repeated that many times back to back stops there with finish_reason ``repetition`` (vLLM's
    repetition_detection). JSON requests are left alone: their schema bounds them, and a JSON stopped early cannot
    parse (docs/bench/revise.md)."""

    def __init__(self, backend: VLLMBackend, adapter: str | None):
        self.backend = backend
        self.engine = backend.llm.llm_engine
        self.lora = backend._lora(adapter)
        self._keys: dict[str, object] = {}
        self._ready: list[tuple] = []

    def submit(self, key, messages, sampling: Sampling, schema=None) -> None:
        from vllm.inputs import TokensPrompt

        ids = self.backend.render(messages)
        if len(ids) + 1 >= self.backend.max_model_len:
            self._ready.append((key, Generation("", "error:prompt_too_long", 0, len(ids))))
            return
        self.backend._requests += 1
        rid = f"se-{self.backend._requests}"
        # Outputs carry the id we pass (add_request returns an internal one).
        self.engine.add_request(rid, TokensPrompt(prompt_token_ids=ids),
                                self.backend._params(sampling, schema, self.stop_repeats if schema is None else None),
                                lora_request=self.lora)
        self._keys[rid] = key

    def __iter__(self):
        while self._ready or self._keys:
            while self._ready:
                yield self._ready.pop(0)
            if not self._keys:
                continue
            if not self.engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM engine is idle but {len(self._keys)} requests never finished")
            for out in self.engine.step():
                if not out.finished or out.request_id not in self._keys:
                    continue
                o = out.outputs[0]
                yield self._keys.pop(out.request_id), Generation(
                    o.text, o.finish_reason or "stop", len(o.token_ids), len(out.prompt_token_ids or []))
