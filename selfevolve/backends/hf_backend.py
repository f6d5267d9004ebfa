"""transformers backend for machines without vLLM (other CPUs, Macs): batched ``generate``, JSON schemas
enforced by xgrammar's logits processor, LoRA adapters through PEFT, log-probs from one forward pass.

Slower than vLLM (no continuous batching, no prefix cache) but the same protocol and the same outputs.
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import BatchStream, Generation, Sampling, per_item


class HFBackend:
    name = "hf"

    def __init__(self, model_path: str, seed: int = 0, batch_size: int = 8):
        import torch

        from ..hf import load_model, load_tokenizer

        torch.manual_seed(seed)
        self.torch = torch
        self.tokenizer = load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"  # decoder-only batches are padded on the left
        self.base = load_model(model_path, dtype="float32").eval()
        self.peft = None
        self.batch_size = batch_size
        self._grammars: dict[str, object] = {}
        self._compiler = None

    # ------------------------------------------------------------ helpers
    def _model(self, adapter: str | None):
        """The model to run and a context manager that selects the adapter (or disables all of them)."""
        import contextlib

        if adapter is None:
            return (self.peft or self.base), (self.peft.disable_adapter() if self.peft else contextlib.nullcontext())
        from peft import PeftModel

        name = "a" + str(abs(hash(str(Path(adapter).resolve()))))
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, adapter, adapter_name=name).eval()
        elif name not in self.peft.peft_config:
            self.peft.load_adapter(adapter, adapter_name=name)
        self.peft.set_adapter(name)
        return self.peft, contextlib.nullcontext()

    def _grammar(self, schema: dict):
        import xgrammar as xgr

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.base.config.vocab_size)
                self._compiler = xgr.GrammarCompiler(info)
            # any_whitespace=False: otherwise a small model can emit whitespace until max_tokens.
            self._grammars[key] = self._compiler.compile_json_schema(schema, any_whitespace=False)
        return self._grammars[key]

    def _render(self, messages):
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # ------------------------------------------------------------ protocol
    def chat(self, batch, sampling, schema=None, adapter=None) -> list[Generation]:
        samplings, schemas = per_item(sampling, len(batch)), per_item(schema, len(batch))
        groups: dict[tuple, list[int]] = {}
        for i in range(len(batch)):
            groups.setdefault((samplings[i], json.dumps(schemas[i], sort_keys=True)), []).append(i)
        results: list[Generation | None] = [None] * len(batch)
        model, ctx = self._model(adapter)
        with ctx:
            for (samp, _), idx in groups.items():
                for k in range(0, len(idx), self.batch_size):
                    part = idx[k:k + self.batch_size]
                    gens = self._generate(model, [batch[i] for i in part], samp, schemas[part[0]])
                    for i, g in zip(part, gens):
                        results[i] = g
        return results  # type: ignore[return-value]

    def _generate(self, model, batch, sampling: Sampling, schema) -> list[Generation]:
        torch = self.torch
        enc = self.tokenizer([self._render(m) for m in batch], return_tensors="pt", padding=True,
                             add_special_tokens=False)
        kwargs = dict(max_new_tokens=sampling.max_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False)
        if schema is not None:
            import xgrammar as xgr

            kwargs["logits_processor"] = [xgr.contrib.hf.LogitsProcessor(self._grammar(schema))]
        with torch.no_grad():
            out = model.generate(**enc, **kwargs)
        eos = {self.tokenizer.eos_token_id, *(([model.generation_config.eos_token_id] if isinstance(
            model.generation_config.eos_token_id, int) else model.generation_config.eos_token_id or []))}
        results = []
        width = enc["input_ids"].shape[1]
        for row, mask in zip(out, enc["attention_mask"]):
            new = row[width:].tolist()
            stopped = next((j for j, t in enumerate(new) if t in eos), None)
            tokens = new if stopped is None else new[:stopped]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Generation(text, "length" if stopped is None else "stop", len(tokens), int(mask.sum())))
        return results

    def logprobs(self, contexts, completions, adapter=None) -> list[list[float]]:
        torch = self.torch
        model, ctx = self._model(adapter)
        result = []
        with ctx, torch.no_grad():
            for messages, completion in zip(contexts, completions):
                prefix = self.tokenizer(self._render(messages), add_special_tokens=False)["input_ids"]
                comp = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prefix + comp])
                logits = model(input_ids=ids).logits[0, :-1].float()
                logp = torch.log_softmax(logits, dim=-1)
                targets = ids[0, 1:]
                token_lp = logp.gather(1, targets[:, None])[:, 0]
                result.append(token_lp[len(prefix) - 1:].tolist())
        return result

    def stream(self, adapter: str | None = None) -> BatchStream:
        return BatchStream(self, adapter)

    def close(self) -> None:
        self.base = self.peft = None
