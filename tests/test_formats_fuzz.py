"""Property-based fuzzing of the import (selfevolve/formats*.py) with hypothesis: malformed records in every
format (ShareGPT JSON arrays and documents, ShareGPT JSON Lines, OpenAI-messages JSON Lines, HF dataset
folders), written as files the way broken exporters write them (lone surrogates as raw bytes, NaN tokens, cut
files, flipped bytes).

Properties: the import never raises on content; read = accepted + rejected; every rejection has a reason
``code: detail`` with a known code; the output files are valid UTF-8 JSON Lines holding well-formed
conversations with unique ids; an unmutated file yields exactly one item per record. Runs are derandomized
(the same examples every run) and generate well over 1,000 records (asserted).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfevolve.formats import ImportLimits, import_files, reason_code

CODES = {"invalid_json", "invalid_utf8", "record_too_large", "unreadable_dataset", "not_a_record", "no_turns",
         "bad_turn", "missing_role", "unknown_role", "non_text", "invalid_number", "invalid_unicode",
         "turn_too_long", "too_many_turns", "no_exchange", "bad_id", "duplicate_chunk"}
REASON = re.compile(r"([a-z0-9_]+): \S.*", re.S)
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- strategies

SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)  # st.characters() never yields category Cs
SPECIAL = st.sampled_from("\x00\n\r\"\\\u2028\ufeff\xa0 é😀")
TEXT = st.text(st.one_of(st.characters(), st.characters(), st.characters(), st.characters(), SURROGATES, SPECIAL),
               max_size=12)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), FLOATS, TEXT)
KEYS = st.one_of(st.sampled_from(["id", "conversations", "messages", "items", "data", "system", "from", "value",
                                  "role", "content", "type", "text"]), TEXT)
JSONISH = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(KEYS, kids, max_size=3),
                       max_leaves=6)
ROLES = st.one_of(st.sampled_from(["human", "gpt", "user", "assistant", "system", "tool", "function", " GPT",
                                   "chatgpt", "bard", "robot", ""]), TEXT, st.integers(), st.none())
PARTS = st.lists(st.one_of(TEXT, st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                        "text": st.one_of(TEXT, st.none())})), max_size=3)
CONTENT = st.one_of(TEXT, TEXT, st.sampled_from(["ok", "q", "a"]), st.none(), st.integers(), FLOATS, PARTS, JSONISH)
IDS = st.one_of(st.sampled_from(["c_0", "c_1", "c_2", "c_3", "c_9", "c_10", "d_0", "d_1", "x", "", "c_01"]),
                st.integers(0, 10**6).map(lambda n: f"r{n}"), st.integers(0, 10**6).map(lambda n: f"r{n}"),
                TEXT, st.integers(), st.none(), JSONISH)


PLAIN = st.text(min_size=1, max_size=10)


def _turn(role_key: str, value_key: str):
    return st.fixed_dictionaries({role_key: ROLES, value_key: CONTENT})


@st.composite
def records(draw, openai: bool = False):
    """Mostly plausible chats with a broken part here and there; sometimes any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSONISH)
    role_key, value_key = ("role", "content") if openai or draw(st.integers(0, 4)) == 0 else ("from", "value")
    names = ("user", "assistant") if role_key == "role" else ("human", "gpt")
    turns = []
    for i in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 9)) == 0:  # a broken turn
            turns.append(draw(st.one_of(_turn(role_key, value_key), JSONISH)))
        else:
            plain = draw(st.integers(0, 5))
            turns.append({role_key: names[i % 2], value_key: draw(PLAIN if plain else CONTENT)})
    rec = {"messages" if openai else draw(st.sampled_from(["conversations", "conversations", "messages",
                                                           "items"])): turns}
    if draw(st.integers(0, 3)):
        rec["id"] = draw(IDS)
    if draw(st.integers(0, 5)) == 0:
        rec["system"] = draw(st.one_of(TEXT, st.integers()))
    return rec


def _dumps(value, draw) -> bytes:
    """JSON as careless exporters write it: NaN tokens, and lone surrogates as raw (invalid UTF-8) bytes."""
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True,
                      indent=draw(st.sampled_from([None, None, 1, 2])))
    return text.encode("utf-8", "surrogatepass")


def _mutate(data: bytes, draw) -> tuple[bytes, bool]:
    """Maybe cut the file, flip a byte or insert garbage; (bytes, whether it was changed)."""
    kind = draw(st.sampled_from(["none", "none", "none", "cut", "flip", "insert"]))
    if kind == "none" or not data:
        return data, False
    at = draw(st.integers(0, len(data) - 1))
    if kind == "cut":
        return data[:at], True
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:], True
    return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:], True


@st.composite
def files(draw):
    """{file name: (bytes, records written, items expected or None when mutated)} in every text format."""
    out = {}
    sg = draw(st.lists(records(), min_size=1, max_size=12))
    data, changed = _mutate(b"\n".join(_dumps(r, draw).replace(b"\n", b" ") for r in sg), draw)
    out["sharegpt.jsonl"] = (data, len(sg), None if changed else len(sg))
    oa = draw(st.lists(records(openai=True), min_size=1, max_size=12))
    data, changed = _mutate(b"\n".join(_dumps(r, draw).replace(b"\n", b" ") for r in oa), draw)
    out["openai.jsonl"] = (data, len(oa), None if changed else len(oa))
    arr = draw(st.lists(records(), max_size=12))
    data, changed = _mutate(_dumps(arr, draw), draw)
    out["sharegpt.json"] = (data, len(arr), None if changed else len(arr))
    one = draw(records())
    out["one.json"] = (_mutate(_dumps(one, draw), draw)[0], 1, None)
    return out


# ---------------------------------------------------------------- properties

TIGHT = ImportLimits(max_record_bytes=600, max_turns=4, max_turn_chars=8)
"""Caps the generated records often pass, so the cap rejections are fuzzed too."""


def check_import(paths: list[Path], tmp: Path, limits: ImportLimits | None = None):
    """Import ``paths``; assert every property of the module docstring; return the report."""
    out, rej = tmp / "out.jsonl", tmp / "out.rejected.jsonl"
    report = import_files(paths, out, rej, limits=limits)
    assert report.read == report.accepted + report.rejected
    convs = [json.loads(line) for line in out.read_bytes().decode("utf-8").split("\n") if line]
    rejected = [json.loads(line) for line in rej.read_bytes().decode("utf-8").split("\n") if line]
    assert len(convs) == report.conversations and len(rejected) == report.rejected
    assert Counter(reason_code(r["reason"]) for r in rejected) == report.reasons
    for r in rejected:
        m = REASON.fullmatch(r["reason"])
        assert m and m.group(1) in CODES, r["reason"]
        assert isinstance(r["source"], str) and r["source"]
    assert len({c["id"] for c in convs}) == len(convs)
    for c in convs:
        roles = [m["role"] for m in c["messages"]]
        assert all(isinstance(m["content"], str) and m["content"] for m in c["messages"])
        assert set(roles) <= {"system", "user", "assistant"} and "system" not in roles[1:]
        assert all(a != b for a, b in zip(roles, roles[1:])) and roles[roles[0] == "system"] == "user"
        assert any(a == "user" and b == "assistant" for a, b in zip(roles, roles[1:]))
    return report


def test_fuzz_text_formats(tmp_path):
    written = []

    @FUZZ
    @given(files())
    def run(generated):
        paths = []
        for name, (data, n, _) in generated.items():
            (tmp_path / name).write_bytes(data)
            paths.append(tmp_path / name)
            written.append(n)
        check_import(paths, tmp_path)
        check_import(paths, tmp_path, TIGHT)
        for name, (_, _, expected) in generated.items():  # unmutated files: one item per record, no more
            if expected is not None:
                report_one = check_import([tmp_path / name], tmp_path)
                assert report_one.read == expected, name

    run()
    assert sum(written) >= 1000, sum(written)


def test_fuzz_hf_datasets(tmp_path):
    """Saved datasets (Arrow: valid UTF-8 only) with unknown roles, empty and NaN values, split chunk ids."""
    datasets = pytest.importorskip("datasets")
    text = st.text(st.sampled_from("ab é😀\n\x00\u2028"), max_size=8)
    row = st.fixed_dictionaries({
        "id": st.sampled_from(["c_0", "c_1", "c_2", "c_9", "x", ""]),
        "conversations": st.lists(st.fixed_dictionaries({
            "from": st.sampled_from(["human", "gpt", "system", "tool", "robot", ""]), "value": text}), max_size=5),
        "score": st.floats(allow_nan=True, allow_infinity=True)})
    counted = []

    @settings(FUZZ, max_examples=12)
    @given(st.lists(row, min_size=1, max_size=10))
    def run(rows):
        path = tmp_path / "ds"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        report = check_import([path], tmp_path)
        assert report.read == len(rows)
        counted.append(len(rows))

    run()
    assert sum(counted) >= 12
