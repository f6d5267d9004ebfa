"""The backend protocol and the small value types it speaks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    output_tokens: int = 0
    prompt_tokens: int = 0


@runtime_checkable
class Backend(Protocol):
    name: str

    def chat(
        self,
        batch: list[list[dict]],
        sampling: Sampling | list[Sampling],
        schema: dict | None | list[dict | None] = None,
        adapter: str | None = None,
    ) -> list[Generation]:
        """One generation per message list, in order. ``schema``: constrain output to this JSON schema.
        ``sampling`` and ``schema`` are one value for the batch or one per item (so different kinds of
        request still share one engine batch). ``adapter``: path (vllm, hf) or served name (openai) of a
        LoRA adapter; None = base model."""
        ...

    def logprobs(self, contexts: list[list[dict]], completions: list[str], adapter: str | None = None) -> list[list[float]]:
        """Log-probability of each token of ``completions[i]`` as the assistant's reply to ``contexts[i]``."""
        ...

    def close(self) -> None: ...


def per_item(value, n: int) -> list:
    """Broadcast a batch-wide ``sampling``/``schema`` argument to one value per item."""
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"{len(value)} per-item values for a batch of {n}")
        return value
    return [value] * n
