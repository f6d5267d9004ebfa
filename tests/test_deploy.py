"""Deploy without a model server: what is refused (and that a refusal changes nothing), that vLLM is handed the
staged copy, and the switch / rollback / prune / restore logic against the in-process vLLM stub of test_gateway.py.
Adapters here are for a tiny stand-in base model (tests/adapter_fixtures.py); tests/test_adapters_hostile.py
checks hostile adapters against the real one."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from selfevolve.deploy import (DeployError, Deployer, adapter_name, check_adapter_dir, read_current, round_of,
                               write_current)
from selfevolve.layout import RunLayout
from adapter_fixtures import tiny_adapter, tiny_base
from test_gateway import ADMIN, INTERNAL, StubVLLM, auth, gw  # noqa: F401 (gw is a fixture)


@pytest.fixture
def run(tmp_path):
    r = RunLayout.of(tmp_path / "runs", "t")
    r.dir.mkdir(parents=True)
    return r


@pytest.fixture
def base(tmp_path):
    return tiny_base(tmp_path)


@pytest.fixture
def dgw(gw, base):
    """test_gateway's gateway + stub, its deployer checking adapters against the tiny base model."""
    gw.deployer.base_model = str(base)
    return gw


def test_names():
    assert adapter_name(3) == "se-r003" and round_of("se-r003") == 3 and round_of("base") is None


def test_valid_adapter_passes(run, base):
    folder = tiny_adapter(run.round(1).adapter)
    assert check_adapter_dir(run, folder, 16, base) == folder.resolve()


def test_refuses_path_outside_the_run(run, base, tmp_path):
    outside = tiny_adapter(tmp_path / "elsewhere" / "adapter")
    with pytest.raises(DeployError, match="outside the run"):
        check_adapter_dir(run, outside, 16, base)
    with pytest.raises(DeployError, match="outside the run"):  # ../ tricks resolve first
        check_adapter_dir(run, run.dir / ".." / ".." / "elsewhere" / "adapter", 16, base)
    run.round(2).dir.mkdir()
    os.symlink(outside, run.round(2).adapter)  # a symlink out of the run is outside too
    with pytest.raises(DeployError, match="outside the run"):
        check_adapter_dir(run, run.round(2).adapter, 16, base)


def test_refuses_symlinked_weights_outside_the_run(run, base, tmp_path):
    outside = tiny_adapter(tmp_path / "elsewhere")
    folder = run.round(1).adapter
    folder.mkdir(parents=True)
    os.symlink(outside / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text((outside / "adapter_config.json").read_text())
    with pytest.raises(DeployError, match="outside the run"):
        check_adapter_dir(run, folder, 16, base)


def test_refuses_missing_or_pickled_weights(run, base):
    folder = tiny_adapter(run.round(1).adapter)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(DeployError, match="adapter_model.safetensors is missing"):
        check_adapter_dir(run, folder, 16, base)
    folder = tiny_adapter(run.round(2).adapter)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(DeployError, match="pickle"):
        check_adapter_dir(run, folder, 16, base)
    with pytest.raises(DeployError, match="no adapter folder"):
        check_adapter_dir(run, run.round(3).adapter, 16, base)


@pytest.mark.parametrize("config,needle", [
    ("{not json", "does not parse"),
    ('["r", 8]', "not a JSON object"),
    ('{"peft_type": "LORA"}', "no valid rank"),
    ('{"peft_type": "LORA", "r": 32}', "exceeds lora_slots.max_rank=16"),
    ('{"peft_type": "LORA", "r": 8, "rank_pattern": {"q_proj": 64}}', "exceeds"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}', "base_model_name_or_path=None"),
    ('{"peft_type": "IA3", "r": 8}', "not LORA"),
])
def test_refuses_bad_adapter_config(run, base, config, needle):
    folder = tiny_adapter(run.round(1).adapter)
    (folder / "adapter_config.json").write_text(config)
    with pytest.raises(DeployError, match=needle):
        check_adapter_dir(run, folder, 16, base)


def test_refuses_corrupt_safetensors(run, base):
    folder = tiny_adapter(run.round(1).adapter)
    weights = folder / "adapter_model.safetensors"
    good = weights.read_bytes()
    for bad in (os.urandom(4096), b"\x00garbage" * 100, good[: len(good) - 10], good + b"extra", b"abc",
                (5).to_bytes(8, "little") + b"{]}xx" + b"\0" * 64):
        weights.write_bytes(bad)
        with pytest.raises(DeployError, match="safetensors"):
            check_adapter_dir(run, folder, 16, base)


def test_refuses_mismatched_lora_shapes(run, base):
    import numpy as np
    from safetensors.numpy import save_file

    folder = tiny_adapter(run.round(1).adapter)
    pre = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{pre}.lora_A.weight": np.ones((4, 16), np.float32), f"{pre}.lora_B.weight": np.ones((16, 5), np.float32)},
              str(folder / "adapter_model.safetensors"))
    with pytest.raises(DeployError, match=r"must be \[4, 16\] and \[16, 4\]"):
        check_adapter_dir(run, folder, 16, base)
    save_file({f"{pre}.lora_A.weight": np.ones((32, 16), np.float32), f"{pre}.lora_B.weight": np.ones((16, 32), np.float32)},
              str(folder / "adapter_model.safetensors"))
    with pytest.raises(DeployError, match="gives rank 4"):
        check_adapter_dir(run, folder, 16, base)


# ---------------------------------------------------------------- through the admin API (stub vLLM)

def test_refusal_leaves_current_json_untouched(dgw, tmp_path):
    gw = dgw
    c = gw.client
    tiny_adapter(gw.run.round(1).adapter)
    assert c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 1}).status_code == 200
    before = gw.run.current.read_bytes()
    assert json.loads(before)["live"] == "se-r001"

    outside = tiny_adapter(tmp_path / "outside")
    r = c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 2, "path": str(outside)})
    assert r.status_code == 400 and "outside the run" in r.json()["detail"]
    empty = gw.run.round(3).adapter
    empty.mkdir(parents=True)
    (empty / "adapter_config.json").write_text('{"r": 4}')
    r = c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 3})
    assert r.status_code == 400 and "adapter_model.safetensors is missing" in r.json()["detail"]
    assert c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 4}).status_code == 404
    for bad in ({"round": 0}, {"round": "1"}, {"round": True}, {}):
        assert c.post("/admin/adapters/load", headers=auth(ADMIN), json=bad).status_code == 400

    assert gw.run.current.read_bytes() == before
    assert set(gw.stub.loaded) == {"se-r001"}  # nothing refused got loaded
    r = c.post("/v1/chat/completions", headers=auth("chat-key-1"), json={"messages": [{"role": "user", "content": "x"}]})
    assert r.headers["x-served-model"] == "se-r001"


def test_server_refusal_and_failed_smoke_unload_and_keep_live(dgw):
    gw = dgw
    c = gw.client
    for n in (1, 2, 3):
        tiny_adapter(gw.run.round(n).adapter)
    assert c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 1}).status_code == 200
    before = gw.run.current.read_bytes()

    gw.stub.refuse_load.add("se-r002")  # vLLM cannot load it
    r = c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 2})
    assert r.status_code == 502 and "bad adapter" in r.json()["detail"]

    gw.stub.smoke_text = ""  # it loads but generates nothing: unloaded again
    r = c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": 3})
    assert r.status_code == 502 and "smoke test" in r.json()["detail"]
    assert set(gw.stub.loaded) == {"se-r001"}
    assert gw.run.current.read_bytes() == before and gw.deployer.live_model == "se-r001"


def _load(c, n):
    """Deploy round ``n`` through the admin route; it must succeed."""
    r = c.post("/admin/adapters/load", headers=auth(ADMIN), json={"round": n})
    assert r.status_code == 200, r.text
    return r.json()


def test_switch_rollback_prune(dgw):
    gw = dgw
    c = gw.client
    for n in (1, 2, 3):
        tiny_adapter(gw.run.round(n).adapter)

    def load(n):
        return _load(c, n)

    assert c.post("/admin/rollback", headers=auth(ADMIN)).status_code == 409  # nothing to roll back to
    res = load(1)
    assert (res["live"], res["previous"]) == ("se-r001", None) and set(res["timings_ms"]) >= {"load", "smoke", "switch"}
    assert load(1)["status"] == "already live"
    res = c.post("/admin/rollback", headers=auth(ADMIN)).json()  # the first deploy rolls back to the base model
    assert (res["live"], res["previous"], res["model"]) == (None, "se-r001", "base")
    load(1)
    res = load(2)
    assert (res["live"], res["previous"]) == ("se-r002", "se-r001")
    res = c.post("/admin/rollback", headers=auth(ADMIN)).json()
    assert (res["live"], res["previous"]) == ("se-r001", "se-r002")
    res = load(3)
    assert (res["live"], res["previous"], res["pruned"]) == ("se-r003", "se-r001", ["se-r002"])
    assert set(gw.stub.loaded) == {"se-r001", "se-r003"}

    assert c.post("/admin/adapters/unload", headers=auth(ADMIN), json={"round": 3}).status_code == 409  # live
    assert c.post("/admin/adapters/unload", headers=auth(ADMIN), json={"name": "se-r001"}).status_code == 200
    assert c.post("/admin/adapters/unload", headers=auth(ADMIN), json={"name": "se-r001"}).status_code == 404
    res = c.post("/admin/rollback", headers=auth(ADMIN)).json()  # previous reloaded from its round folder
    assert res["live"] == "se-r001" and "se-r001" in gw.stub.loaded

    state = read_current(gw.run)
    assert [h["event"] for h in state["history"]] == ["deploy", "rollback", "deploy", "deploy", "rollback", "deploy",
                                                      "rollback"]
    cur = c.get("/admin/current", headers=auth(ADMIN)).json()
    assert cur["live"] == "se-r001" and len(cur["history"]) == 7 and "se-r001" in cur["loaded"]


def test_restore_after_restart(run, base):
    stub = StubVLLM()
    transport = httpx.ASGITransport(app=stub.app)
    tiny_adapter(run.round(1).adapter)
    tiny_adapter(run.round(2).adapter)
    write_current(run, {"live": "se-r002", "previous": "se-r001", "history": []})
    dep = Deployer(run, "http://vllm.stub", {"Authorization": f"Bearer {INTERNAL}"}, transport=transport,
                   base_model=base)
    report = asyncio.run(dep.restore())
    assert report == {"live": "se-r002 loaded", "previous": "se-r001 loaded"} and set(stub.loaded) == {"se-r001", "se-r002"}

    # a live adapter that no longer loads falls back to the base model, recorded in history
    stub2 = StubVLLM()
    (run.round(2).adapter / "adapter_model.safetensors").write_bytes(b"broken")
    dep = Deployer(run, "http://vllm.stub", {"Authorization": f"Bearer {INTERNAL}"},
                   transport=httpx.ASGITransport(app=stub2.app), base_model=base)
    report = asyncio.run(dep.restore())
    assert report["live"].startswith("se-r002 failed") and dep.live_model == "base"
    state = read_current(run)
    assert state["live"] is None and state["history"][-1]["event"] == "restore-failed"


def test_vllm_loads_the_staged_copy_which_goes_with_the_adapter(dgw):
    gw, c = dgw, dgw.client
    stale = gw.run.staged_adapters / "se-r009-left-by-an-earlier-server"
    stale.mkdir(parents=True)
    for n in (1, 2, 3):
        tiny_adapter(gw.run.round(n).adapter)

    def load(n):
        return _load(c, n)

    res = load(1)
    staged = gw.stub.loaded["se-r001"]  # what vLLM was told to read
    assert res["staged"] == staged and Path(staged).parent == gw.run.staged_adapters and not stale.exists()
    assert os.stat(staged).st_mode & 0o777 == 0o700
    (gw.run.round(1).adapter / "adapter_model.safetensors").write_bytes(b"swapped after the check")
    assert (Path(staged) / "adapter_model.safetensors").read_bytes()[:8] != b"swapped "
    load(2)
    load(3)  # se-r001 pruned (live se-r003, previous se-r002): its copy goes with it
    assert not Path(staged).exists()
    assert {p.name for p in gw.run.staged_adapters.iterdir()} == {Path(gw.stub.loaded[n]).name
                                                                  for n in ("se-r002", "se-r003")}
    assert c.post("/admin/adapters/unload", headers=auth(ADMIN), json={"name": "se-r002"}).status_code == 200
    assert [p.name for p in gw.run.staged_adapters.iterdir()] == [Path(gw.stub.loaded["se-r003"]).name]
