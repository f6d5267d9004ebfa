"""selfevolve/layout.py: the one module that knows the run's file names, and the tree its docstring shows."""
import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from selfevolve import layout
from selfevolve.layout import EvalLayout, RunLayout


def documented_names() -> set[str]:
    """The first path component of each entry of the docstring's tree (``report.md, report.png`` is two)."""
    names = set()
    for line in layout.__doc__.splitlines():
        entry = re.match(r"\s{4,}(\S[^ ]*(?:, \S+)*)\s{2,}\S", line)
        if entry:
            names.update(part.split("/")[0] for part in entry[1].split(", "))
    return names


def direct_children(obj) -> dict[str, str]:
    """Every property of ``obj`` that is a file or folder right inside ``obj.dir``: {property: name}."""
    props = [a for a in dir(type(obj)) if isinstance(getattr(type(obj), a), property)]
    paths = {a: getattr(obj, a) for a in props}
    return {a: p.name for a, p in paths.items() if isinstance(p, Path) and p.parent == obj.dir}


def test_every_run_and_round_file_is_in_the_documented_tree():
    run = RunLayout.of("/runs", "demo")
    found = {**direct_children(run), **{f"round.{a}": n for a, n in direct_children(run.round(2)).items()}}
    assert len(found) > 30  # the listing reached the layouts' names
    missing = {a: n for a, n in found.items() if n not in documented_names()}
    assert not missing, f"names missing from layout.py's docstring tree: {missing}"


def test_names_are_paths_under_the_layout_and_read_only():
    run = RunLayout(Path("/r/x"))
    rnd = run.round(7)
    assert rnd.dir == Path("/r/x/round-007") and rnd.number == 7 and rnd.run == run
    assert rnd.signals == Path("/r/x/round-007/signals.jsonl")
    assert rnd.adapter_weights == Path("/r/x/round-007/adapter/adapter_model.safetensors")
    assert run.chats_salt == Path("/r/x/chats.salt") and EvalLayout(Path("/e")).summary == Path("/e/summary.json")
    assert isinstance(type(rnd).__dict__["signals"], property)  # class access: the descriptor, as before
    assert type(rnd).__dict__["heldout"].__doc__.startswith("Conversations kept out of training")
    with pytest.raises((FrozenInstanceError, AttributeError)):
        rnd.signals = Path("/elsewhere")


def test_rounds_are_listed_in_numeric_order(tmp_path):
    run = RunLayout(tmp_path)
    for n in (10, 2, 1000):
        run.round(n).dir.mkdir()
    (tmp_path / "round-x").mkdir()
    assert [r.number for r in run.rounds()] == [2, 10, 1000]
    assert run.latest_round().number == 1000 and run.round_or_latest(None).number == 1000
    assert RunLayout(tmp_path / "new").round_or_latest(None).number == 1
