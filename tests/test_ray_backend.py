"""``backend.kind: ray``: config checks (unit), and revise on a local Ray cluster with 2 CPU engine workers
against the single in-process engine on the same chats (integration: same ids and statuses, comparable quality,
the same greedy answers with and without a LoRA adapter, resume from the journal)."""
import time
from dataclasses import replace
from pathlib import Path

import pytest

from selfevolve import grounding
from selfevolve.backends import Sampling, make_backend
from selfevolve.backends import ray_backend
from selfevolve.config import PACKAGE_DATA, ConfigError, load_config
from selfevolve.records import Journal, assistant_turns, read_jsonl
from selfevolve.revise import run_revise

needs_ray = pytest.mark.skipif(not ray_backend.ray_available(), reason="ray[data] is not installed")


@needs_ray
def test_kind_ray_loads_with_its_section():
    cfg = load_config(None, ["backend.kind=ray", "ray.num_engines=3", "ray.address=auto"])
    assert (cfg.backend.kind, cfg.ray.num_engines, cfg.ray.address, cfg.ray.num_gpus_per_engine) == ("ray", 3, "auto",
                                                                                                     None)


def test_kind_ray_without_ray_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ray_backend, "ray_available", lambda: False)
    with pytest.raises(ConfigError, match=r"backend.kind: .*pip install 'ray\[data\]"):
        load_config(None, ["backend.kind=ray"])
    load_config(None, ["backend.kind=vllm"])  # only the ray backend needs it


@pytest.mark.parametrize("override, key", [("ray.num_engines=0", "ray.num_engines"),
                                           ("ray.batch_size=-1", "ray.batch_size"),
                                           ("ray.num_gpus_per_engine=-1", "ray.num_gpus_per_engine"),
                                           ("ray.address=' '", "ray.address"),
                                           ("ray.engines=2", "ray.engines")])
def test_bad_ray_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@needs_ray
@pytest.mark.integration  # a local Ray cluster (~10 s to start), no model
def test_pipeline_keeps_order_and_spreads_batches_over_engines():
    import dataclasses
    import json

    import ray

    from selfevolve.backends import Generation
    from selfevolve.config import RayConfig

    class FakeEngine:  # defined here: pickled by value into the Ray workers, as EngineWorker's interface
        def __init__(self, k):
            self.k, self.n = k, 0

        def run(self, kind, payloads, adapter, stop_repeats=None):
            self.n += len(payloads)
            reqs = [json.loads(p) for p in payloads]
            text = [f"{self.k}|{adapter}|{stop_repeats}|{r['messages'][0]['content']}|{r['sampling']['max_tokens']}"
                    for r in reqs]
            return [json.dumps(dataclasses.asdict(Generation(t, "stop", 1, 1))) for t in text]

        def served(self):
            return self.n

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        backend = ray_backend.RayBackend.__new__(ray_backend.RayBackend)
        backend.ray_cfg, backend.started_ray = RayConfig(batch_size=4), True
        backend.engines = [ray.remote(num_cpus=1)(FakeEngine).remote(k) for k in range(2)]
        for n in (1, 3, 37):
            batch = [[{"role": "user", "content": str(i)}] for i in range(n)]
            sampling = [Sampling(max_tokens=i + 1) for i in range(n)]  # per-item values travel with their row
            stop = (4, 64, 3) if n == 37 else None  # a call's options travel beside its rows
            gens = backend.chat(batch, sampling, adapter="some/adapter" if n == 3 else None, stop_repeats=stop)
            fields = [g.text.split("|") for g in gens]
            assert [f[3:] for f in fields] == [[str(i), str(i + 1)] for i in range(n)]  # input order
            assert {f[1] for f in fields} == {str(Path("some/adapter").resolve()) if n == 3 else "None"}
            assert {f[2] for f in fields} == {str(stop)}
        served = backend.served()
        assert sum(served) == 1 + 3 + 37 and min(served) >= 37 // 3, served  # every row once, both engines busy
        assert backend.chat([], Sampling()) == []
    finally:
        backend.close()
    assert not ray.is_initialized()


def test_a_local_cluster_too_small_for_the_engines_is_an_error_not_a_hang():
    from selfevolve.config import RayConfig

    ray_backend._check_fits({"CPU": 2.0}, RayConfig(num_engines=2), 0.0)
    with pytest.raises(RuntimeError, match=r"3 engines x 1 CPU = 3, but the local cluster has 2 .*ray\.num_engines"):
        ray_backend._check_fits({"CPU": 2.0}, RayConfig(num_engines=3), 0.0)
    with pytest.raises(RuntimeError, match=r"GPU = 2, but the local cluster has 0 .*num_gpus_per_engine"):
        ray_backend._check_fits({"CPU": 8.0}, RayConfig(num_engines=2), 1.0)


# ---------------------------------------------------------------- on the real model

GREEDY = [[{"role": "user", "content": q}] for q in ("What is the capital of France?", "Name three colors.",
                                                     "What is 12 times 3?", "Say hello in Spanish.")]
SCORED = ["The capital of France is Paris.", "Red, blue and green.", "12 times 3 is 36.", "Hola!"]


def _correction(rec):
    return next(m["content"] for m in rec["aftermath"] if m["role"] == "user")


def _grounded_share(recs):
    """Share of turns whose revision carries the user's correction (curate's grounding check, lexical)."""
    ok = [grounding.check(r["revised"], r["original"], _correction(r), question=r["context"][-1]["content"],
                          embed=False).ok for r in recs if r["status"] == "ok"]
    return sum(ok) / len(recs)


def _session(cfg, convs, adapter, out, journal=None):
    """Build the backend, revise ``convs``, answer the greedy prompts with and without ``adapter``, close."""
    t0 = time.time()
    backend = make_backend(cfg)
    try:
        start = time.time() - t0
        journal = journal or out.with_suffix(".journal")
        summary = run_revise(convs, backend, cfg.revise, out, journal, show_progress=False)
        base = [g.text for g in backend.chat(GREEDY, Sampling(0.0, 1.0, 32))]
        tuned = [g.text for g in backend.chat(GREEDY, Sampling(0.0, 1.0, 32), adapter=str(adapter))]
        # the same texts scored: what tells one model (and adapter) from another without a greedy near-tie
        lp = [backend.logprobs(GREEDY, SCORED, adapter=a) for a in (None, str(adapter))]
        served = backend.served() if hasattr(backend, "served") else None
    finally:
        backend.close()
    return dict(summary=summary, recs=read_jsonl(out), base=base, tuned=tuned, start=start, served=served,
                lp_base=lp[0], lp_tuned=lp[1])


def _gap(a: list[list[float]], b: list[list[float]]) -> float:
    """Mean absolute difference of token log-probabilities."""
    diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(diffs) / len(diffs)


@needs_ray
@pytest.mark.integration
def test_revise_on_two_ray_engines_matches_one_engine(default_cfg, tmp_path):
    from helpers import build_random_adapter

    teach = read_jsonl(PACKAGE_DATA / "teach_chats.jsonl")
    convs = [c for c in teach if len(assistant_turns(c)) == 1][:6]  # corrected turns, answers of a line or two
    adapter = build_random_adapter(default_cfg.model.path, tmp_path / "adapter", seed=3)
    one_cfg = replace(default_cfg, backend=replace(default_cfg.backend, kind="vllm", cpu_kvcache_gb=1),
                      revise=replace(default_cfg.revise, max_tokens=128, critique_max_tokens=96))
    one = _session(one_cfg, convs, adapter, tmp_path / "one.jsonl")

    # Two CPU engine workers on a local cluster; half of the turns already journaled, as after a crash.
    ray_cfg = replace(one_cfg, backend=replace(one_cfg.backend, kind="ray"),
                      ray=replace(default_cfg.ray, address=None, num_engines=2, num_cpus_per_engine=1))
    journal = tmp_path / "ray.journal"
    Journal(journal).append(one["recs"][:3])
    two = _session(ray_cfg, convs, adapter, tmp_path / "ray.jsonl", journal)

    ids = [f"{c['id']}#{t}" for c in convs for t in assistant_turns(c)]
    assert [r["id"] for r in one["recs"]] == [r["id"] for r in two["recs"]] == ids
    assert [r["status"] for r in two["recs"]] == [r["status"] for r in one["recs"]]
    assert two["recs"][:3] == one["recs"][:3] and two["summary"].resumed == 3  # per-turn resume
    s = two["summary"]
    assert s.turns == s.revised + s.kept + s.failed + s.skipped == len(ids)  # counts conserved
    assert all(n > 0 for n in two["served"]), two["served"]  # both engine workers did work
    # Quality: revisions grounded in the user's correction about as often as on one engine (at most 2 of the 6
    # turns apart: sampled at revise.temperature, the two runs' batches differ, so their samples do).
    assert abs(_grounded_share(two["recs"]) - _grounded_share(one["recs"])) <= 2 / len(ids) + 1e-9
    # The same model and adapter on Ray: the same texts score the same (up to bf16 rounding: the engines batch
    # differently and run on one core each, not two), the adapter's effect is far larger; greedy answers agree
    # but where a near-tie tips the other way (CI saw "Hola in español!" / "Hola in English!").
    same, adapter_effect = _gap(two["lp_base"], one["lp_base"]), _gap(one["lp_tuned"], one["lp_base"])
    print(f"log-prob gap Ray vs one engine: base {same:.4f}, tuned {_gap(two['lp_tuned'], one['lp_tuned']):.4f}; "
          f"adapter effect {adapter_effect:.4f}")
    assert same < 0.05 and _gap(two["lp_tuned"], one["lp_tuned"]) < 0.05 < adapter_effect
    assert sum(a == b for a, b in zip(two["base"] + two["tuned"], one["base"] + one["tuned"])) >= 6
    assert two["tuned"] != two["base"]
    print(f"start one engine {one['start']:.0f} s, Ray {two['start']:.0f} s; grounded "
          f"{_grounded_share(one['recs']):.2f} vs {_grounded_share(two['recs']):.2f}")
