"""Any OpenAI-compatible server (vLLM's own, our gateway, or a hosted judge) through the ``openai`` client.

Requests go out concurrently (``backend.concurrency``); a JSON schema is sent as ``response_format``
``json_schema``; an adapter is addressed by its served model name. ``logprobs`` uses vLLM's extensions
(``/tokenize`` and ``prompt_logprobs``), so it needs a vLLM server.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .base import BatchStream, Generation, Sampling, per_item


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg):
        from openai import OpenAI

        self.cfg = cfg
        self.client = OpenAI(base_url=cfg.base_url, api_key=cfg.api_key, timeout=cfg.request_timeout_s, max_retries=2)
        self._model = cfg.served_model or None

    @property
    def model(self) -> str:
        if self._model is None:
            models = self.client.models.list().data
            if not models:
                raise RuntimeError(f"{self.cfg.base_url} serves no model")
            self._model = models[0].id
        return self._model

    def check(self, key: str) -> None:
        """The server answers and serves the configured model, else ConfigError naming ``key`` (the config section)
        before any request: a judge that cannot be reached would turn every verdict into an unreadable one, and
        the filters drop a record on an unreadable verdict."""
        from ..errors import ConfigError

        try:
            ids = [m.id for m in self.client.models.list().data]
        except Exception as e:  # noqa: BLE001 - whatever the client raises, the server is not usable
            raise ConfigError(f"{key}.base_url: {self.cfg.base_url} does not answer ({type(e).__name__}: "
                              f"{str(e)[:200]}): start that server, or fix the address or {key}.api_key") from None
        if self._model is not None and self._model not in ids:
            raise ConfigError(f"{key}.served_model: {self._model!r} is not served at {self.cfg.base_url} (it "
                              f"serves: {', '.join(ids) or 'nothing'})")
        if not ids:
            raise ConfigError(f"{key}: {self.cfg.base_url} serves no model")
        self._model = self._model or ids[0]  # what :attr:`model` would list again
    def _one(self, messages, sampling: Sampling, schema, model: str, stop_repeats=None) -> Generation:
        kwargs = dict(model=model, messages=messages, temperature=sampling.temperature, top_p=sampling.top_p,
                      max_tokens=sampling.max_tokens)
        if schema is not None:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "output", "schema": schema, "strict": True}}
        elif stop_repeats is not None:  # vLLM's extension (finish_reason "repetition"); plain text only, as in-process
            lo, hi, count = stop_repeats
            kwargs["extra_body"] = {"repetition_detection": {"min_pattern_size": lo, "max_pattern_size": hi,
                                                             "min_count": count}}
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except Exception as e:  # a failed request is a failed generation with its reason, not a crashed stage
            return Generation("", f"error:{type(e).__name__}: {str(e)[:200]}")
        choice = resp.choices[0]
        usage = resp.usage
        return Generation(choice.message.content or "", choice.finish_reason or "stop",
                          usage.completion_tokens if usage else 0, usage.prompt_tokens if usage else 0)

    def chat(self, batch, sampling, schema=None, adapter=None, stop_repeats=None) -> list[Generation]:
        """``stop_repeats``: (min, max pattern tokens, repeats) sent as vLLM's ``repetition_detection`` with each
        plain-text request (a vLLM server only: other servers refuse the field)."""
        samplings, schemas = per_item(sampling, len(batch)), per_item(schema, len(batch))
        model = adapter or self.model
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(lambda i: self._one(batch[i], samplings[i], schemas[i], model, stop_repeats),
                                 range(len(batch))))

    def logprobs(self, contexts, completions, adapter=None) -> list[list[float]]:
        import httpx

        model = adapter or self.model
        root = self.cfg.base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"}
        out = []
        with httpx.Client(timeout=self.cfg.request_timeout_s, headers=headers) as http:
            for messages, completion in zip(contexts, completions):
                ctx = http.post(f"{root}/tokenize", json={"model": model, "messages": messages,
                                                          "add_generation_prompt": True}).raise_for_status().json()["tokens"]
                comp = http.post(f"{root}/tokenize", json={"model": model, "prompt": completion,
                                                           "add_special_tokens": False}).raise_for_status().json()["tokens"]
                resp = http.post(f"{root}/v1/completions", json={
                    "model": model, "prompt": ctx + comp, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0,
                }).raise_for_status().json()
                plp = resp["choices"][0]["prompt_logprobs"]
                ids = ctx + comp
                out.append([plp[j][str(ids[j])]["logprob"] for j in range(len(ctx), len(ids))])
        return out

    def stream(self, adapter: str | None = None) -> BatchStream:
        return BatchStream(self, adapter)

    def close(self) -> None:
        self.client.close()
