"""Curation with the user as the judge: each turn routed by its hindsight signal, corrected revisions grounded
in the user's correction, confirmed turns training on their original answer (no model calls)."""
from selfevolve.config import Config
from selfevolve.curate import curate_round
from selfevolve.layout import RunLayout
from selfevolve.manifest import load as load_manifest
from selfevolve.records import read_jsonl, write_jsonl


def rec(cid, question, original, follow, revised, status="ok"):
    return {"id": f"{cid}#1", "conversation_id": cid, "turn": 1, "strategy": "chat", "model": "m",
            "context": [{"role": "user", "content": question}], "original": original,
            "aftermath": [{"role": "user", "content": follow}], "status": status, "criticism": "c",
            "verdict": "keep", "revised": revised, "attempts": 1, "output_tokens": 5}


RECORDS = [
    rec("bones", "How many bones does an adult human have?", "An adult has 212 bones.",
        "I'm pretty sure it's 206, not 212.", "An adult human has 206 bones."),
    rec("stale", "What is the capital of Australia?", "The capital is Sydney.",
        "No, the capital is Canberra.", "The capital of Australia is Sydney."),  # repeats what the user rejected
    rec("rome", "What is the capital of Italy?", "The capital of Italy is Rome.", "Great, thanks!",
        "", status="failed"),  # a failed revision does not matter: the original trains
    rec("misc", "Tell me a joke.", "Why did the chicken cross the road?", "Now tell me about Mars.", "A joke."),
]
SIGNALS = [
    {"id": "bones#1", "label": "corrected", "confidence": 0.95, "source": "aftermath", "text": RECORDS[0]["aftermath"][0]["content"]},
    {"id": "stale#1", "label": "corrected", "confidence": 0.9, "source": "aftermath", "text": RECORDS[1]["aftermath"][0]["content"]},
    {"id": "rome#1", "label": "confirmed", "confidence": 0.97, "source": "aftermath", "text": "Great, thanks!"},
    {"id": "misc#1", "label": "unclear", "confidence": 0.5, "source": "aftermath", "text": "Now tell me about Mars."},
]


def test_signals_route_ground_and_build_datasets(tmp_path):
    run = RunLayout(tmp_path / "run")
    rnd = run.round(1)
    write_jsonl(rnd.revisions, RECORDS)
    write_jsonl(rnd.signals, SIGNALS)
    cfg = Config()
    cfg.curate.perplexity.enabled = False  # the one default filter that needs the model
    s = curate_round(cfg, rnd, run, backend=None, show_progress=False)  # the defaults need no model
    assert s.read == 4 == s.kept + s.dropped and s.kept == 2
    rejected = {r["id"]: r for r in read_jsonl(rnd.rejected)}
    assert rejected["misc#1"]["filter"] == "signal" and "unclear" in rejected["misc#1"]["reason"]
    assert rejected["stale#1"]["filter"] == "grounding" and "Canberra" in rejected["stale#1"]["reason"]
    assert rejected["stale#1"]["grounding"]["repeated"] == ["Sydney"]
    sft = {r["id"]: r["completion"][0]["content"] for r in read_jsonl(rnd.sft)}
    assert sft == {"bones#1": "An adult human has 206 bones.", "rome#1": "The capital of Italy is Rome."}
    (pair,) = read_jsonl(rnd.dpo)  # only the corrected turn has a preference pair
    assert pair["id"] == "bones#1" and pair["rejected"][0]["content"] == "An adult has 212 bones."
    counts = load_manifest(rnd.manifest)["stages"]["curate"]["counts"]
    assert counts["trains_on"] == {"revised": 1, "original": 1}
    assert counts["dropped_per_filter"]["signal"] == 1 and counts["dropped_per_filter"]["grounding"] == 1
    assert "signals.jsonl" in load_manifest(rnd.manifest)["stages"]["curate"]["inputs"]
