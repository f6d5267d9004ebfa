"""A scripted backend for unit tests of orchestration (never for integration tests or demos)."""
from __future__ import annotations

from selfevolve.backends.base import Generation


class ScriptedBackend:
    """Answers each request with ``script(messages, schema, n_call)`` -> str or Generation.

    ``n_call`` counts earlier requests with the same messages, so a script can fail first and succeed
    on the retry. Every request is logged in ``self.calls``."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.calls: list[tuple[list[dict], dict | None]] = []
        self._seen: dict[str, int] = {}

    def chat(self, batch, sampling, schema=None, adapter=None):
        from selfevolve.backends.base import per_item

        out = []
        for messages, schema in zip(batch, per_item(schema, len(batch))):
            key = repr(messages)
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
            self.calls.append((messages, schema))
            result = self.script(messages, schema, n)
            out.append(result if isinstance(result, Generation) else Generation(result, "stop", len(result.split())))
        return out

    def stream(self, adapter=None):
        from selfevolve.backends.base import BatchStream

        return BatchStream(self, adapter)

    def logprobs(self, contexts, completions, adapter=None):
        return [[-1.0] * max(1, len(c.split())) for c in completions]

    def close(self):
        pass
