"""selfevolve/faults.py: failpoints that really kill -9 the process, and what the durable writes leave when they do.
Each case runs in a child process (the kill is real); no model."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from selfevolve import faults
from selfevolve.records import Journal, read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def child(code: str, fault: str | None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if fault:
        env[faults.ENV] = fault
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", "from selfevolve import faults, records\n" + code], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


THREE_POINTS = """
with faults.stage("collect"):
    faults.point("a"); faults.point("b"); faults.point("c")
with faults.stage("revise"):
    faults.point("d")
print("survived")
"""


def test_parse_refuses_what_it_cannot_read():
    assert faults.parse("revise:3") == ("revise", 3)
    assert faults.parse("count:/tmp/x.json") == ("count", "/tmp/x.json")
    assert faults.parse("deploy:@current.json") == ("deploy", "@current.json")
    for bad in ("revise", "revise:0", "revise:x", "revise:@", ":3", "count:"):
        with pytest.raises(ValueError, match="SELFEVOLVE_FAULT"):
            faults.parse(bad)


def test_off_by_default_and_only_inside_a_stage(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.point("nothing happens")
    assert child(THREE_POINTS, None, tmp_path).stdout.strip() == "survived"
    # outside any stage a point never kills, whatever the spec
    assert child('faults.point("x"); print("survived")', "collect:1", tmp_path).stdout.strip() == "survived"


def test_the_kth_point_of_the_named_stage_is_a_real_sigkill(tmp_path):
    out = child(THREE_POINTS, "collect:2", tmp_path)
    assert out.returncode == -signal.SIGKILL and "survived" not in out.stdout
    assert "faults: kill -9 at collect:2 (b)" in out.stderr
    out = child(THREE_POINTS, "revise:1", tmp_path)
    assert out.returncode == -signal.SIGKILL and "revise:1 (d)" in out.stderr


def test_a_stage_with_fewer_points_than_k_dies_at_its_end(tmp_path):
    out = child(THREE_POINTS, "collect:9", tmp_path)
    assert out.returncode == -signal.SIGKILL and "collect:end (after 3 points, k=9)" in out.stderr


def test_count_mode_lists_each_stages_points_in_order(tmp_path):
    counts = tmp_path / "points.json"
    out = child(THREE_POINTS, f"count:{counts}", tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "survived"
    assert json.loads(counts.read_text()) == {"collect": ["a", "b", "c"], "revise": ["d"]}


WRITE = """
records.write_atomic("out.json", '{"v": 1}')
with faults.stage("curate"):
    records.write_atomic("out.json", '{"v": 2}')
"""


def test_killed_between_temp_and_rename_the_old_file_stands(tmp_path):
    out = child(WRITE, "curate:1", tmp_path)
    assert out.returncode == -signal.SIGKILL and "temp written, not renamed" in out.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == {"v": 1}
    left = [p.name for p in tmp_path.iterdir() if p.name != "out.json"]
    assert len(left) == 1 and left[0].startswith(".out.json.") and left[0].endswith(".tmp")  # hidden, never read
    out = child(WRITE, "curate:2", tmp_path)  # after the rename: the new file, whole
    assert out.returncode == -signal.SIGKILL and json.loads((tmp_path / "out.json").read_text()) == {"v": 2}


def test_a_journal_torn_mid_line_reopens_with_whole_records_only(tmp_path):
    code = """
j = records.Journal("j.jsonl")
with faults.stage("revise"):
    j.append([{"id": "a"}])
    j.append([{"id": "b", "text": "x" * 50}])
"""
    out = child(code, "revise:3", tmp_path)  # points: 1 torn, 2 appended, 3 torn (the second append)
    assert out.returncode == -signal.SIGKILL and "torn mid-line" in out.stderr
    raw = (tmp_path / "j.jsonl").read_text()
    assert raw.startswith('{"id": "a"}\n') and not raw.endswith("\n")  # a half-written second line
    journal = Journal(tmp_path / "j.jsonl")
    assert journal.records == [{"id": "a"}]
    journal.append([{"id": "b"}])
    assert read_jsonl(tmp_path / "j.jsonl") == [{"id": "a"}, {"id": "b"}]


def test_a_named_point_is_killed_at_wherever_it_comes(tmp_path):
    out = child(THREE_POINTS, "collect:@c", tmp_path)
    assert out.returncode == -signal.SIGKILL and "collect:3 (c)" in out.stderr
    out = child(THREE_POINTS, "collect:@zz", tmp_path)  # never reached: the stage's end
    assert out.returncode == -signal.SIGKILL and "collect:end" in out.stderr


def test_sweep_tmp_removes_only_the_temp_files_of_interrupted_writes(tmp_path):
    from selfevolve.records import sweep_tmp, write_atomic

    (tmp_path / "eval").mkdir()
    left = tmp_path / "eval" / ".probes.jsonl.0123456789ab.tmp"  # what a kill between write and rename leaves
    left.write_text("half")
    other = tmp_path / ".notes.tmp"  # not write_atomic's name: someone else's
    other.write_text("mine")
    write_atomic(tmp_path / "f.json", "{}")
    assert sweep_tmp(tmp_path) == 1
    assert not left.exists() and other.exists() and (tmp_path / "f.json").read_text() == "{}"
    assert sweep_tmp(tmp_path / "missing") == 0
