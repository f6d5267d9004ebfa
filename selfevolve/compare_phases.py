"""The phases of one comparison (selfevolve/compare.py): both sides' answers, the probes, the pairwise judge's
verdicts and the drift monitors, with the seconds each phase took."""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from . import probes
from .backends import borrow
from .backends.base import Generation, Sampling, per_item
from .backends.hf_backend import HFBackend
from .cpu_split import apart_from_engines
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


def model_identity(cfg) -> list:
    """What makes two comparisons' backends the same model for :class:`AnswerCache`: another server's endpoint
    and model name (``backend.kind: openai``), else the model folder with its files' sizes and times (the
    in-process engine, the served one and transformers all load it)."""
    if cfg.backend.kind == "openai":
        return ["openai", cfg.backend.base_url, cfg.backend.served_model]
    folder = Path(cfg.model.path).expanduser()
    if not folder.is_dir():
        return ["hub", cfg.model.path]
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
    return ["local", str(folder.resolve()), files]


class AnswerCache:
    """The comparison's backend, with its answers kept so that none is generated twice.

    - **Greedy answers** (temperature 0: compare's answers and probes as configured) go to ``store``, the run's
      ``answers/``, and stay. A model's greedy answer to a prompt is the same in every round, so the live model's
      answers to the MT-Bench prompts, the held-out turns and the probes it met in an earlier round (as live, or
      as the candidate that became live) are read, not generated: about half of a round's compare.
    - **Sampled answers** go to ``folder``, the comparison's hidden ``.answers/``, until summary.json is written:
      compare killed or crashed after a side's answers reruns without generating them again.

    An answer is found again only for the same model (``model``: :func:`model_identity`), messages, sampling,
    schema and adapter (folder and content); answers with an error are not kept. Everything else passes through.
    """

    def __init__(self, backend, folder: Path, store: Path | None = None, model=None):
        self.backend, self.folder = backend, Path(folder)
        self.store = Path(store) if store is not None else self.folder
        self.model = model
        self._known: dict[str, dict] = {}
        for root in {self.store, self.folder}:
            for path in sorted(root.glob("*.jsonl")) if root.is_dir() else []:
                self._known.update((r.pop("key"), r) for r in read_jsonl(path) if "key" in r)

    def __getattr__(self, name):
        return getattr(self.backend, name)

    @staticmethod
    def _adapter(adapter: str | None):
        folder = Path(adapter) if adapter else None
        if folder is not None and folder.is_dir():
            return [str(folder.resolve()), sorted((f.name, sha256_file(f)) for f in folder.iterdir() if f.is_file())]
        return adapter

    def chat(self, batch, sampling, schema=None, adapter=None) -> list[Generation]:
        samplings, schemas, ident = per_item(sampling, len(batch)), per_item(schema, len(batch)), self._adapter(adapter)
        keys, seen = [], Counter()
        for m, s, sc in zip(batch, samplings, schemas):
            key = json.dumps([self.model, m, asdict(s), sc, ident], sort_keys=True, ensure_ascii=True)
            if s.temperature != 0:  # the same prompt sampled twice in a call: two answers, not one
                seen[key] += 1
                key += f"#{seen[key]}"
            keys.append(hashlib.sha256(key.encode()).hexdigest())
        todo = [i for i, k in enumerate(keys) if k not in self._known]
        if todo:
            pick = (lambda xs: [xs[i] for i in todo])
            fresh = self.backend.chat(pick(batch), pick(samplings) if isinstance(sampling, list) else sampling,
                                      schema=pick(schemas) if isinstance(schema, list) else schema, adapter=adapter)
            self._keep([(keys[i], samplings[i].temperature == 0, g) for i, g in zip(todo, fresh)])
            got = dict(zip(todo, fresh))
        else:
            got = {}
        return [got[i] if i in got else Generation(**self._known[k]) for i, k in enumerate(keys)]

    def _keep(self, answers: list[tuple[str, bool, Generation]]) -> None:
        """One file per call and place (greedy → the store, sampled → the comparison's folder), written whole."""
        for greedy in (True, False):
            rows = [{"key": k, **asdict(g)} for k, gr, g in answers
                    if gr == greedy and not g.finish_reason.startswith("error")]
            if rows:
                root = self.store if greedy else self.folder
                root.mkdir(parents=True, exist_ok=True)
                name = hashlib.sha256("".join(r["key"] for r in rows).encode()).hexdigest()[:24]
                write_jsonl(root / f"{name}.jsonl", rows)
                self._known.update((r["key"], {k: v for k, v in r.items() if k != "key"}) for r in rows)


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


def score_human(cfg, backend, sides: dict, human: list[dict]) -> dict:
    """Perplexity of the human-written texts under each side (``sides``: ``{"a": Side, "b": Side}``), scored by
    transformers + PEFT (``compare.perplexity_backend: hf``, built and closed here) or the comparison backend."""
    if not human:
        return {k: None for k in sides}
    if cfg.compare.perplexity_backend != "hf":
        return {k: perplexity(backend, human, side.adapter) for k, side in sides.items()}
    with borrow(cfg, None, lambda: HFBackend(cfg.model.path, seed=cfg.backend.seed)) as scorer:
        return {k: perplexity(scorer, human, side.adapter) for k, side in sides.items()}


def score_human_beside(cfg, run, backend, stack: ExitStack, sides: dict, human: list[dict], log) -> Future | None:
    """:func:`score_human` started now, in a thread, when the answers come from the served engine and this
    process computes apart from it (its own cores, selfevolve/cpu_split.py, or a GPU): this process's cores
    would only wait for the answers, so the transformers scoring runs meanwhile instead of after (26 s of a
    borrowed round on this machine). Otherwise (an engine in this process, or cores shared with the served one:
    the scoring would slow its answers) None: scored after the answers."""
    if not (human and cfg.compare.ahead and cfg.compare.perplexity_backend == "hf"
            and getattr(backend, "name", "") == "served" and apart_from_engines(run)):
        return None
    log("compare: scoring human texts with transformers + PEFT beside the answers ...")
    pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="perplexity"))  # waited for at the end
    return pool.submit(score_human, cfg, backend, sides, human)


def monitors(cfg, backend, sides: dict, human: list[dict], notes: list[str], phases: Phases, log,
             scored: Future | None = None) -> dict:
    """Drift monitors per side; ``sides``: ``{"a": (Side, generations), "b": ...}``; ``scored``: the human texts'
    perplexities from :func:`score_human_beside`, else scored here."""
    cc = cfg.compare
    texts = {k: [g.text for g in gens] for k, (_, gens) in sides.items()}
    drifts = {k: drift(texts[k], [g.output_tokens for g in gens]) for k, (_, gens) in sides.items()}
    if scored is None and human and cc.perplexity_backend == "hf":
        log("compare: scoring human texts with transformers + PEFT ...")
    ppl = scored.result() if scored is not None else score_human(cfg, backend, {k: s for k, (s, _) in sides.items()},
                                                                 human)
    for k, (_, gens) in sides.items():
        drifts[k]["finish_length"] = sum(g.finish_reason == "length" for g in gens)
        drifts[k]["perplexity_human"] = ppl[k]
    phases.done("perplexity")
    if human:
        how = "transformers + PEFT" if cc.perplexity_backend == "hf" else "the comparison backend"
        notes.append(f"Perplexity: {len(human)} human-written texts ({cc.human_texts}), scored by {how}"
                     + (" while the served engine answered" if scored is not None else "") + ".")
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
