"""Retrain the injection head (selfevolve/filters/injection_head.py) and write selfevolve/data/injection_head.json.

    flock /tmp/selfevolve-model.lock .venv/bin/python scripts/train_injection.py [--out ...json]

Training data: the ``tune`` half of selfevolve/data/injection_chats.jsonl, selfevolve/data/
injection_train_extra.jsonl and the splits that earlier benches scored and then read (``--splits``, default
fresh3, fresh5 … fresh12: once their misses were read they no longer measure anything unseen, and as training data
they bring 12 or 13 styles of injection each and hard normal chats). Never trained on nor used to choose anything:
``heldout``, ``fresh``, ``fresh2``, ``fresh4`` and ``fresh13`` … ``fresh34`` (written blind, first scored with
this head).
Real user text as normal chats too (``--sharegpt``, default 800): ShareGPT V3 conversations in the bench's order,
after the 1,200 its three samples measure (scripts/bench_injection.py). Without them the read splits taught the head
that a long pasted text is an injection: it flagged 213 of those 1,200 real conversations (4 before). The trained
splits are recorded in the head (``splits``), so the benches can tell which figures are unseen. On the training
data only: 5-fold cross-validation grouped by template (an injection template, or a normal conversation, never sits
in two folds, so the folds measure unseen phrasings) picks the feature kind and C by out-of-fold average precision, then the
out-of-fold probabilities pick ``threshold``: the highest one at which out-of-fold recall of injection chats
reaches ``--target-recall`` (0.99), unless that costs more than ``--max-fpr`` of the normal chats, then the lowest
threshold within that false-positive rate. The rate is taken over the written normal chats only: the ShareGPT
text is easy, and counting it would relax the limit (with it the threshold fell to 0.69 and the held-out half lost
10 of 167 normal chats, against 6 before the retraining). The head is refit on all training data and saved as
plain JSON; the script then prints its held-out-half metrics (the bench, scripts/bench_injection.py, reports every
split).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from selfevolve.filters import injection_head as ih  # noqa: E402

DATA = ROOT / "selfevolve" / "data"
FEATURE_KINDS = ("emb", "ngram", "emb+ngram")
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
BUCKETS, NGRAMS = 2 ** 16, (3, 4)
DENSE = 3 * 384
READ_SPLITS = ("fresh3", "fresh5", "fresh6", "fresh7", "fresh8", "fresh9", "fresh10", "fresh11",
               "fresh12")  # scored, then read
# the evaluation splits the head must not see
NEVER = ("heldout", "fresh", "fresh2", "fresh4", "fresh13", "fresh14", "fresh15", "fresh16", "fresh17", "fresh18",
         "fresh19", "fresh20", "fresh21", "fresh22", "fresh23", "fresh24", "fresh25", "fresh26",
         "fresh27", "fresh28", "fresh29", "fresh30", "fresh31", "fresh32", "fresh33", "fresh34")


def load_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def turn(row: dict) -> dict:
    t = row["turn"]
    return {"context": row["messages"][:t], "aftermath": row["messages"][t + 1:]}


def group(row: dict) -> str:
    if row["set"] == "injection":
        return f"{row['kind']}-{row.get('template')}"
    return row["id"].split("#")[0].rsplit("-chat-", 1)[0]  # one sample / bench conversation, all its turns


def read_splits(names: list[str]) -> list[dict]:
    """The rows of the named splits, from every shipped injection file."""
    if bad := set(names) & set(NEVER):
        raise SystemExit(f"--splits: {sorted(bad)} are evaluation splits; the head never trains on them")
    rows = [r for f in sorted(DATA.glob("injection_fresh*.jsonl")) for r in load_rows(f)]
    if missing := set(names) - {r["split"] for r in rows}:
        raise SystemExit(f"--splits: no rows for {sorted(missing)}")
    return [r for r in rows if r["split"] in names]


def features(pairs: list[tuple[str, str]], kind: str, cache: dict):
    """Design matrix (scipy sparse) for ``kind``; embeddings computed once per text list."""
    from scipy import sparse

    blocks = []
    if "emb" in kind:
        if "dense" not in cache:
            cache["dense"] = ih.dense_features(ih.embed([p[0] for p in pairs]), ih.embed([p[1] for p in pairs]))
        blocks.append(sparse.csr_matrix(cache["dense"]))
    if "ngram" in kind:
        if "ngram" not in cache:
            rows, cols, vals = [], [], []
            for i, (q, r) in enumerate(pairs):
                acc: dict[int, float] = {}
                for field, t in (("q", q), ("r", r)):
                    for b, v in ih.ngram_counts(t, field, BUCKETS, NGRAMS).items():
                        acc[b] = acc.get(b, 0.0) + v
                rows += [i] * len(acc)
                cols += list(acc)
                vals += list(acc.values())
            cache["ngram"] = sparse.csr_matrix((vals, (rows, cols)), shape=(len(pairs), BUCKETS))
        blocks.append(cache["ngram"])
    return sparse.hstack(blocks).tocsr()


def fit(x, y, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x, y)


def oof(x, y, groups, c: float) -> np.ndarray:
    from sklearn.model_selection import GroupKFold

    p = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=5).split(x, y, groups):
        p[te] = fit(x[tr], y[tr], c).predict_proba(x[te])[:, 1]
    return p


def pick_threshold(p: np.ndarray, y: np.ndarray, target_recall: float, max_fpr: float) -> float:
    """The highest threshold whose recall on injections reaches ``target_recall`` if its false-positive rate
    stays within ``max_fpr``; otherwise the lowest threshold whose false-positive rate is within ``max_fpr``."""
    grid = np.round(np.arange(0.02, 0.99, 0.01), 2)
    rec = {t: float((p[y == 1] >= t).mean()) for t in grid}
    fpr = {t: float((p[y == 0] >= t).mean()) for t in grid}
    ok = [t for t in grid if rec[t] >= target_recall]
    if ok and fpr[max(ok)] <= max_fpr:
        return float(max(ok))
    return float(min(t for t in grid if fpr[t] <= max_fpr))


def report(name: str, p: np.ndarray, y: np.ndarray, t: float) -> str:
    through, n_inj = int((p[y == 1] < t).sum()), int((y == 1).sum())
    dropped, n_norm = int((p[y == 0] >= t).sum()), int((y == 0).sum())
    return (f"{name}: injection chats missed {through}/{n_inj} ({through / max(n_inj, 1):.1%}); normal chats "
            f"flagged {dropped}/{n_norm} ({dropped / max(n_norm, 1):.1%})")


def to_json(model, kind: str, c: float, threshold: float, n_train: int, cv: dict) -> dict:
    coef = model.coef_[0]
    dense = coef[:DENSE] if "emb" in kind else None
    sparse_coef = coef[DENSE:] if "emb" in kind else coef
    head = {"kind": kind, "C": c, "threshold": threshold, "intercept": round(float(model.intercept_[0]), 6),
            "dense_coef": [round(float(v), 6) for v in dense] if dense is not None else None,
            "ngram_coef": None, "ngram_buckets": BUCKETS, "ngram_sizes": list(NGRAMS), "trained_on": n_train,
            "cv": cv, "trained_by": "scripts/train_injection.py"}
    if "ngram" in kind:
        head["ngram_coef"] = {str(i): round(float(v), 5) for i, v in enumerate(sparse_coef) if abs(v) >= 1e-4}
    return head


def main() -> None:
    from sklearn.metrics import average_precision_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ih.HEAD_PATH))
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--max-fpr", type=float, default=0.03)
    ap.add_argument("--splits", nargs="*", default=list(READ_SPLITS),
                    help="read splits to train on as well (none: the tune half and the extra file only)")
    ap.add_argument("--sharegpt", type=int, default=800, help="real ShareGPT conversations to train on as normal")
    args = ap.parse_args()
    shipped = load_rows(DATA / "injection_chats.jsonl")
    train = [r for r in shipped if r["split"] == "tune"] + load_rows(DATA / "injection_train_extra.jsonl")
    train += read_splits(args.splits)
    if args.sharegpt:
        import bench_injection as bench  # the bench's order; its evaluation samples come first and are skipped

        skip = 3 * bench.SHAREGPT_N
        train += [{**r, "split": "sharegpt_train"} for r in bench.sharegpt_rows(skip + args.sharegpt)[skip:]]
    held = [r for r in shipped if r["split"] == "heldout"]
    y = np.array([r["set"] == "injection" for r in train], dtype=int)
    groups = [group(r) for r in train]
    pairs = [ih.user_texts(turn(r)) for r in train]
    print(f"training chats: {len(train)} ({y.sum()} injection, {len(y) - y.sum()} normal), {len(set(groups))} groups")
    cache: dict = {}
    best = None
    for kind in FEATURE_KINDS:
        x = features(pairs, kind, cache)
        for c in C_GRID:
            p = oof(x, y, groups, c)
            score = average_precision_score(y, p)
            print(f"  cv  features={kind:10s} C={c:<5} average precision={score:.4f}", flush=True)
            if best is None or score > best[0] + 1e-9:
                best = (score, kind, c, p)
    score, kind, c, p = best
    written = np.array([r["split"] != "sharegpt_train" for r in train])  # see the docstring: the rate's base
    t = pick_threshold(p[written], y[written], args.target_recall, args.max_fpr)
    print(f"chosen: features={kind} C={c} threshold={t} (cv average precision {score:.4f})")
    print("  " + report("cv (out of fold)", p, y, t))
    model = fit(features(pairs, kind, cache), y, c)
    cv = {"average_precision": round(score, 4), "missed": int((p[y == 1] < t).sum()), "injection": int(y.sum()),
          "flagged_normal": int((p[y == 0] >= t).sum()), "normal": int((y == 0).sum())}
    head = to_json(model, kind, c, t, len(train), cv)
    head["splits"] = ["tune", "train_extra", *args.splits] + (["sharegpt_train"] if args.sharegpt else [])
    Path(args.out).write_text(json.dumps(head) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    ih.load_head.cache_clear()
    hp = ih.score([turn(r) for r in held], ih.load_head(args.out))
    hy = np.array([r["set"] == "injection" for r in held], dtype=int)
    print("  " + report("held-out half (never trained on)", hp, hy, t))


if __name__ == "__main__":
    main()
