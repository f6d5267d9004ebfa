"""Tests for selfevolve.formats: importing ShareGPT / OpenAI / HF chat logs as found in the wild."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from selfevolve import records
from selfevolve.formats import ImportLimits, import_files, load_conversations, normalize_record

ASSETS = Path(__file__).parent / "assets" / "import"


def sg(*turns, id=None, key="conversations"):
    """A ShareGPT record from (from, value) pairs."""
    rec = {key: [{"from": f, "value": v} for f, v in turns]}
    if id is not None:
        rec["id"] = id
    return rec


def msgs(conv):
    return [(m["role"], m["content"]) for m in conv["messages"]]


def write_jsonl(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def check_conservation(report, convs, rejected):
    assert report.read == report.accepted + report.rejected
    assert report.rejected == len(rejected) == sum(report.reasons.values())
    assert report.conversations == len(convs)
    for r in rejected:
        assert isinstance(r["reason"], str) and r["reason"]
        assert isinstance(r["source"], str) and r["source"]
        json.dumps(r["record"])  # rejected items can be written as JSONL
    assert len({c["id"] for c in convs}) == len(convs)


# ---------------------------------------------------------------- single records

@pytest.mark.parametrize("alias", ["human", "user", "prompter", "HUMAN", " User "])
def test_user_aliases(alias):
    conv, reason = normalize_record(sg((alias, "q"), ("gpt", "a")), "x")
    assert reason is None and msgs(conv) == [("user", "q"), ("assistant", "a")]


@pytest.mark.parametrize("alias", ["gpt", "chatgpt", "bing", "bard", "assistant", "model", "bot", "GPT", " Assistant\n"])
def test_assistant_aliases(alias):
    conv, reason = normalize_record(sg(("human", "q"), (alias, "a")), "x")
    assert reason is None and msgs(conv) == [("user", "q"), ("assistant", "a")]


def test_system_role_and_role_content_turns():
    raw = {"conversations": [{"role": "System", "content": "be nice"}, {"role": "user", "content": "q"},
                             {"role": "assistant", "content": "a"}]}
    conv, _ = normalize_record(raw, "f:1")
    assert msgs(conv) == [("system", "be nice"), ("user", "q"), ("assistant", "a")]
    assert conv["source"] == "f:1"


@pytest.mark.parametrize("key", ["items", "messages"])
def test_other_turn_keys(key):
    conv, reason = normalize_record(sg(("human", "q"), ("gpt", "a"), key=key), "x")
    assert reason is None and msgs(conv) == [("user", "q"), ("assistant", "a")]


def test_first_non_empty_turn_list_wins():
    raw = {"conversations": [], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
           "items": "not turns"}
    assert msgs(normalize_record(raw, "x")[0]) == [("user", "q"), ("assistant", "a")]
    assert normalize_record({"items": "text"}, "x") == (None, "no_turns: 'items' is not a list")


def test_unknown_role_rejected():
    conv, reason = normalize_record(sg(("human", "q"), ("xyz", "a")), "x")
    assert conv is None and reason == "unknown_role: conversations[1].from is 'xyz'"


def test_empty_turns_dropped_and_whitespace_stripped():
    conv, _ = normalize_record(sg(("human", "  q \n"), ("gpt", "   "), ("human", ""), ("gpt", " a ")), "x")
    assert msgs(conv) == [("user", "q"), ("assistant", "a")]


def test_consecutive_same_role_merged():
    conv, _ = normalize_record(sg(("human", "one"), ("user", "two"), ("gpt", "a"), ("bard", "b"), ("human", "three")), "x")
    assert msgs(conv) == [("user", "one\n\ntwo"), ("assistant", "a\n\nb"), ("user", "three")]


def test_late_system_dropped_and_leading_assistant_dropped():
    raw = sg(("system", "s1"), ("system", "s2"), ("gpt", "Hi, how can I help?"), ("human", "q"),
             ("system", "late"), ("human", "q2"), ("gpt", "a"))
    conv, _ = normalize_record(raw, "x")
    assert msgs(conv) == [("system", "s1\n\ns2"), ("user", "q\n\nq2"), ("assistant", "a")]


def test_top_level_system_field():
    raw = {**sg(("human", "q"), ("gpt", "a")), "system": " be brief "}
    assert msgs(normalize_record(raw, "x")[0])[0] == ("system", "be brief")


@pytest.mark.parametrize("turns", [
    [("human", "q")],
    [("gpt", "a")],
    [("system", "s"), ("human", "q")],
    [("gpt", "hello"), ("human", "q")],
    [("human", "  "), ("gpt", "a")],
    [],
])
def test_no_exchange_rejected(turns):
    conv, reason = normalize_record(sg(*turns), "x")
    assert conv is None and reason == "no_exchange: no user turn answered by an assistant turn"


def test_non_string_values():
    raw = {"conversations": [
        {"from": "human", "value": None}, {"from": "human", "value": 42},
        {"from": "gpt", "value": ["a", "b"]}, {"from": "human", "value": True},
        {"from": "gpt", "value": [{"type": "text", "text": "p1"}, {"type": "text", "text": "p2"}]},
        {"from": "human", "value": 1.5}, {"from": "gpt", "value": "ok"},
    ]}
    conv, reason = normalize_record(raw, "x")
    assert reason is None
    assert msgs(conv) == [("user", "42"), ("assistant", "a\nb"), ("user", "True"), ("assistant", "p1\np2"),
                          ("user", "1.5"), ("assistant", "ok")]


@pytest.mark.parametrize("value", [{"text": "x"}, [{"type": "image_url", "image_url": {"url": "u"}}], [1, 2], [None]])
def test_non_text_content_rejected(value):
    conv, reason = normalize_record({"conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "a"}]}, "x")
    assert conv is None and reason.startswith("non_text: conversations[0].value holds ")


@pytest.mark.parametrize("raw", [None, 3, "s", [1], {}, {"conversations": "text"}, {"conversations": [1]},
                                 {"conversations": [{"value": "no role"}]}, {"messages": [{"role": 5, "content": "x"}]}])
def test_malformed_records_rejected_with_reason(raw):
    conv, reason = normalize_record(raw, "x")
    assert conv is None and isinstance(reason, str) and reason


def test_ids_kept_or_derived_from_content():
    conv, _ = normalize_record(sg(("human", "q"), ("gpt", "a"), id=17), "x")
    assert conv["id"] == "17"
    for missing in (None, "", "  "):
        raw = sg(("human", "q"), ("gpt", "a"))
        if missing is not None:
            raw["id"] = missing
        conv, _ = normalize_record(raw, "x")
        assert conv["id"] == records.content_id(conv["messages"])


def test_unknown_format_raises():
    with pytest.raises(ValueError, match="sharegpt"):
        load_conversations([], fmt="alpaca")
    with pytest.raises(ValueError):
        normalize_record({}, "x", fmt="nope")


def test_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_conversations([tmp_path / "nope.jsonl"])


# ---------------------------------------------------------------- OpenAI messages

def test_openai_messages_jsonl_with_tools_and_garbage():
    convs, rejected, report = load_conversations([ASSETS / "messy.jsonl"])
    check_conservation(report, convs, rejected)
    assert report.read == 8 and report.accepted == 2 and report.rejected == 6
    first, tools = convs
    assert first["id"] == "a1" and msgs(first) == [("user", "Hi"), ("assistant", "Hello!")]
    assert first["source"] == "messy.jsonl:1"
    assert msgs(tools) == [("system", "Be terse."), ("user", "Weather?"), ("assistant", "Sunny.")]
    assert tools["source"] == "messy.jsonl:9"
    by_source = {r["source"]: r for r in rejected}
    assert by_source["messy.jsonl:3"]["reason"].startswith("invalid_json: ")
    assert by_source["messy.jsonl:3"]["record"].startswith('{"messages"')  # the raw line text
    assert by_source["messy.jsonl:4"]["record"] == 42
    assert by_source["messy.jsonl:8"]["reason"] == "unknown_role: messages[0].role is 'robot'"


def test_openai_fmt_only_reads_messages(tmp_path):
    path = write_jsonl(tmp_path / "o.jsonl", [sg(("human", "q"), ("gpt", "a")),
                                             sg(("human", "q"), ("gpt", "a"), key="messages")])
    convs, rejected, report = load_conversations([path], fmt="openai")
    assert report.accepted == 1 and rejected[0]["reason"] == "no_turns: no messages list"


# ---------------------------------------------------------------- ShareGPT JSON containers

def test_sharegpt_json_list_and_data_wrapper(tmp_path):
    recs = [sg(("human", "q1"), ("gpt", "a1"), id="r1"), sg(("human", "q2"), ("gpt", "a2"), id="r2")]
    (tmp_path / "list.json").write_text(json.dumps(recs, indent=2))
    (tmp_path / "wrap.json").write_text(json.dumps({"data": recs, "version": 1}))
    (tmp_path / "wrap2.json").write_text(json.dumps({"conversations": recs}))
    (tmp_path / "one.json").write_text(json.dumps(recs[0]))
    for name in ("list.json", "wrap.json", "wrap2.json"):
        convs, rejected, report = load_conversations([tmp_path / name], fmt="sharegpt")
        assert [c["id"] for c in convs] == ["r1", "r2"] and not rejected
        assert [c["source"] for c in convs] == [f"{name}#0", f"{name}#1"]
    convs, _, report = load_conversations([tmp_path / "one.json"])
    assert [c["id"] for c in convs] == ["r1"] and report.read == 1


def test_sharegpt_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [sg(("human", "q"), ("gpt", "a"), id="x")])
    convs, _, report = load_conversations([path])
    assert convs[0]["id"] == "x" and convs[0]["source"] == "s.jsonl:1"


def test_json_that_does_not_parse_falls_back_to_lines(tmp_path):
    path = tmp_path / "multi.json"  # JSONL content under a .json name
    write_jsonl(path, [sg(("human", "q"), ("gpt", "a")), sg(("human", "q2"), ("gpt", "a2"))])
    convs, rejected, report = load_conversations([path])
    assert report.accepted == 2 and [c["source"] for c in convs] == ["multi.json:1", "multi.json:2"]


def test_duplicate_ids_suffixed(tmp_path):
    recs = [sg(("human", f"q{i}"), ("gpt", "a"), id=rid) for i, rid in enumerate(["x", "x", "x-2", "x", "y"])]
    convs, _, _ = load_conversations([write_jsonl(tmp_path / "d.jsonl", recs)])
    # streamed: a repeat takes the first free suffix; a later record whose id was given away is suffixed in turn
    assert [c["id"] for c in convs] == ["x", "x-2", "x-2-2", "x-3", "y"]
    assert [c["messages"][0]["content"] for c in convs] == ["q0", "q1", "q2", "q3", "q4"]


def test_duplicates_across_files_and_content_ids(tmp_path):
    rec = sg(("human", "same"), ("gpt", "same"))
    a = write_jsonl(tmp_path / "a.jsonl", [rec])
    b = write_jsonl(tmp_path / "b.jsonl", [rec, rec])
    convs, _, _ = load_conversations([a, b])
    cid = records.content_id(convs[0]["messages"])
    assert [c["id"] for c in convs] == [cid, f"{cid}-2", f"{cid}-3"]


# ---------------------------------------------------------------- FastChat split chunks

def test_split_chunks_rejoined_in_numeric_order(tmp_path):
    recs = [sg(("human", f"q{n}"), ("gpt", f"a{n}"), id=f"abc_{n}") for n in (10, 2, 0, 9, 1, 3, 4, 5, 6, 7, 8)]
    recs.insert(3, sg(("human", "other"), ("gpt", "x"), id="zzz"))
    convs, rejected, report = load_conversations([write_jsonl(tmp_path / "s.jsonl", recs)])
    check_conservation(report, convs, rejected)
    assert report.read == 12 and report.accepted == 12 and report.conversations == 2
    other, joined = convs  # a split chat is emitted when its group closes (here: at the end of the file)
    assert joined["id"] == "abc" and other["id"] == "zzz"
    assert [c for r, c in msgs(joined) if r == "user"] == [f"q{n}" for n in range(11)]
    assert joined["source"] == "s.jsonl:3"  # the chunk numbered 0


def test_split_chunks_seam_merge_from_asset():
    convs, rejected, report = load_conversations([ASSETS / "sharegpt_split.json"])
    check_conservation(report, convs, rejected)
    assert report.read == 3 and report.conversations == 2
    solo, joined = convs
    assert solo["id"] == "solo" and joined["id"] == "QWJhYvA"
    assert msgs(joined) == [("user", "Write a long story."), ("assistant", "Once upon a time\n\nthere was a fox."),
                            ("user", "Go on."), ("assistant", "The end.")]


def test_rejected_middle_chunk_splits_the_chat(tmp_path):
    """The piece between two good ones is rejected: the chat is split there, not joined across the gap (later
    feedback would read as hindsight on an answer it never followed)."""
    recs = [sg(("human", "q0"), ("gpt", "a0"), id="g_0"), sg(("human", "q1"), ("alien", "a1"), id="g_1"),
            sg(("human", "q2"), ("gpt", "a2"), id="g_2"), sg(("human", "q"), ("gpt", "a"), id="ok")]
    convs, rejected, report = load_conversations([write_jsonl(tmp_path / "g.jsonl", recs)])
    check_conservation(report, convs, rejected)
    assert {c["id"]: msgs(c) for c in convs} == {"ok": [("user", "q"), ("assistant", "a")],
                                                 "g_0": [("user", "q0"), ("assistant", "a0")],
                                                 "g_2": [("user", "q2"), ("assistant", "a2")]}
    assert report.read == 4 and report.accepted == 3 and report.rejected == 1
    assert report.reasons == {"unknown_role": 1} and report.repairs == {"chunk_gap": 1}
    assert [r["source"] for r in rejected] == ["g.jsonl:2"]


def test_chunk_gap_splits_into_runs(tmp_path):
    """_0, _1, _9, _10 of one-exchange pieces: two runs, the later one keeps the id of its first piece."""
    recs = [sg(("human", f"q{n}"), ("gpt", f"a{n}"), id=f"c_{n}") for n in (0, 1, 9, 10)]
    convs, rejected, report = load_conversations([write_jsonl(tmp_path / "c.jsonl", recs)])
    check_conservation(report, convs, rejected)
    assert [(c["id"], [t for r, t in msgs(c) if r == "user"]) for c in convs] == [("c", ["q0", "q1"]),
                                                                                  ("c_9", ["q9", "q10"])]
    assert report.accepted == 4 and report.repairs == {"chunk_gap": 1}


def test_fastchat_turn_index_numbering_and_repeated_seam_turn(tmp_path):
    """ShareGPT V3: a piece is numbered by its first turn's index and repeats the previous piece's last turn."""
    recs = [sg(("human", "q0"), ("gpt", "a0"), ("human", "q1"), ("gpt", "a1 long"), id="v_0"),
            sg(("gpt", "a1 long"), ("human", "q2"), ("gpt", "a2"), id="v_3"),
            sg(("human", "q3"), ("gpt", "a3"), id="v_6")]
    convs, rejected, report = load_conversations([write_jsonl(tmp_path / "v.jsonl", recs)])
    check_conservation(report, convs, rejected)
    assert [c["id"] for c in convs] == ["v"]
    assert msgs(convs[0]) == [("user", "q0"), ("assistant", "a0"), ("user", "q1"), ("assistant", "a1 long"),
                              ("user", "q2"), ("assistant", "a2"), ("user", "q3"), ("assistant", "a3")]
    assert report.repairs == {"chunk_overlap": 1}


def test_duplicate_chunk_numbers_rejected_not_concatenated(tmp_path):
    recs = [sg(("human", "q0"), ("gpt", "a0"), id="d_0"), sg(("human", "q1"), ("gpt", "a1"), id="d_1"),
            sg(("human", "other"), ("gpt", "x"), id="d_1"), sg(("human", "q2"), ("gpt", "a2"), id="d_2"),
            # ShareGPT V3 holds 123 ids twice, once with no turns: that copy is rejected, the other one joins
            {"id": "e_0", "conversations": []}, sg(("human", "q0"), ("gpt", "a0"), id="e_0"),
            sg(("human", "q1"), ("gpt", "a1"), id="e_1")]
    convs, rejected, report = load_conversations([write_jsonl(tmp_path / "d.jsonl", recs)])
    check_conservation(report, convs, rejected)
    assert [c["id"] for c in convs] == ["d_0", "d_2", "e"]
    assert report.reasons == {"duplicate_chunk": 2, "no_exchange": 1}
    assert all("'d_1'" in r["reason"] for r in rejected if r["reason"].startswith("duplicate_chunk"))
    assert report.repairs == {"chunk_gap": 1}


def test_chunk_coming_back_later_is_not_joined(tmp_path):
    """A piece after another chat's piece starts a new group: joining it could skip what came between."""
    recs = [sg(("human", "q0"), ("gpt", "a0"), id="a_0"), sg(("human", "x"), ("gpt", "y"), id="b_0"),
            sg(("human", "q1"), ("gpt", "a1"), id="a_1")]
    convs, rejected, report = load_conversations([write_jsonl(tmp_path / "a.jsonl", recs)])
    assert [c["id"] for c in convs] == ["a_0", "b_0", "a_1"] and report.repairs == {"chunk_gap": 1}


def test_chunks_of_different_files_are_not_joined(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [sg(("human", "q0"), ("gpt", "a0"), id="f_0")])
    b = write_jsonl(tmp_path / "b.jsonl", [sg(("human", "q1"), ("gpt", "a1"), id="f_1")])
    convs, _, _ = load_conversations([a, b])
    assert [c["id"] for c in convs] == ["f_0", "f_1"]


def test_lone_chunk_and_openai_ids_are_not_rejoined(tmp_path):
    recs = [sg(("human", "q"), ("gpt", "a"), id="foo_0"),
            {"id": "m_0", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"id": "m_1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}]
    convs, _, _ = load_conversations([write_jsonl(tmp_path / "l.jsonl", recs)])
    assert [c["id"] for c in convs] == ["m_0", "m_1", "foo_0"]


# ---------------------------------------------------------------- garbage and fuzz

def test_garbage_file_never_crashes(tmp_path):
    rng = random.Random(0)
    (tmp_path / "bytes.jsonl").write_bytes(bytes(rng.randrange(256) for _ in range(5000)))
    (tmp_path / "lines.jsonl").write_bytes(b"\xef\xbb\xbf\n\n{bad json\n1\n\"str\"\nnull\ntrue\n[]\n{}\n\xff\xfe{\"id\": 1}\n"
                                           + b"[" * 100000 + b"\n" + b"9" * 10000 + b"\n")
    (tmp_path / "scalar.json").write_text("123")
    (tmp_path / "null.json").write_text("null")
    (tmp_path / "nested.json").write_text("[1, \"x\", null, [], {\"conversations\": {}}]")
    (tmp_path / "truncated.json").write_text(json.dumps([sg(("human", "q"), ("gpt", "a"))], indent=1)[:-5])
    (tmp_path / "empty.jsonl").write_text("")
    big = "x" * 3_000_000
    write_jsonl(tmp_path / "huge.jsonl", [sg(("human", big), ("gpt", "a")), {"conversations": [{"from": big, "value": "v"}]}])
    paths = sorted(tmp_path.iterdir())
    convs, rejected, report = load_conversations(paths)
    check_conservation(report, convs, rejected)
    assert report.read > 10 and report.reasons["turn_too_long"] == 1 and report.reasons["invalid_utf8"] > 0
    for r in rejected:  # a long raw value is kept as its text, cut to 2000 characters
        rec = r["record"]
        assert len(rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False)) <= 2000
    assert any(len(r) < 80 for r in report.reasons)  # the huge role name is cut in the reason
    summary = report.summary()
    assert "\n" not in summary and f"read {report.read} = accepted {report.accepted}" in summary


def _random_value(rng: random.Random, depth: int = 0):
    roles = ["human", "gpt", "user", "assistant", "system", "tool", "bard", "alien", "", None, 3]
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, 0, -1.5, "", " ", "text", "\u2028", "x" * rng.randrange(50)])
    if kind == 1:
        return rng.choice(roles)
    if kind == 2:
        return {"type": "text", "text": rng.choice(["p", "", None])}
    if kind == 3:
        return {rng.choice(["from", "role"]): rng.choice(roles),
                rng.choice(["value", "content"]): _random_value(rng, depth + 1)}
    if kind == 4:
        return rng.choice(["abc_0", "abc_1", "abc_10", "q_2", "id", 7, None, ""])
    if kind in (5, 6):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    keys = ["id", "conversations", "messages", "items", "data", "system", "from", "value"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _random_record(rng: random.Random, i: int):
    """Mostly plausible records with a sprinkling of every kind of breakage."""
    if rng.random() < 0.15:
        return _random_value(rng)
    turns = []
    for _ in range(rng.randrange(7)):
        turns.append(_random_value(rng, 3) if rng.random() < 0.03 else
                     {"from": rng.choice(["human", "gpt"] * 4 + ["system", "tool", "GPT ", "weird"]),
                      "value": rng.choice(["hi", "yo", "ok"] * 3 + ["", None, 5, ["a", {"type": "text", "text": "b"}], {"x": 1}])})
    rec = {rng.choice(["conversations", "messages", "items"]): turns}
    if rng.random() < 0.8:
        rec["id"] = rng.choice([f"r{i}"] * 6 + ["abc_0", "abc_1", "abc_2", "abc_10", "z_0", "z_1", "dup", "", None, 5])
    return rec


def test_fuzz_conservation(tmp_path):
    rng = random.Random(1234)
    recs = [_random_record(rng, i) for i in range(200)]
    for raw in recs:
        conv, reason = normalize_record(raw, "fuzz")
        assert (conv is None) != (reason is None)
        assert conv is not None or (isinstance(reason, str) and reason)
    lines = [json.dumps(r) if rng.random() < 0.9 else json.dumps(r)[: rng.randrange(1, 20)] for r in recs]
    (tmp_path / "fuzz.jsonl").write_text("\n".join(lines))
    (tmp_path / "fuzz.json").write_text(json.dumps(recs))
    convs, rejected, report = load_conversations([tmp_path / "fuzz.jsonl", tmp_path / "fuzz.json"])
    check_conservation(report, convs, rejected)
    assert report.read == 400 and report.accepted > 0 and report.rejected > 0
    for conv in convs:
        roles = [m["role"] for m in conv["messages"]]
        assert all(m["content"] for m in conv["messages"])
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert "system" not in roles[1:] and roles[roles[0] == "system"] == "user"


# ---------------------------------------------------------------- HF datasets on disk

def test_hf_dataset_on_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"id": ["h1", "h2", "h3"],
            "conversations": [[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                              [{"from": "human", "value": "q2"}, {"from": "alien", "value": "a2"}],
                              [{"from": "human", "value": "q3"}, {"from": "gpt", "value": "a3"}]]}
    ds = datasets.Dataset.from_dict(rows)
    ds.save_to_disk(str(tmp_path / "single"))
    convs, rejected, report = load_conversations([tmp_path / "single"])
    check_conservation(report, convs, rejected)
    assert [c["id"] for c in convs] == ["h1", "h3"] and convs[1]["source"] == "single#2"
    assert rejected[0]["reason"] == "unknown_role: conversations[1].from is 'alien'"

    msgs_ds = datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]]})
    datasets.DatasetDict({"train": ds, "test": msgs_ds}).save_to_disk(str(tmp_path / "dd"))
    convs, rejected, report = load_conversations([tmp_path / "dd"], fmt="hf")
    check_conservation(report, convs, rejected)
    assert report.read == 4 and report.conversations == 3
    assert {c["source"] for c in convs} == {"dd/train#0", "dd/train#2", "dd/test#0"}


def test_directory_errors(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="plain"):
        load_conversations([tmp_path / "plain"])
    f = write_jsonl(tmp_path / "f.jsonl", [])
    with pytest.raises(ValueError, match="f.jsonl"):
        load_conversations([f], fmt="hf")


# ---------------------------------------------------------------- content that used to stop an import (issue 14)

SURR = "\ud800"


@pytest.mark.parametrize("raw,where", [
    ({"messages": [{"role": "user", "content": "hi" + SURR}, {"role": "assistant", "content": "a"}]},
     "messages[0].content"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": SURR}]}, "conversations[1].value"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": SURR}]},
                   {"role": "assistant", "content": "a"}]}, "messages[0].content"),
    ({**sg(("human", "q"), ("gpt", "a")), "system": "s" + SURR}, "system"),
    ({**sg(("human", "q"), ("gpt", "a")), "id": "x" + SURR}, "id"),
    ({**sg(("human", "q"), ("gpt", "a")), "id": "x" + SURR + "_0"}, "id"),
])
def test_lone_surrogate_rejected_with_its_place_and_output_writable(tmp_path, raw, where):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(raw) + "\n" + json.dumps(sg(("human", "q"), ("gpt", "a"), id="ok")) + "\n")
    out, rej = tmp_path / "out.jsonl", tmp_path / "out.rejected.jsonl"
    report = import_files([path], out, rej)
    assert report.accepted == 1 and report.reasons == {"invalid_unicode": 1}
    (rejected,) = records.read_jsonl(rej)
    assert rejected["reason"] == f"invalid_unicode: lone surrogate in {where}"
    assert "\\ud800" in json.dumps(rejected["record"])  # kept, written as an escape
    assert [c["id"] for c in records.read_jsonl(out)] == ["ok"]


def test_surrogate_role_rejected_with_escaped_reason():
    conv, reason = normalize_record({"messages": [{"role": SURR, "content": "q"}]}, "x")
    assert conv is None and reason == "unknown_role: messages[0].role is '\\ud800'"
    reason.encode("utf-8")


def test_non_utf8_bytes_rejected_per_record(tmp_path):
    good = json.dumps(sg(("human", "q"), ("gpt", "a"))).encode()
    bad = json.dumps(sg(("human", "caf\u00e9"), ("gpt", "a")), ensure_ascii=False).encode().replace("\u00e9".encode(), b"\xe9")
    (tmp_path / "l.jsonl").write_bytes(good + b"\n" + bad + b"\n")
    (tmp_path / "a.json").write_bytes(b"[" + good + b",\n" + bad + b",\n" + good + b"]")
    (tmp_path / "one.json").write_bytes(bad)  # one document: no record boundary to blame, the turn is named
    convs, rejected, report = load_conversations(sorted(tmp_path.iterdir()))
    check_conservation(report, convs, rejected)
    assert report.accepted == 3
    at = bad.index(b"\xe9")
    assert sorted((r["source"], r["reason"]) for r in rejected) == [
        ("a.json#1", f"invalid_utf8: byte 0xe9 at character {at}"),
        ("l.jsonl:2", f"invalid_utf8: byte 0xe9 at byte {at} of the line"),
        ("one.json#0", "invalid_unicode: lone surrogate in conversations[0].value")]
    assert all("\\xe9" in r["record"] or "\\udce9" in json.dumps(r["record"]) for r in rejected)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_rejected(tmp_path, token):
    line = '{"conversations": [{"from": "human", "value": %s}, {"from": "gpt", "value": "a"}]}' % token
    (tmp_path / "n.jsonl").write_text(line + "\n")
    (tmp_path / "n.json").write_text("[" + line + "]")
    convs, rejected, report = load_conversations([tmp_path / "n.jsonl", tmp_path / "n.json"])
    assert not convs and report.reasons == {"invalid_json": 2}
    assert all(r["reason"].startswith("invalid_json: ") and token.lstrip("-")[:3] in r["reason"] for r in rejected)


def test_odd_ids_deep_nesting_and_nan_in_a_wrapper(tmp_path):
    turns = '"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]'
    deep = "[" * 900 + "]" * 900
    (tmp_path / "i.jsonl").write_text("\n".join('{"id": %s, %s}' % (i, turns) for i in [deep, '{"a": 1}', "7", "true"]))
    (tmp_path / "w.json").write_text('{"data": [{"id": "n", %s, "score": NaN}, {"id": "ok", %s}]}' % (turns, turns))
    (tmp_path / "d.json").write_text("[" + deep + ", {%s}]" % turns)
    out = tmp_path / "o.jsonl"
    report = import_files(sorted(tmp_path.glob("*.json*")), out, tmp_path / "r.jsonl")
    rejected = records.read_jsonl(tmp_path / "r.jsonl")
    assert [c["id"] for c in records.read_jsonl(out)] == [records.content_id([{"role": "user", "content": "q"},
                                                                              {"role": "assistant", "content": "a"}]),
                                                          "7", "True", "ok"]
    assert sorted(r["reason"] for r in rejected) == ["bad_id: id is a dict", "bad_id: id is a list",
                                                     "invalid_json: NaN is not a JSON value",
                                                     "not_a_record: the record is list"]
    assert report.read == 8


def test_caps_reject_with_reasons(tmp_path):
    limits = ImportLimits(max_record_bytes=300, max_turns=4, max_turn_chars=50)
    recs = [sg(("human", "q" * 51), ("gpt", "a")), sg(*[("human", "q"), ("gpt", "a")] * 3),
            sg(("human", "q" * 40), ("gpt", "a" * 40), ("human", "q" * 40), ("gpt", "a" * 40), id="big"),
            sg(("human", "q"), ("gpt", "a"), id="ok"),
            sg(("human", "q0"), ("gpt", "a0"), ("human", "q1"), ("gpt", "a1"), id="t_0"),
            sg(("human", "q2"), ("gpt", "a2"), id="t_4")]
    path = write_jsonl(tmp_path / "c.jsonl", recs)
    (tmp_path / "c.json").write_text(json.dumps(recs))
    for p in (path, tmp_path / "c.json"):
        convs, rejected, report = load_conversations([p], limits=limits)
        check_conservation(report, convs, rejected)
        assert [c["id"] for c in convs] == ["ok"]
        assert report.reasons == {"turn_too_long": 1, "too_many_turns": 3, "record_too_large": 1}, p
        reasons = {r["reason"] for r in rejected}
        assert "turn_too_long: conversations[0].value has 51 characters (max 50)" in reasons
        assert "too_many_turns: 6 turns (max 4)" in reasons
        assert "too_many_turns: 6 turns once rejoined (max 4)" in reasons


def test_huge_jsonl_line_skipped_unread(tmp_path):
    path = tmp_path / "h.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps(sg(("human", "x" * 5000), ("gpt", "a"))) + "\n")
        f.write(json.dumps(sg(("human", "q"), ("gpt", "a"), id="ok")) + "\n")
    convs, rejected, report = load_conversations([path], limits=ImportLimits(max_record_bytes=1000))
    assert [c["id"] for c in convs] == ["ok"]
    assert rejected[0]["reason"].startswith("record_too_large: line of 5,") and len(rejected[0]["record"]) <= 2000


# ---------------------------------------------------------------- JSON arrays, streamed

def _array_recs(n=40):
    return [sg(("human", f"q{i} \u00e9\U0001F600"), ("gpt", f"a{i}"), id=f"r{i}") for i in range(n)]


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_array_streaming_same_result_at_any_block_size(tmp_path, monkeypatch, block):
    from selfevolve import formats_items
    monkeypatch.setattr(formats_items, "BLOCK", block)
    text = json.dumps(_array_recs(), indent=2, ensure_ascii=False)
    (tmp_path / "a.json").write_text(text, encoding="utf-8")
    (tmp_path / "cut.json").write_text(text[: len(text) * 3 // 4], encoding="utf-8")
    # a wrong character in record 5 of a pretty-printed file: that record is rejected, reading goes on
    (tmp_path / "bad.json").write_text(text.replace('"id": "r5"', '"id": "r5" oops'), encoding="utf-8")
    # the same in compact JSON with numbers as top-level elements and text after the ']'
    (tmp_path / "misc.json").write_text('[1, 2.5 , {"conversations": [{"from": "human", "value": "q"}, '
                                        '{"from": "gpt", "value": "a"}]}] tail')
    results = {}
    for name in ("a.json", "cut.json", "bad.json", "misc.json"):
        convs, rejected, report = load_conversations([tmp_path / name])
        check_conservation(report, convs, rejected)
        results[name] = ([c["id"] for c in convs], [(r["source"], r["reason"]) for r in rejected])
    assert results["a.json"] == ([f"r{i}" for i in range(40)], [])
    ids, rej = results["cut.json"]
    assert ids == [f"r{i}" for i in range(len(ids))] and len(ids) >= 25
    assert rej == [(f"cut.json#{len(ids)}", rej[0][1])] and rej[0][1].startswith("invalid_json: the file ends inside")
    assert results["bad.json"] == ([f"r{i}" for i in range(40) if i != 5],
                                   [("bad.json#5", "invalid_json: Expecting ',' delimiter")])
    assert results["misc.json"][0] == [records.content_id([{"role": "user", "content": "q"},
                                                           {"role": "assistant", "content": "a"}])]
    assert [r for _, r in results["misc.json"][1]] == ["not_a_record: the record is int",
                                                        "not_a_record: the record is float",
                                                        "invalid_json: text after the closing ']'"]


# ---------------------------------------------------------------- the import command

def test_import_command_streams_and_reports_codes(tmp_path):
    from typer.testing import CliRunner
    from selfevolve.cli import app

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(sg(("human", "q"), ("gpt", "a"), id="ok")) + "\n{bad\n"
                   + json.dumps(sg(("human", SURR), ("gpt", "a"))) + "\n")
    out = tmp_path / "o" / "out.jsonl"
    res = CliRunner().invoke(app, ["import", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "read 3 = accepted 1 + rejected 2" in res.output
    assert "invalid_json 1" in res.output and "invalid_unicode 1" in res.output
    assert len(records.read_jsonl(out)) == 1 and len(records.read_jsonl(out.with_suffix(".rejected.jsonl"))) == 2

    for bad_out, needle in [(src / "x.jsonl", "cannot create the folder"), (tmp_path / "o", "is a directory")]:
        res = CliRunner().invoke(app, ["import", str(src), "--out", str(bad_out)])
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(app, ["import", str(src), "--out", str(out), "--set", "data.limits.max_turn_chars=0"])
    assert res.exit_code == 2 and "data.limits.max_turn_chars" in res.output


def test_collect_round_survives_bad_unicode(tmp_path):
    """Issue 14: one lone surrogate used to stop a round's collect when it wrote the round's files."""
    from selfevolve.collect import collect_round
    from selfevolve.layout import RunLayout
    from selfevolve.pii import PiiConfig

    run = RunLayout(tmp_path / "run")
    src = tmp_path / "a.jsonl"
    src.write_bytes(b"\n".join([json.dumps(sg(("human", "q"), ("gpt", "a"), id="ok")).encode(),
                                json.dumps(sg(("human", "q" + SURR), ("gpt", "a"), id="s")).encode(),
                                json.dumps(sg(("human", "caf\u00e9"), ("gpt", "a")), ensure_ascii=False).encode()
                                .replace("\u00e9".encode(), b"\xe9")]))
    # PII scrubbing off: it only sees what the import let through, and its Presidio import takes ~15 s
    report = collect_round(run.round(1), run, [src], gateway=False, pii=PiiConfig(enabled=False))
    assert (report.read, report.rejected, report.conversations) == (3, 2, 1)
    reasons = sorted(r["reason"] for r in records.read_jsonl(run.round(1).import_rejected))
    assert reasons[0].startswith("invalid_unicode: ") and reasons[1].startswith("invalid_utf8: ")
