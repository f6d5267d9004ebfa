"""Hindsight revision: every assistant turn, seen with the whole conversation, gets a criticism,
a keep/revise verdict and a new answer written as a first reply.

Work goes in chunks of conversations; each finished chunk is appended to a journal (fsync), so a
rerun after kill -9 only does the turns that are missing. When every turn is done the journal becomes
``revisions.jsonl`` in one atomic rename, in conversation order, one record per assistant turn.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Backend, Sampling
from .progress import bar
from .prompts import OutputError, get_strategy, parse_json
from .records import Journal, assistant_turns, turn_id, write_jsonl


@dataclass
class ReviseSummary:
    turns: int = 0
    revised: int = 0
    kept: int = 0
    failed: int = 0
    resumed: int = 0  # turns found done in the journal or the output
    output_tokens: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)

    def line(self) -> str:
        text = (f"turns {self.turns} = revised {self.revised} + kept {self.kept} + failed {self.failed}"
                f"  (resumed {self.resumed}, {self.output_tokens} output tokens in {self.seconds:.1f}s)")
        if self.reasons:
            text += "\n  failures: " + "; ".join(f"{r} ×{n}" for r, n in self.reasons.most_common(5))
        return text


def _check(gen, schema: dict | None) -> str | None:
    """Why a generation can't be used (None when it can)."""
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


def revise_chunk(items: list[tuple[dict, int]], backend: Backend, cfg, model: str) -> list[dict]:
    """Revise the given (conversation, turn) pairs; returns one record per pair, ok or failed."""
    strategy = get_strategy(cfg.strategy)
    calls = [strategy.calls(conv, t) for conv, t in items]
    outputs: list[dict[str, str]] = [{} for _ in items]
    reasons: list[str | None] = [None] * len(items)
    tokens = [0] * len(items)
    attempts = [0] * len(items)
    results: list[dict | None] = [None] * len(items)
    pending = set(range(len(items)))
    for attempt in range(cfg.retries + 1):
        if not pending:
            break
        # A retry with identical sampling tends to repeat the same bad output; warm it up a little.
        temperature = cfg.temperature + 0.3 * attempt
        # Every missing call of every pending turn goes out in one engine batch (answers and critiques
        # alike), so a chunk's retries don't run as a trickle of tiny batches.
        todo = [(i, name) for i in sorted(pending) for name in strategy.schemas if name not in outputs[i]]
        if todo:
            samplings = [Sampling(temperature, cfg.top_p, cfg.critique_max_tokens if name == "critique" else cfg.max_tokens)
                         for _, name in todo]
            schemas = [strategy.schemas[name] for _, name in todo]
            gens = backend.chat([calls[i][name] for i, name in todo], samplings, schema=schemas)
            for (i, name), schema, gen in zip(todo, schemas, gens):
                tokens[i] += gen.output_tokens
                why = _check(gen, schema)
                if why is None:
                    outputs[i][name] = gen.text
                else:
                    reasons[i] = f"{name}: {why}"
        for i in sorted(pending):
            attempts[i] = attempt + 1
            if len(outputs[i]) < len(strategy.schemas):
                continue
            conv, t = items[i]
            try:
                results[i] = strategy.parse(outputs[i], conv, t)
                pending.discard(i)
            except OutputError as e:
                reasons[i] = str(e)
                outputs[i] = {}  # ask every call again
    records = []
    for i, (conv, t) in enumerate(items):
        msgs = conv["messages"]
        rec = {
            "id": turn_id(conv["id"], t),
            "conversation_id": conv["id"],
            "turn": t,
            "strategy": strategy.name,
            "model": model,
            "context": msgs[:t],
            "original": msgs[t]["content"],
            "aftermath": msgs[t + 1:],
            "attempts": attempts[i],
            "output_tokens": tokens[i],
        }
        if results[i] is not None:
            rec.update(status="ok", **results[i])
        else:
            rec.update(status="failed", reason=reasons[i] or "unknown")
        records.append(rec)
    return records


def run_revise(conversations: list[dict], backend: Backend, cfg, out_path: Path, journal_path: Path,
               model: str = "", show_progress: bool = True) -> ReviseSummary:
    start = time.time()
    order = [(conv, t) for conv in conversations for t in assistant_turns(conv)]
    ids = [turn_id(conv["id"], t) for conv, t in order]
    if len(set(ids)) != len(ids):
        raise ValueError("conversation ids are not unique: turn ids would collide")

    journal = Journal(journal_path)
    done: dict[str, dict] = {}
    if out_path.exists():  # a finished earlier run: reuse its records (new conversations are still done)
        from .records import read_jsonl

        done.update({r["id"]: r for r in read_jsonl(out_path)})
    done.update({r["id"]: r for r in journal.records})
    summary = ReviseSummary(turns=len(order), resumed=sum(1 for i in ids if i in done))

    todo = [item for item, i in zip(order, ids) if i not in done]
    chunks: list[list[tuple[dict, int]]] = []
    by_conv: dict[str, list] = {}
    for conv, t in todo:
        by_conv.setdefault(conv["id"], []).append((conv, t))
    groups = list(by_conv.values())
    for k in range(0, len(groups), cfg.chunk_conversations):
        chunks.append([item for g in groups[k:k + cfg.chunk_conversations] for item in g])

    with bar("revise", total=len(order), unit="turns", enabled=show_progress) as advance:
        advance(summary.resumed)
        t0, new_tokens = time.time(), 0
        for chunk in chunks:
            recs = revise_chunk(chunk, backend, cfg, model)
            journal.append(recs)
            done.update({r["id"]: r for r in recs})
            new_tokens += sum(r["output_tokens"] for r in recs)
            advance(len(recs), extra=f"{new_tokens / max(time.time() - t0, 1e-9):.0f} tok/s")

    final = [done[i] for i in ids]
    write_jsonl(out_path, final)
    journal.remove()
    for r in final:
        if r["status"] == "failed":
            summary.failed += 1
            summary.reasons[r["reason"].split(" (")[0][:80]] += 1
        elif r["verdict"] == "keep":
            summary.kept += 1
        else:
            summary.revised += 1
    summary.output_tokens = sum(r.get("output_tokens", 0) for r in final)
    summary.seconds = time.time() - start
    return summary


def revise_round(cfg, rnd, backend: Backend | None = None, show_progress: bool = True) -> ReviseSummary:
    """The stage as the CLI and the round runner call it: round folder in, ``revisions.jsonl`` out."""
    from . import manifest
    from .records import read_jsonl

    if not rnd.conversations.exists():
        raise FileNotFoundError(f"{rnd.conversations} is missing: run the collect step first")
    started = time.time()
    conversations = read_jsonl(rnd.conversations)
    own = backend is None
    if own:
        from .backends import make_backend

        backend = make_backend(cfg)
    try:
        summary = run_revise(conversations, backend, cfg.revise, rnd.revisions, rnd.revisions_journal,
                             model=cfg.model.path, show_progress=show_progress)
    finally:
        if own:
            backend.close()
    counts = {"turns": summary.turns, "revised": summary.revised, "kept": summary.kept, "failed": summary.failed,
              "reasons": dict(summary.reasons), "output_tokens": summary.output_tokens}
    share = summary.failed / max(summary.turns, 1)
    status = "complete" if share <= cfg.revise.max_failed_share else "failed"
    manifest.record_stage(rnd.manifest, "revise", inputs=[rnd.conversations], outputs=[rnd.revisions],
                          counts=counts, started=started, status=status, strategy=cfg.revise.strategy)
    if status == "failed":
        raise RuntimeError(f"revise: {summary.failed}/{summary.turns} turns failed ({share:.1%} > "
                           f"revise.max_failed_share={cfg.revise.max_failed_share}); see {rnd.revisions}")
    return summary
