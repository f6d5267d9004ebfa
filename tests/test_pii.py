"""PII scrubbing (selfevolve/pii.py) and where it runs: the collect stage, for gateway captures and imported files.

No model: Presidio's pattern recognizers on the no-op NLP engine. Recall / precision on >= 1,000 seeded strings:
scripts/bench_pii.py (docs/bench/pii.md)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from selfevolve.collect import collect_round
from selfevolve.config import ConfigError, load_config
from selfevolve.layout import RunLayout
from selfevolve.manifest import load as load_manifest
from selfevolve.pii import PiiConfig, Scrubber, scrub_conversation, scrubber
from selfevolve.records import read_jsonl, write_jsonl
from selfevolve.store import ChatStore

EMAIL, CARD = "maria.garcia+shop@mail.example.co.uk", "4111 1111 1111 1111"

# (type, text, the PII string in it)
CASES = [
    ("EMAIL", "write to john.doe@gmail.com today", "john.doe@gmail.com"),
    ("EMAIL", f"my address: {EMAIL}.", EMAIL),
    ("PHONE", "call me at +1 (415) 555-2671 tonight", "415) 555-2671"),
    ("PHONE", "UK mobile 07700 900123, landline +44 20 7946 0958", "07700 900123"),
    ("PHONE", "Mein Festnetz: +49 30 901820", "30 901820"),
    ("CARD", f"my visa {CARD} was declined", CARD),
    ("CARD", "amex 3782-822463-10005 and mc 2221000000000009", "822463"),
    ("CARD", "unionpay 6212 3456 7890 1234 668 (19 digits)", "6212 3456 7890 1234 668"),
    ("IBAN", "IBAN DE89 3704 0044 0532 0130 00 please", "3704 0044 0532"),
    ("IBAN", "pay to GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("IP", "my server 203.0.113.57 is down", "203.0.113.57"),
    ("IP", "ssh to [2001:db8:85a3::8a2e:370:7334]:22", "2001:db8:85a3::8a2e:370:7334"),
    ("URL_CREDENTIALS", "git clone https://alice:s3cr3t!@git.example.com/repo.git", "alice:s3cr3t!"),
    ("URL_CREDENTIALS", "DATABASE_URL=postgres://app:pa55w0rd@10.0.0.7:5432/prod", "pa55w0rd"),
    ("SECRET", "export OPENAI_API_KEY=sk-proj-4fTq9ZkLw2mXv8RbN3yH7cJd", "4fTq9ZkLw2mXv8RbN3yH7cJd"),
    ("SECRET", "AWS key AKIAIOSFODNN7EXAMPLE leaked", "AKIAIOSFODNN7EXAMPLE"),
    ("SECRET", 'password = "hunter22"', "hunter22"),
    ("SECRET", "Authorization: Bearer abcDEF123456ghiJKL789", "abcDEF123456ghiJKL789"),
]

# PII-free technical text: none of it may change.
CLEAN = [
    "Upgrade to 2.10.1, then pip install torch==2.1.0 and npm i react@18.2.0.",
    "The meeting is on 2024-03-15 at 14:30; timestamp 1710513000.",
    "Order #4155552671 has not shipped; ticket OPS-2231 is blocked.",
    "app.run(host='0.0.0.0', port=8080); curl http://localhost:8080/health and 127.0.0.1:5000",
    "token = tokenizer(text)\npassword = input('Password: ')\nstd::vector<int> v; auto x = a::b;",
    "4111 1111 1111 1112 fails Luhn; ISBN 978-3-16-148410-0; pi = 3.14159265; 16.9.0",
    "git checkout 3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39, uuid 123e4567-e89b-12d3-a456-426614174000",
    "It costs $1,299.99 or €49,90 incl. VAT; 25% off; resolution 1920x1080; color #ff8800.",
    "SELECT id, email FROM users WHERE created_at > '2023-01-01';",
]


@pytest.fixture(scope="module")
def s() -> Scrubber:
    return scrubber(PiiConfig())


@pytest.mark.parametrize("etype,text,pii", CASES)
def test_each_type_is_replaced_by_its_placeholder(s, etype, text, pii):
    out, counts = s.scrub_text(text)
    assert pii not in out, out
    assert f"<{etype}>" in out and counts[etype] >= 1, (out, counts)


@pytest.mark.parametrize("text", CLEAN)
def test_pii_free_technical_text_is_unchanged(s, text):
    assert s.scrub_text(text) == (text, {})


def test_url_credentials_keep_scheme_and_path(s):
    out, _ = s.scrub_text("git clone https://alice:s3cr3t@git.example.com/repo.git")
    assert out == "git clone https://<URL_CREDENTIALS>/repo.git"


def test_scrub_conversation_keeps_shape_ids_and_numbers(s):
    rec = {"id": "c1", "source": "gateway", "messages": [
        {"role": "user", "content": f"my email is {EMAIL}"}, {"role": "assistant", "content": "Noted."}],
        "meta": {"seq": 7, "feedback": [{"message_index": 1, "rating": "down", "comment": "call +44 20 7946 0958"}]}}
    out, counts = scrub_conversation(rec)
    assert out["id"] == "c1" and out["source"] == "gateway" and out["meta"]["seq"] == 7
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"]
    assert out["messages"][0]["content"] == "my email is <EMAIL>"
    assert out["meta"]["feedback"][0]["comment"] == "call <PHONE>"
    assert counts == {"EMAIL": 1, "PHONE": 1}
    assert rec["messages"][0]["content"].endswith(EMAIL)  # the input record is not modified


def test_never_touches_the_network(monkeypatch):
    """tldextract fetches the public suffix list unless told not to; Presidio downloads missing spaCy models."""
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    fresh = Scrubber(PiiConfig())  # not the cached one: building must be offline too
    assert fresh.scrub_text("mail bob@startup.dev")[0] == "mail <EMAIL>"
    with pytest.raises(ConfigError, match="never downloads"):
        Scrubber(PiiConfig(entities=["EMAIL", "PERSON"], ner_model="xx_no_such_spacy_model"))


def test_building_the_scrubber_leaves_transformers_unimported_and_importable():
    """Presidio's NLP-engine package imports transformers (seconds) for an engine the scrubber never uses; it is
    hidden while Presidio is imported, then transformers imports as usual. A fresh process: pytest's has it."""
    code = ("import sys\nfrom selfevolve.pii import scrubber\n"
            "assert scrubber().scrub_text('mail bob@startup.dev')[0] == 'mail <EMAIL>'\n"
            "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
            "import transformers\nassert transformers.AutoTokenizer\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_an_ner_model_folder_is_used_as_the_nlp_engine(tmp_path):
    """``pii.ner_model`` wiring: a spaCy pipeline from a folder (blank here, so it finds no PERSON) next to the
    pattern recognizers."""
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank-en")
    s = Scrubber(PiiConfig(entities=["EMAIL", "PERSON"], ner_model=str(tmp_path / "blank-en")))
    assert s.scrub_text("Alice Smith, alice@web.de") == ("Alice Smith, <EMAIL>", {"EMAIL": 1})


def test_config_section_and_its_checks():
    assert load_config(None, ["pii.enabled=false"]).pii.enabled is False
    assert load_config(None).pii.enabled is True
    with pytest.raises(ConfigError, match="pii.entities: unknown type 'NAME'"):
        load_config(None, ["pii.entities=[EMAIL, NAME]"])
    with pytest.raises(ConfigError, match="PERSON needs pii.ner_model"):
        load_config(None, ["pii.entities=[PERSON]"])
    with pytest.raises(ConfigError, match="pii.score_threshold"):
        load_config(None, ["pii.score_threshold=0"])
    with pytest.raises(ConfigError, match="pii.phone_regions: unknown region 'XX'"):
        load_config(None, ["pii.phone_regions=[US, XX]"])


def _round_text(run: RunLayout, n: int) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in run.round(n).dir.rglob("*") if p.is_file())


def test_email_and_card_sent_in_a_chat_never_reach_the_collected_files(tmp_path):
    """Store (real SQLite) -> export -> collect: neither the email nor the card (nor a phone in feedback) is in any
    file of the round; counts conserved, entities counted in the manifest."""
    run = RunLayout(tmp_path / "run")
    store = ChatStore(run.chats_db)
    try:
        user = store.hash_user("u1", None)
        q = [{"role": "user", "content": f"I'm {EMAIL}, my card {CARD} was charged twice"}]
        store.record_exchange("g1", user, q, f"Sorry! I'll email {EMAIL} about card {CARD}.", "base", True)
        store.add_feedback("g1", "down", comment="just call me: +1 415 555 2671")
        store.record_exchange("g2", user, [{"role": "user", "content": "what is 2+2?"}], "4", "base", True)
    finally:
        store.close()
    src = tmp_path / "logs.jsonl"
    write_jsonl(src, [{"id": "f1", "messages": [{"role": "user", "content": f"card {CARD.replace(' ', '-')}?"},
                                                {"role": "assistant", "content": "Never share it."}]},
                      {"id": "bad", "messages": [{"role": "user", "content": f"only a question from {EMAIL}"}]}])
    rep = collect_round(run.round(1), run, [src], gateway=True, heldout_share=0.5)
    text = _round_text(run, 1)
    for secret in (EMAIL, CARD, CARD.replace(" ", "-"), "555 2671"):
        assert secret not in text
    got = {c["id"]: c for c in read_jsonl(run.round(1).conversations) + read_jsonl(run.round(1).heldout)}
    assert set(got) == {"g1", "g2", "f1"} and rep.conversations + rep.heldout == 3 and rep.rejected == 1
    assert got["g1"]["messages"][0]["content"] == "I'm <EMAIL>, my card <CARD> was charged twice"
    assert got["g2"]["messages"][1]["content"] == "4"
    counts = load_manifest(run.round(1).manifest)["stages"]["collect"]["counts"]
    assert counts["pii"] == {"EMAIL": 3, "CARD": 3, "PHONE": 1}, counts
    assert "PII scrubbed: CARD 3, EMAIL 3, PHONE 1" in rep.line()


def test_scrubbing_off_keeps_the_text(tmp_path):
    run = RunLayout(tmp_path / "run")
    src = tmp_path / "logs.jsonl"
    write_jsonl(src, [{"id": "f1", "messages": [{"role": "user", "content": f"mail {EMAIL}"},
                                                {"role": "assistant", "content": "ok"}]}])
    rep = collect_round(run.round(1), run, [src], gateway=False, pii=PiiConfig(enabled=False))
    assert EMAIL in _round_text(run, 1) and rep.pii is None and "PII scrubbed: off" in rep.line()
    assert json.loads(run.round(1).manifest.read_text())["stages"]["collect"]["counts"]["pii"] is None
