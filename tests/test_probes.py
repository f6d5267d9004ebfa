"""Probes from curated records: which turns become taught / reworded / kept probes, and how answers are scored
and paired (no model: answers are given)."""
from selfevolve import probes
from selfevolve.records import write_jsonl


def rec(cid, question, original, follow, use, label, context=None, revised=""):
    return {"id": f"{cid}#1", "context": context or [{"role": "user", "content": question}], "original": original,
            "aftermath": [{"role": "user", "content": follow}], "use": use, "revised": revised,
            "signal": {"label": label, "text": follow}}


RECS = [
    rec("bones", "How many bones does an adult human have?", "An adult has 212 bones.",
        "I'm pretty sure it's 206, not 212.", "revised", "corrected", revised="206 bones."),
    rec("paris", "What is the capital of France?", "The capital of France is Paris.", "Thanks!", "original",
        "confirmed"),
    rec("later", "And Spain?", "Madrid.", "No, it's Madrid indeed", "revised", "corrected",
        context=[{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
                 {"role": "user", "content": "And Spain?"}]),  # leans on the conversation: no probe
]


def test_build_takes_standalone_questions_by_kind(tmp_path):
    path = tmp_path / "curated.jsonl"
    write_jsonl(path, RECS)
    ps = probes.build([path], max_per_kind=10, rewordings=1)
    assert [p["kind"] for p in ps] == ["taught", "reworded", "kept"]
    taught, reworded, kept = ps
    assert taught["question"] == "How many bones does an adult human have?"
    assert reworded["question"] != taught["question"] and "bones" in reworded["question"]
    assert kept["reference"] == "The capital of France is Paris."
    assert probes.build([path], max_per_kind=0) == []


def test_evaluate_scores_with_the_users_words_and_pairs_sides(tmp_path):
    path = tmp_path / "curated.jsonl"
    write_jsonl(path, RECS)
    ps = probes.build([path], max_per_kind=10, rewordings=1)
    live = ["An adult has 212 bones.", "Adults have 212 bones.", "Paris is the capital."]
    cand = ["An adult human has 206 bones.", "206 bones.", "Lyon."]
    summary, rows = probes.evaluate(ps, live, cand, n_boot=200)
    assert summary["taught"]["pass_a"] == 0 and summary["taught"]["pass_b"] == 1 and summary["taught"]["fixed"] == 1
    assert summary["kept"]["pass_a"] == 1 and summary["kept"]["pass_b"] == 0 and summary["kept"]["broken"] == 1
    assert summary["kept"]["diff"] == -1.0 and len(rows) == 3
    assert "taught 0→1/1" in probes.line(summary)
