"""The phases of one comparison (selfevolve/compare.py): both sides' answers, the probes, the pairwise judge's
verdicts and the drift monitors, with the seconds each phase took."""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from . import probes
from .backends import borrow
from .backends.base import Generation, Sampling
from .backends.hf_backend import HFBackend
from .drift import add_embedding_spread, drift, perplexity
from .judge import judge_pairs
from .records import read_jsonl, sha256_file, write_jsonl

if TYPE_CHECKING:  # annotations only: compare.py imports this module
    from .compare import Side


# ---------------------------------------------------------------- judging

def judge_answers(judge, prompts: list[dict], answers_a: list[str], answers_b: list[str], judge_cfg) -> list[dict]:
    """The judgments.jsonl records: both verdicts per prompt and B's outcome under the judge's one rule."""
    items = [(p["messages"], a, b) for p, a, b in zip(prompts, answers_a, answers_b)]
    return [{"id": p["id"], **j.to_dict()} for p, j in zip(prompts, judge_pairs(judge, items, judge_cfg))]


def judge_note(result: dict) -> str | None:
    bad = result["inconsistent"] + result["invalid"]
    if not result["n"] or bad / result["n"] <= 0.5:
        return None
    return (f"The judge flipped with the order or gave no readable verdict on {bad} of {result['n']} prompts: "
            "those count as ties, so the win rate says little here (a narrow CI around 50% is not evidence of "
            "parity). Use a stronger judge (judge.kind: openai).")

class AnswerCache:
    """The comparison's backend, with each ``chat`` call's answers kept in ``folder`` (the comparison's hidden
    ``.answers/``) until summary.json is written: compare killed or crashed after a side's answers reruns without
    generating them again (on a GPU box a side is minutes). A call is found again only with the same messages,
    sampling, schema and adapter (folder and content); answers with an error are not kept. Everything else passes through."""

    def __init__(self, backend, folder: Path):
        self.backend, self.folder = backend, Path(folder)

    def __getattr__(self, name):
        return getattr(self.backend, name)

    @staticmethod
    def _adapter(adapter: str | None):
        folder = Path(adapter) if adapter else None
        if folder is not None and folder.is_dir():
            return [str(folder.resolve()), sorted((f.name, sha256_file(f)) for f in folder.iterdir() if f.is_file())]
        return adapter

    def chat(self, batch, sampling, schema=None, adapter=None) -> list[Generation]:
        samplings = [asdict(s) for s in sampling] if isinstance(sampling, list) else asdict(sampling)
        key = json.dumps([batch, samplings, schema, self._adapter(adapter)], sort_keys=True, ensure_ascii=True)
        path = self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.jsonl"
        if path.is_file():
            rows = read_jsonl(path)
            if len(rows) == len(batch):
                return [Generation(**r) for r in rows]
        gens = self.backend.chat(batch, sampling, schema=schema, adapter=adapter)
        if not any(g.finish_reason.startswith("error") for g in gens):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_jsonl(path, [asdict(g) for g in gens])
        return gens


class Phases:
    """Seconds per phase, in the summary: where a slow comparison spends its time."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._tick = time.time()

    def done(self, phase: str) -> None:
        self.seconds[phase] = round(time.time() - self._tick, 1)
        self._tick = time.time()


def generate(backend, cc, prompts: list[dict], a: Side, b: Side, notes: list[str], phases: Phases, log):
    """Both sides' answers (B's shared with A's when both are the same model)."""
    sampling = Sampling(cc.temperature, cc.top_p, cc.max_tokens)
    msgs = [p["messages"] for p in prompts]
    sources = ", ".join(f"{k} {v}" for k, v in Counter(p["source"] for p in prompts).items())
    log(f"compare: {len(prompts)} prompts ({sources}), generating {a.label} ...")
    gens_a = backend.chat(msgs, sampling, adapter=a.adapter)
    phases.done("generate_a")
    if b.adapter == a.adapter:
        notes.append("Both sides are the same model: its answers were generated once and shared.")
        return gens_a, gens_a
    log(f"compare: generating {b.label} ...")
    gens_b = backend.chat(msgs, sampling, adapter=b.adapter)
    phases.done("generate_b")
    return gens_a, gens_b


def monitors(cfg, backend, stack: ExitStack, sides: dict, human: list[dict], notes: list[str], phases: Phases,
              log) -> dict:
    """Drift monitors per side; ``sides``: ``{"a": (Side, generations), "b": ...}``. A scorer built here is
    closed by ``stack``."""
    cc = cfg.compare
    texts = {k: [g.text for g in gens] for k, (_, gens) in sides.items()}
    drifts = {k: drift(texts[k], [g.output_tokens for g in gens]) for k, (_, gens) in sides.items()}
    scorer = backend
    if human and cc.perplexity_backend == "hf":
        log("compare: scoring human texts with transformers + PEFT ...")
        scorer = stack.enter_context(borrow(cfg, None, lambda: HFBackend(cfg.model.path, seed=cfg.backend.seed)))
    for k, (side, gens) in sides.items():
        drifts[k]["finish_length"] = sum(g.finish_reason == "length" for g in gens)
        drifts[k]["perplexity_human"] = perplexity(scorer, human, side.adapter) if human else None
    phases.done("perplexity")
    if human:
        notes.append(f"Perplexity: {len(human)} human-written texts ({cc.human_texts}), scored by "
                     f"{'transformers + PEFT' if scorer is not backend else 'the comparison backend'}.")
    if cc.embeddings:
        notes.append(add_embedding_spread(drifts, texts))
        phases.done("embeddings")
    return drifts


def asks_judge(cfg) -> bool:
    """Whether compare asks the pairwise judge: ``compare.pairwise``, by default only for another model."""
    return cfg.compare.pairwise if cfg.compare.pairwise is not None else cfg.judge.kind == "openai"


def ask_probes(backend, cfg, probes_in: list[dict], a: Side, b: Side, phases: Phases, log) -> tuple[dict, list]:
    """Both sides' answers to the probes, scored with the users' words (selfevolve/probes.py)."""
    if not probes_in:
        return {}, []
    cc = cfg.compare
    log(f"compare: {len(probes_in)} probes ({probes.line_counts(probes_in)}) asked fresh to both sides ...")
    ans_a = probes.answer(backend, probes_in, a.adapter, cc.probe_max_tokens)
    ans_b = ans_a if b.adapter == a.adapter else probes.answer(backend, probes_in, b.adapter, cc.probe_max_tokens)
    summary, rows = probes.evaluate(probes_in, ans_a, ans_b, gcfg=cfg.grounding, n_boot=cc.bootstrap_samples,
                                    confidence=cc.confidence, seed=cc.seed)
    phases.done("probes")
    return summary, rows
