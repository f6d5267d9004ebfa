"""Retrain the hindsight signal head (selfevolve/signals.py) and write selfevolve/data/signal_head.json.

    .venv/bin/python scripts/train_signals.py [--data selfevolve/data/followups.jsonl] [--out ...json]

Split: ``int(sha256(id)[:8], 16) % 100 < 25`` puts an example in the held-out test split, never used for
training, for choosing the features / C, or for choosing ``min_confidence``. On the training split only:
5-fold cross-validation grouped by the answer text (one answer carries several follow-ups, so folds must
not share it) picks the feature kind and C by macro F1, then the out-of-fold probabilities pick
``min_confidence`` (the lowest threshold at which both ``corrected`` and ``confirmed`` predictions reach
``--target-precision``). The head is refit on the whole training split and saved as plain JSON; the script
then prints per-class precision/recall/F1 and the confusion matrix on the held-out split.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selfevolve.records import read_jsonl, sha256_file, write_json  # noqa: E402
from selfevolve.signals import FOLLOWUPS_PATH, HEAD_PATH, LABELS  # noqa: E402

SPLIT_RULE = "test if int(sha256(id.encode()).hexdigest()[:8], 16) % 100 < 25 else train"
FEATURE_KINDS = ("followup", "followup+answer")
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.34, 0.96, 0.02))


def is_test(example_id: str) -> bool:
    return int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) % 100 < 25


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    return [r for r in rows if not is_test(r["id"])], [r for r in rows if is_test(r["id"])]


def embed(rows: list[dict]) -> dict[str, np.ndarray]:
    """Both feature kinds for ``rows`` (embedding each text once)."""
    from selfevolve.embeddings import encode

    f, a = encode([r["followup"] for r in rows]), encode([r["answer"] for r in rows])
    return {"followup": f, "followup+answer": np.concatenate([f, a], axis=1)}


def fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x, y)


def oof_proba(x: np.ndarray, y: np.ndarray, groups: list[str], c: float) -> np.ndarray:
    """Out-of-fold class probabilities (columns in LABELS order) from 5 folds grouped by answer."""
    from sklearn.model_selection import GroupKFold

    p = np.zeros((len(y), len(LABELS)))
    for tr, te in GroupKFold(n_splits=5).split(x, y, groups):
        p[te] = fit(x[tr], y[tr], c).predict_proba(x[te])
    return p


def select_model(feats: dict[str, np.ndarray], y: np.ndarray, groups: list[str]) -> tuple[str, float, np.ndarray]:
    """(feature kind, C, its out-of-fold probabilities) with the best cross-validated macro F1."""
    from sklearn.metrics import f1_score

    best = None
    for kind in FEATURE_KINDS:
        for c in C_GRID:
            p = oof_proba(feats[kind], y, groups, c)
            f1 = f1_score(y, p.argmax(1), average="macro")
            print(f"  cv  features={kind:16s} C={c:<5} macro-F1={f1:.4f}")
            if best is None or f1 > best[0] + 1e-9:
                best = (f1, kind, c, p)
    return best[1], best[2], best[3]


def choose_min_confidence(p: np.ndarray, y: np.ndarray, target: float) -> tuple[float, dict]:
    """Lowest threshold at which confirmed and corrected predictions (top prob >= t) both reach ``target``
    precision; the most precise threshold when none does."""
    stats = []
    for t in THRESHOLDS:
        pred = np.where(p.max(1) >= t, p.argmax(1), LABELS.index("unclear"))
        row = {"t": float(t)}
        for k in ("confirmed", "corrected"):
            hit = pred == LABELS.index(k)
            row[k] = float((y[hit] == LABELS.index(k)).mean()) if hit.any() else 1.0
            row[k + "_recall"] = float(hit[y == LABELS.index(k)].mean())
        stats.append(row)
        if min(row["confirmed"], row["corrected"]) >= target:
            return t, row
    best = max(stats, key=lambda r: min(r["confirmed"], r["corrected"]))
    return best["t"], best


def report(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> str:
    """Per-class precision/recall/F1 and the confusion matrix, as markdown."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pr, rc, f1, n = precision_recall_fscore_support(y_true, y_pred, labels=range(len(LABELS)), zero_division=0)
    lines = [f"**{title}** (n={len(y_true)})", "", "| class | precision | recall | F1 | n |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {pr[i]:.3f} | {rc[i]:.3f} | {f1[i]:.3f} | {n[i]} |" for i, k in enumerate(LABELS)]
    lines += [f"| macro | {pr.mean():.3f} | {rc.mean():.3f} | {f1.mean():.3f} | {n.sum()} |", "",
              "confusion (rows true, columns predicted: " + ", ".join(LABELS) + ")", ""]
    cm = confusion_matrix(y_true, y_pred, labels=range(len(LABELS)))
    lines += ["    " + f"{k:10s} " + " ".join(f"{v:5d}" for v in cm[i]) for i, k in enumerate(LABELS)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(FOLLOWUPS_PATH))
    ap.add_argument("--out", default=str(HEAD_PATH))
    ap.add_argument("--target-precision", type=float, default=0.85)
    args = ap.parse_args()

    rows = read_jsonl(args.data)
    bad = [r["id"] for r in rows if r.get("label") not in LABELS]
    if bad:
        raise SystemExit(f"unknown labels in {args.data}: {bad[:5]}")
    train, test = split(rows)
    print(f"{len(rows)} examples: {len(train)} train, {len(test)} held-out test ({SPLIT_RULE})")
    ytr = np.array([LABELS.index(r["label"]) for r in train])
    yte = np.array([LABELS.index(r["label"]) for r in test])
    ftr, fte = embed(train), embed(test)

    kind, c, p = select_model(ftr, ytr, [r["answer"] for r in train])
    t, at_t = choose_min_confidence(p, ytr, args.target_precision)
    print(f"chosen: features={kind} C={c}; min_confidence={t} (out-of-fold on train: {at_t})")
    clf = fit(ftr[kind], ytr, c)
    assert list(clf.classes_) == list(range(len(LABELS)))
    head = {
        "classes": list(LABELS), "features": kind,
        "embedder": "all-MiniLM-L6-v2 (selfevolve.embeddings.encode, unit vectors)",
        "coef": np.round(clf.coef_.astype(float), 6).tolist(),
        "intercept": np.round(clf.intercept_.astype(float), 6).tolist(),
        "min_confidence": t, "min_confidence_rule": f"lowest t with confirmed and corrected precision >= "
        f"{args.target_precision} on 5-fold out-of-fold train predictions", "oof_at_min_confidence": at_t,
        "model": f"sklearn LogisticRegression(C={c}, class_weight='balanced'), multinomial",
        "trained_on": {"file": "selfevolve/data/followups.jsonl", "sha256": sha256_file(args.data),
                       "split": SPLIT_RULE, "n_train": len(train), "n_test": len(test)},
    }
    write_json(args.out, head)
    print(f"wrote {args.out}")
    pte = clf.predict_proba(fte[kind])
    print(report(yte, pte.argmax(1), "held-out test, argmax"))
    pred_t = np.where(pte.max(1) >= t, pte.argmax(1), LABELS.index("unclear"))
    print(report(yte, pred_t, f"held-out test, min_confidence={t}"))


if __name__ == "__main__":
    main()
