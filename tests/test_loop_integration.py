"""`selfevolve iterate` end to end on the real model, real vLLM, real TRL and a real server on 127.0.0.1, run
as a user runs it: the CLI in its own process. Small settings (few chats, one training step, a handful of
compare prompts) keep each round to a few minutes on 2 CPU cores. Killing a round and resuming it:
tests/test_crash_integration.py (kill -9 at 20 failpoints across every stage, then compared with an uninterrupted
run)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from selfevolve.layout import RunLayout
from selfevolve.manifest import load as load_manifest

ROOT = Path(__file__).resolve().parent.parent
SELFEVOLVE = str(Path(sys.executable).parent / "selfevolve")
pytestmark = pytest.mark.integration

SMALL = [
    "revise.max_tokens=128", "revise.critique_max_tokens=64", "revise.journal_every=1",
    "revise.max_failed_share=0.5",  # short max_tokens cut a few answers: failed records, dropped by curation
    "train.max_steps=1", "train.batch_size=4",
    "compare.max_prompts=3", "compare.max_heldout=2", "compare.max_tokens=48", "compare.embeddings=false",
    "compare.max_probes=4", "compare.probe_max_tokens=48",
    # One training step teaches nothing: this test is about borrowing and deploying, so the gate only asks for
    # taught probes to exist (tests/test_gate.py has its rules, tests/test_teach_integration.py real learning).
    "gate.min_taught_gain=-1", "gate.max_kept_drop=1", "gate.max_perplexity_rise=100", "gate.min_distinct2_ratio=0",
]


def cli(args, cfg, tmp_path, **kw):
    sets = [f"--set={s}" for s in SMALL + [f"run.root={tmp_path / 'runs'}"] + list(cfg)]
    return [SELFEVOLVE, *args, "--config", str(ROOT / "configs/default.yaml"), *sets]


def env_for(**extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    return env


def test_serve_capture_iterate_and_the_new_adapter_answers_through_current(default_cfg, tmp_path):
    from openai import OpenAI

    from selfevolve.serve import free_port
    from selfevolve.store import export_conversations

    chat_key, admin_key = "sk-chat-loop-test", "sk-admin-loop-test"
    port, vllm_port = free_port(), free_port()
    # the shipped teach chats beside the captured ones: their corrected turns make the taught probes the gate
    # needs (four captured chats alone may leave none once grounding drops a 135M revision)
    cfg = [f"model.path={default_cfg.model.path}", "data.inputs=[builtin:teach_chats.jsonl]", "data.heldout_share=0.0",
           f"serve.port={port}", f"serve.vllm_port={vllm_port}"]
    run = RunLayout(tmp_path / "runs" / "default")
    keys = {"SELFEVOLVE_CHAT_KEY": chat_key, "SELFEVOLVE_ADMIN_KEY": admin_key}
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(cli(["serve"], cfg, tmp_path), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, env=env_for(**keys))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 400
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200 and run.serve_info.exists():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the gateway did not come up:\n" + (tmp_path / "serve.log").read_text()[-3000:])
        assert oct(run.admin_key.stat().st_mode & 0o777) == "0o600"

        # chats from the official client, through the gateway, captured in SQLite
        client = OpenAI(base_url=url + "/v1", api_key=chat_key, timeout=120, max_retries=0,
                        default_headers={"X-Consent-Train": "true"})  # consent is opt-in
        for q, follow in [("What is the capital of Australia?", "That's wrong, it is Canberra."),
                          ("What is the Wi-Fi network called in the Harbor Street office?",
                           "No, that's not right, the network is called Lighthouse-5G."),
                          ("Write a Python line that reverses a list xs.", "That errored: NameError."),
                          ("Name a prime number above 10.", "Thanks, perfect.")]:
            msgs = [{"role": "user", "content": q}]
            a = client.chat.completions.create(model="current", messages=msgs, max_tokens=40, temperature=0)
            msgs += [{"role": "assistant", "content": a.choices[0].message.content},
                     {"role": "user", "content": follow}]
            client.chat.completions.create(model="current", messages=msgs, max_tokens=40, temperature=0)
        captured = export_conversations(run.chats_db)
        assert len(captured) == 4 and all(len(c["messages"]) == 4 for c in captured)

        # a round on the captured chats (and the teach chats) deploys through the running gateway
        out = subprocess.run(cli(["iterate", "--no-progress"], cfg, tmp_path), capture_output=True, text=True,
                             timeout=900, env=env_for(SELFEVOLVE_ADMIN_KEY=""))  # the key comes from admin.key
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        # one engine: the round's generation went through the served one (issue 15), uncaptured, and the
        # candidate it borrowed under a private name is unloaded again
        assert f"the served engine at {url}" in out.stdout, out.stdout[-3000:]
        # ... and computed (trained, scored) on the core(s) the served CPU engine leaves free (selfevolve/cpu_split.py)
        engine = json.loads(run.serve_info.read_text())["engine_cores"]
        free = sorted(set(os.sched_getaffinity(0)) - set(engine))
        if len(os.sched_getaffinity(0)) > 1:  # (one core: nothing to split)
            assert engine and f"computes on cores {free}" in out.stdout, out.stdout[-3000:]
            # ... and the served engine answered compare's questions to the live side while the round trained
            assert "generated beside train" in out.stdout, out.stdout[-3000:]
        assert len(export_conversations(run.chats_db, consented_only=False)) == 4
        loaded = httpx.get(url + "/admin/current", headers={"Authorization": f"Bearer {admin_key}"}).json()["loaded"]
        assert not [n for n in loaded if n.startswith("se-borrow-")], loaded
        stages = load_manifest(run.round(1).manifest)["stages"]
        assert stages["collect"]["counts"]["gateway_read"] == 4 and stages["collect"]["counts"]["files_read"] == 18
        assert stages["gate"]["decision"]["promote"], stages["gate"]["decision"]
        assert stages["deploy"]["action"] == "hot-loaded" and stages["deploy"]["live"] == "se-r001", stages["deploy"]

        # the same server (no restart) now answers `current` with the new adapter
        assert server.poll() is None and json.loads(run.serve_info.read_text())["pid"] == server.pid
        r = client.chat.completions.create(model="current", messages=[{"role": "user", "content": "Hello!"}],
                                           max_tokens=16, temperature=0)
        assert r.choices[0].message.content
        after = [c for c in export_conversations(run.chats_db) if c["messages"][0]["content"] == "Hello!"]
        # (a chat after the round is captured: iterate's store, opened and closed beside the gateway's, must not
        # delete the WAL under it — tests/test_store.py has the same without a model)
        assert after and after[0]["meta"]["adapter"] == "se-r001"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
        log.close()
    assert not run.serve_info.exists()  # a stopped gateway is not mistaken for a running one
