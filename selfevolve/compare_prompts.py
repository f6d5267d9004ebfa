"""Compare's prompt sets: the first turns of the MT-Bench questions (``compare.prompts``, never trained on;
round-robin over the categories up to ``compare.max_prompts``), plus user turns of conversations never
trained on, each with the conversation before it (``compare.heldout``: ``run`` = the held-out conversations
collect set aside in every round up to the candidate's, or a JSONL file; at most ``compare.max_heldout``,
breadth first, deduplicated by id)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .config import resolve_input
from .records import read_jsonl


def mt_bench_prompts(path: Path, limit: int) -> list[dict]:
    """First turns, round-robin over categories in question-id order: any limit keeps the categories balanced."""
    by_cat: dict[str, list[dict]] = {}
    for q in sorted(read_jsonl(path), key=lambda q: q["question_id"]):
        by_cat.setdefault(q.get("category", ""), []).append(q)
    out: list[dict] = []
    queues = list(by_cat.values())
    while len(out) < limit and any(queues):
        for queue in queues:
            if queue and len(out) < limit:
                q = queue.pop(0)
                out.append({"id": f"mt-{q['question_id']}", "source": "mt_bench", "category": q.get("category", ""),
                            "messages": [{"role": "user", "content": q["turns"][0]}]})
    return out


HELDOUT_RUN = "run"
"""``compare.heldout`` value: every round's held-out conversations in the run, up to the candidate's round."""


def _conversation_id(conv: dict) -> str:
    """The record's id; a record without one is named by a hash of its messages (so copies still deduplicate)."""
    if conv.get("id") not in (None, ""):
        return str(conv["id"])
    text = json.dumps([[m.get("role"), m.get("content")] for m in conv.get("messages", [])], ensure_ascii=False)
    return "sha-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def heldout_prompts(paths: Path | list[Path], limit: int) -> tuple[list[dict], int]:
    """User turns of held-out conversations ({id, messages} records), each with the conversation before it.

    Deduplicated by prompt id (``heldout-<conversation id>#<message index>``), the first file winning: a
    conversation that went on and was collected again by a later round adds only its new turns. At most
    ``limit`` prompts, breadth first (every conversation's first user turn before any second one) and, within a
    depth, in the order of a hash of the prompt id: the pick is spread over rounds and conversations, does not
    depend on the order of the files, and a prompt picked from a larger pool stays picked from any part of it
    that holds it. Returns (prompts, distinct conversations read)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found: dict[str, tuple[tuple[int, str], dict]] = {}
    conversations: set[str] = set()
    for path in paths:
        for conv in read_jsonl(path):
            cid = _conversation_id(conv)
            conversations.add(cid)
            msgs = [{"role": m["role"], "content": m["content"]} for m in conv["messages"]]
            depth = 0
            for i, m in enumerate(msgs):
                if m["role"] != "user":
                    continue
                pid = f"heldout-{cid}#{i}"
                if pid not in found:
                    found[pid] = ((depth, _hash(pid)), {"id": pid, "source": "heldout", "category": "",
                                                        "messages": msgs[: i + 1]})
                depth += 1
    picked = sorted(found.values(), key=lambda kv: kv[0])[: max(0, limit)]
    return [p for _, p in picked], len(conversations)


def heldout_files(run, sides) -> list[Path]:
    """``compare.heldout: run``: the held-out conversations of every round of the run up to and including the
    highest round among the sides (the candidate's: a later round's chats never enter an earlier comparison, so
    it reads the same when repeated later); every round when no side is a round (``base`` vs ``base``)."""
    rounds = [s.round for s in sides if s.round is not None]
    top = max(rounds) if rounds else None
    return [r.heldout for r in run.rounds() if (top is None or r.number <= top) and r.heldout.is_file()]


@dataclass
class PromptSet:
    """The prompts of one comparison and where they came from."""

    prompts: list[dict]
    """``{id, source, category, messages}``: MT-Bench first turns, then held-out chat turns."""
    heldout_files: list[Path]
    """The held-out conversation files read (none when ``compare.heldout`` is off or the run holds none)."""
    heldout_conversations: int
    """Distinct conversations read from those files."""
    notes: list[str]
    """What the summary should say about the set (e.g. no held-out conversations yet)."""


def load_prompts(cc, run=None, sides=()) -> PromptSet:
    """MT-Bench first turns plus held-out chat turns (``compare.heldout``: ``""`` none, ``run`` = the run's
    held-out conversations up to the sides' highest round, which needs ``run`` and ``sides``, or a JSONL path)."""
    prompts = mt_bench_prompts(resolve_input(cc.prompts), cc.max_prompts) if cc.max_prompts > 0 else []
    files: list[Path] = []
    notes: list[str] = []
    spec = cc.heldout.strip()
    if spec == HELDOUT_RUN:
        if run is None:
            raise ValueError("compare.heldout: run needs the run (compare(..., run=...))")
        files = heldout_files(run, sides)
    elif spec:
        files = [resolve_input(spec)]
        if not files[0].is_file():
            raise FileNotFoundError(f"compare.heldout: {files[0]} not found (use \"\", \"run\" or a JSONL file)")
    files = files if cc.max_heldout > 0 else []
    held, n_conv = heldout_prompts(files, cc.max_heldout) if files else ([], 0)
    if spec == HELDOUT_RUN and cc.max_heldout > 0 and not n_conv:
        rounds = [s.round for s in sides if s.round is not None]
        where = f"rounds up to {max(rounds)}" if rounds else "every round"
        notes.append(f"Held-out prompts: no held-out conversations in the run yet ({where}; collect keeps "
                     "data.heldout_share of the conversations out of training for this): MT-Bench prompts only.")
    prompts += held
    if not prompts:
        raise ValueError("compare: no prompts (compare.max_prompts is 0 and no held-out conversations "
                         f"from compare.heldout={cc.heldout!r})")
    return PromptSet(prompts, files, n_conv, notes)

