"""How the revise stage's calls go through the engine: every turn's calls streamed through one backend stream,
bad outputs asked again, each finished turn turned into its record (selfevolve/revise.py journals them)."""
from __future__ import annotations

from .backends.base import Backend, Sampling
from .prompts import OutputError, get_strategy, parse_json
from .records import CUT, revision

# Answers that loop end where the loop shows, not at max_tokens: an n-gram of 4–64 tokens repeated 3 times back
# to back (vLLM's repetition_detection, finish_reason "repetition"; plain-text calls only; engines without it run
# to the cap). Measured by scripts/bench_revise_loops.py on conversations the throughput bench does not time
# (docs/bench/revise.md): it stopped 9 of 10 answers that ran to the cap, saving 14% of output tokens, and 0 of 214
# answers that finished on their own. A loop stopped early is recorded like one cut at the cap (truncated; curate
# drops it).
STOP_REPEATS = (4, 64, 3)


def check_output(gen, schema: dict | None, keep_truncated: bool = False) -> str | None:
    """Why a generation can't be used (None when it can). ``keep_truncated``: plain text cut at the token cap (or
    at a loop, :data:`STOP_REPEATS`) is usable as a record (marked truncated; curate drops it) rather than a reason
    to ask again."""
    if keep_truncated and gen.finish_reason in CUT and schema is None and gen.text.strip():
        return None
    if gen.finish_reason != "stop":
        return f"finish_reason={gen.finish_reason}"
    if not gen.text.strip():
        return "empty output"
    if schema is not None:
        try:
            parse_json(gen.text, schema)
        except OutputError as e:
            return str(e)
    return None


class _Turn:
    """The state of one (conversation, turn) while its calls are in flight."""

    def __init__(self, conv: dict, t: int, calls: dict[str, list[dict]]):
        self.conv, self.t, self.calls = conv, t, calls
        self.outputs: dict[str, str] = {}
        self.attempt: dict[str, int] = dict.fromkeys(calls, 0)
        self.gave_up: set[str] = set()
        self.reason: str | None = None
        self.tokens = 0
        self.truncated = False


def revise_turns(items: list[tuple[dict, int]], backend: Backend, cfg, model: str = "",
                 on_record=None) -> list[dict]:
    """Revise the given (conversation, turn) pairs; one record per pair, ok or failed, in input order.

    All calls go through one backend stream: up to ``cfg.max_in_flight`` turns are in the engine at
    once, a finished turn makes room for the next, and a bad output is asked again at once (with the
    temperature raised a little, since identical sampling tends to repeat the same bad output).
    ``on_record(record)`` sees each record as soon as its turn is done (the journal hooks in here)."""
    return _TurnStream(items, backend, cfg, model, on_record).run()


class _TurnStream:
    """The turns of one :func:`revise_turns` call in one backend stream: submitting their calls, retrying bad
    outputs, and turning each finished turn into its record."""

    def __init__(self, items: list[tuple[dict, int]], backend: Backend, cfg, model: str, on_record):
        self.items, self.cfg, self.model, self.on_record = items, cfg, model, on_record
        self.strategy = get_strategy(cfg.strategy)
        self.stream = backend.stream()
        if hasattr(self.stream, "stop_repeats"):  # vLLM in-process, served or on Ray; hf and openai have no such stop
            self.stream.stop_repeats = STOP_REPEATS
        self.results: list[dict | None] = [None] * len(items)
        self.states: dict[int, _Turn] = {}
        self.next_item = 0

    def run(self) -> list[dict]:
        self.fill()
        for (i, name), gen in self.stream:
            self.take(i, name, gen)
        return self.results  # type: ignore[return-value]

    def submit(self, i: int, name: str) -> None:
        st, cfg = self.states[i], self.cfg
        cap = cfg.critique_max_tokens if name == "critique" else cfg.max_tokens
        temperature = cfg.temperature + 0.3 * st.attempt[name]
        self.stream.submit((i, name), st.calls[name], Sampling(temperature, cfg.top_p, cap),
                           self.strategy.schemas[name])

    def fill(self) -> None:
        """Start turns until ``max_in_flight`` are in the engine (or none is left)."""
        while self.next_item < len(self.items) and len(self.states) < self.cfg.max_in_flight:
            conv, t = self.items[self.next_item]
            self.states[self.next_item] = _Turn(conv, t, self.strategy.calls(conv, t))
            for name in self.strategy.schemas:
                self.submit(self.next_item, name)
            self.next_item += 1

    def take(self, i: int, name: str, gen) -> None:
        """One generation in: keep it or ask again; a turn whose calls are all in is finished (or, when the
        whole cannot be parsed, asked again in full)."""
        st, cfg = self.states[i], self.cfg
        st.tokens += gen.output_tokens
        why = check_output(gen, self.strategy.schemas[name], keep_truncated=not cfg.retry_truncated)
        if why is None:
            st.outputs[name] = gen.text
            st.truncated |= gen.finish_reason in CUT
        else:
            st.reason = f"{name}: {why}"
            if st.attempt[name] < cfg.retries:
                st.attempt[name] += 1
                self.submit(i, name)
                return
            st.gave_up.add(name)
        if len(st.outputs) + len(st.gave_up) == len(st.calls):
            if not st.gave_up and _parse_error(self.strategy, st) and max(st.attempt.values()) < cfg.retries:
                # Every call looked fine alone but the whole can't be used: ask all of them again.
                st.outputs.clear()
                for n in st.calls:
                    st.attempt[n] += 1
                    self.submit(i, n)
                return
            self.finish(i)
            self.fill()

    def finish(self, i: int) -> None:
        st = self.states.pop(i)
        rec = _record(st, self.strategy.name, self.model)
        if not st.gave_up:
            try:
                rec.update(status="ok", **self.strategy.parse(st.outputs, st.conv, st.t))
            except OutputError as e:
                st.reason = str(e)
        if "status" not in rec:
            rec.update(status="failed", reason=st.reason or "unknown")
        self.results[i] = rec
        if self.on_record is not None:
            self.on_record(rec)


def _parse_error(strategy, st: _Turn) -> bool:
    try:
        strategy.parse(st.outputs, st.conv, st.t)
        return False
    except OutputError as e:
        st.reason = str(e)
        return True


def _record(st: _Turn, strategy: str, model: str) -> dict:
    return revision(st.conv, st.t, strategy=strategy, model=model, attempts=1 + max(st.attempt.values()),
                    truncated=st.truncated, output_tokens=st.tokens)
