"""In-process vLLM engine: batched chat, JSON-schema structured output, LoRA by path, prompt log-probs.

Prompts are rendered with the model's own chat template here (not inside ``LLM.chat``) so that a prompt
longer than the context is answered with an ``error`` generation instead of failing the whole batch,
and so that ``logprobs`` can find where the completion starts.
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import Generation, Sampling, per_item


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is caught later by vllm itself
        return True


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_path: str, cfg, max_model_len: int = 4096):
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
            max_lora_rank=cfg.max_lora_rank,
            max_loras=cfg.max_loras,
            max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed,  # engine-wide: per-request seeds crash the CPU engine
            disable_log_stats=False,  # keeps get_metrics() (prefix-cache hits) available
        )
        if not cpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._lora_ids: dict[str, int] = {}

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

    def _params(self, sampling: Sampling, schema: dict | None):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=schema) if schema is not None else None
        return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, structured_outputs=structured)

    # ------------------------------------------------------------ protocol
    def chat(self, batch, sampling: Sampling, schema=None, adapter=None) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        samplings, schemas = per_item(sampling, len(batch)), per_item(schema, len(batch))
        results: list[Generation | None] = [None] * len(batch)
        prompts, where = [], []
        for i, messages in enumerate(batch):
            ids = self.render(messages)
            if len(ids) + 1 >= self.max_model_len:
                results[i] = Generation("", "error:prompt_too_long", 0, len(ids))
                continue
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            where.append(i)
        if prompts:
            params = [self._params(samplings[i], schemas[i]) for i in where]
            outs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora(adapter))
            for i, out in zip(where, outs):
                o = out.outputs[0]
                results[i] = Generation(o.text, o.finish_reason or "stop", len(o.token_ids), len(out.prompt_token_ids))
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
        outs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora(adapter))
        result = []
        for out, (start, end) in zip(outs, spans):
            ids = out.prompt_token_ids
            result.append([out.prompt_logprobs[j][ids[j]].logprob for j in range(start, end)])
        return result

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()
