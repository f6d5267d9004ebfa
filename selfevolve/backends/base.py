"""The backend protocol and the small value types it speaks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..stage import StageError


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

    def stream(self, adapter: str | None = None) -> "Stream":
        """A submit/iterate queue: requests submitted while iterating join the same engine batch."""
        ...

    def close(self) -> None: ...


class Stream(Protocol):
    def submit(self, key, messages: list[dict], sampling: Sampling, schema: dict | None = None) -> None: ...

    def __iter__(self):  # yields (key, Generation) as requests finish, until none is left
        ...


class BatchStream:
    """The generic stream for backends without continuous batching: everything submitted so far goes out
    as one ``chat`` call; requests submitted while its results are consumed form the next call."""

    def __init__(self, backend, adapter: str | None = None):
        self.backend, self.adapter = backend, adapter
        self._pending: list[tuple] = []

    def submit(self, key, messages, sampling, schema=None) -> None:
        self._pending.append((key, messages, sampling, schema))

    def __iter__(self):
        while self._pending:
            todo, self._pending = self._pending, []
            for t, gen in zip(todo, self._call(todo)):
                yield t[0], gen

    def _call(self, todo: list[tuple]) -> list:
        return self.backend.chat([t[1] for t in todo], [t[2] for t in todo], schema=[t[3] for t in todo],
                                 adapter=self.adapter, **self._options())

    def _options(self) -> dict:
        """More keyword arguments for the backend's ``chat`` (none here)."""
        return {}


class LoopStopStream(BatchStream):
    """A :class:`BatchStream` for backends with vLLM behind them (served, Ray): their ``chat`` takes
    ``stop_repeats``, so answers that loop stop where the loop shows, as on the in-process stream (set by
    selfevolve/revise_schedule.py)."""

    stop_repeats: tuple[int, int, int] | None = None

    def _options(self) -> dict:
        return {"stop_repeats": self.stop_repeats}


def per_item(value, n: int) -> list:
    """Broadcast a batch-wide ``sampling``/``schema`` argument to one value per item."""
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"{len(value)} per-item values for a batch of {n}")
        return value
    return [value] * n


class RequestsFailed(StageError):
    """Requests to a model failed for another reason than their item (a server gone, a timeout, a 5xx): the stage
    stops and a rerun asks again, instead of reading a failed request as a verdict or a sample."""


ITEM_ERRORS = ("error:prompt_too_long", "error:BadRequestError")
"""Failed requests that are about their item alone (a prompt too long): read as that item's unusable output."""


def chat_all(backend, batch: list[list[dict]], sampling, schema, who: str) -> list[Generation]:
    """``backend.chat``; RequestsFailed (naming ``who``) when a request failed for another reason than its item."""
    gens = backend.chat(batch, sampling, schema=schema)
    failed = [g.finish_reason for g in gens
              if g.finish_reason.startswith("error:") and not g.finish_reason.startswith(ITEM_ERRORS)]
    if failed:
        raise RequestsFailed(f"{who}: {len(failed)} of {len(gens)} requests failed ({failed[0][6:206]}); nothing "
                             "was decided on them: rerun when it answers")
    return gens
