"""The served CPU engines' cores and a borrowed round's training cores (selfevolve/cpu_split.py)."""
from __future__ import annotations

import json
import os
import threading

import pytest

from selfevolve import cpu_split
from selfevolve.config import load_config
from selfevolve.cpu_split import beside_server, engine_cores, parse_cores, pinned, training_cores
from selfevolve.layout import RunLayout


def test_engine_cores_one_engine_takes_the_last_half(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    for cores, want in [({0, 1}, ["1"]), ({0, 1, 2}, ["2"]), ({4, 5, 6, 7}, ["6,7"]), ({3}, ["nobind"])]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: set(c))
        assert engine_cores(1) == want
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")  # the operator's choice wins
    assert engine_cores(1) == ["0-1"]


def test_parse_cores():
    assert parse_cores("1") == [1] and parse_cores("0,2") == [0, 2] and parse_cores("4-6") == [4, 5, 6]
    assert parse_cores("0-1|3") == [0, 1, 3]
    assert parse_cores("auto") == parse_cores("nobind") == parse_cores("") == []
    with pytest.raises(ValueError):
        parse_cores("one")


def test_pinned_moves_every_thread_and_restores():
    torch = pytest.importorskip("torch")
    mine = sorted(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()  # a thread made before: its affinity must move too
    try:
        with pinned(mine[:1], log=lambda m: None):
            # (only the threads this test owns: threads other tests left behind may be exiting)
            assert os.sched_getaffinity(0) == os.sched_getaffinity(other.native_id) == {mine[0]}
            assert torch.get_num_threads() == 1
        assert os.sched_getaffinity(0) == set(mine) and torch.get_num_threads() == threads
        assert os.sched_getaffinity(other.native_id) == set(mine)
    finally:
        stop.set()
    with pinned(None):  # nothing to do
        assert os.sched_getaffinity(0) == set(mine)


def test_training_cores_are_the_ones_the_engines_leave(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert training_cores([2, 3]) == [0, 1] and training_cores([]) == [0, 1, 2, 3]
    assert training_cores([0, 1, 2, 3]) == []


def _served(tmp_path, info: dict | None, **backend):
    cfg = load_config("configs/default.yaml")
    for k, v in backend.items():
        setattr(cfg.backend, k, v)
    run = RunLayout.of(tmp_path, "r")
    if info is not None:
        run.serve_info.parent.mkdir(parents=True, exist_ok=True)
        run.serve_info.write_text(json.dumps(info))
    return cfg, run


def test_a_round_beside_the_served_engine_computes_on_the_cores_it_leaves(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpu_split, "on_cuda", lambda: False)
    monkeypatch.setattr(cpu_split, "find_server", lambda run: ("http://127.0.0.1:1", "k"))
    served = {"url": "http://127.0.0.1:1", "engine_cores": [1]}
    assert beside_server(*_served(tmp_path / "a", served)) == [0]
    assert beside_server(*_served(tmp_path / "b", served, split_cores=False)) is None  # opted out
    assert beside_server(*_served(tmp_path / "c", {"url": "x"})) is None  # its engines run elsewhere
    assert beside_server(*_served(tmp_path / "d", None)) is None  # no server
    assert beside_server(*_served(tmp_path / "e", {"engine_cores": [0, 1]})) is None  # no core left
    monkeypatch.setattr(cpu_split, "on_cuda", lambda: True)
    assert beside_server(*_served(tmp_path / "f", served)) is None
    monkeypatch.setattr(cpu_split, "on_cuda", lambda: False)
    monkeypatch.setattr(cpu_split, "find_server", lambda run: None)  # a stale serve.json
    assert beside_server(*_served(tmp_path / "g", served)) is None


def test_pinned_sets_threads_after_vllm_replaced_the_setter(monkeypatch):
    """vLLM's CPU worker, once an in-process engine ran, replaces torch.set_num_threads with a no-op for the rest
    of the process (the first clean-clone run of this test failed after such an engine: 2 threads, not 1)."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    threads = torch.get_num_threads()
    with pinned(sorted(os.sched_getaffinity(0))[:1], log=lambda m: None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def test_apart_from_engines_only_on_cores_no_engine_uses_or_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_split, "on_cuda", lambda: False)
    _, run = _served(tmp_path, {"url": "http://127.0.0.1:1", "engine_cores": [1]})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # pinned beside the engine
    assert cpu_split.apart_from_engines(run)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # not pinned (backend.split_cores: false)
    assert not cpu_split.apart_from_engines(run)
    assert not cpu_split.apart_from_engines(_served(tmp_path / "n", None)[1])  # no server: nothing known
    monkeypatch.setattr(cpu_split, "on_cuda", lambda: True)
    assert cpu_split.apart_from_engines(run)
