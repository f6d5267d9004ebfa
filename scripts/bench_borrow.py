"""One engine per machine (issue 15): a round on the sample chats with `selfevolve serve` running, its generation
through the served engine (``backend.use_server: auto``) against a second engine in-process (``never``), and the
chat latency users see meanwhile.

1. `selfevolve serve` for run ``borrowed`` (vLLM + gateway), then a steady chat load through the gateway: one
   short chat every ``--chat-every`` seconds from a thread, each request's latency tagged with what ran then.
2. Idle: chats only, ``--idle-s`` seconds.
3. Round in run ``borrowed`` (serve.json there: the served engine is borrowed; the configured
   ``serve.borrow_priority``, first come, first served by default); with ``--priority`` the server is restarted
   with priority scheduling (``serve.borrow_priority=10``: iterate's requests behind chats) and the round runs
   again in run ``borrowed-priority``; then a round in run ``inproc``
   (same root, no server of its own: the in-process engine starts beside the served one). ``--also
   NAME:KEY=VALUE,...`` adds a borrowed round with those overrides on the first server; ``--server
   NAME:KEY=VALUE;...`` a borrowed round on one more server started with those overrides. All on the shipped
   sample chats, the same settings; each round's wall time and per-stage seconds from its manifest. ``--next``:
   then the teach chats through the gateway, each by its own user with consent, and run ``borrowed``'s second
   round (its compare reads the live side's greedy answers from the run's ``answers/``).
4. Writes the figures as markdown (``--out``).

    flock /tmp/selfevolve-model.lock .venv/bin/python scripts/bench_borrow.py --out docs/bench/borrow.md
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from demo_taught import start_serve, stop  # noqa: E402
from selfevolve.layout import RunLayout  # noqa: E402
from selfevolve.manifest import load as load_manifest  # noqa: E402
from selfevolve.records import write_atomic  # noqa: E402
from selfevolve.serve import free_port  # noqa: E402

SELFEVOLVE = str(Path(sys.executable).parent / "selfevolve")


class ChatLoad(threading.Thread):
    """One short chat every ``every`` seconds; latencies per phase (``phase`` is set from outside)."""

    def __init__(self, url: str, key: str, every: float):
        super().__init__(daemon=True)
        self.url, self.key, self.every = url, key, every
        self.phase, self.done = "idle", threading.Event()
        self.latencies: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}

    def run(self) -> None:
        body = {"model": "base", "max_tokens": 24, "temperature": 0,
                "messages": [{"role": "user", "content": "Name one colour of the rainbow."}]}
        headers = {"Authorization": f"Bearer {self.key}", "X-Consent-Train": "false"}
        with httpx.Client(timeout=300) as http:
            while not self.done.is_set():
                phase, t0 = self.phase, time.perf_counter()
                try:
                    ok = http.post(f"{self.url}/v1/chat/completions", json=body, headers=headers).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies.setdefault(phase, []).append(time.perf_counter() - t0)
                else:
                    self.errors[phase] = self.errors.get(phase, 0) + 1
                self.done.wait(max(0.0, self.every - (time.perf_counter() - t0)))


def _also(spec: str, sep: str = ",") -> tuple[str, list[str]]:
    name, _, sets = spec.partition(":")
    return name, [s for s in sets.split(sep) if s]


def _share_server(root: Path, served: str, rnd: str) -> Path:
    """Run ``rnd`` borrows run ``served``'s server: a round finds the engine through its own run's serve.json.
    Its run folder lies inside the served run's (returned: its ``run.root``), because the served engine loads
    adapters from its own run folder only."""
    src, dst = RunLayout(root / served), RunLayout(root / served / rnd)
    for f in ("serve_info", "admin_key"):
        getattr(dst, f).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(getattr(dst, f), getattr(src, f).read_text())
    return root / served


def teach(url: str, run: RunLayout) -> int:
    """The shipped teach chats as users would have them now: each by its own user (a per-user key), the question
    asked, the served model's own answer kept, then the user's correction sent with consent to train. Returns the
    conversations captured."""
    from selfevolve.records import read_jsonl
    from selfevolve.userkeys import issue

    sent = 0
    with httpx.Client(timeout=300) as http:
        for i, chat in enumerate(read_jsonl(ROOT / "selfevolve/data/teach_chats.jsonl")):
            key, _ = issue(run.user_keys, f"teacher{i}")
            headers = {"Authorization": f"Bearer {key}", "X-Consent-Train": "true"}
            history = []
            for turn in (m for m in chat["messages"] if m["role"] == "user"):
                history.append(turn)
                r = http.post(f"{url}/v1/chat/completions", headers=headers,
                              json={"model": "current", "messages": history, "max_tokens": 64, "temperature": 0})
                r.raise_for_status()
                history.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
            sent += 1
    return sent


def iterate(args, name: str, env: dict, extra: list[str] = (), root: Path | None = None) -> tuple[float, dict, str]:
    root = root or Path(args.root)
    sets = args.set + list(extra) + [f"run.root={root}", f"run.name={name}"]
    cmd = [SELFEVOLVE, "iterate", "--no-progress", "--config", args.config, *[f"--set={s}" for s in sets]]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**env, "PYTHONUNBUFFERED": "1"},  # unbuffered: lines timed as said
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []  # (seconds since start, line): when the process first spoke and last spoke, against its exit
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line))
    rc = proc.wait(timeout=3600)
    wall = time.perf_counter() - t0
    said = [t for t, line in lines if line.startswith(("[round", "round "))]
    out = "".join(line for _, line in lines)
    out += (f"bench: first line at {said[0]:.2f}s, last at {said[-1]:.2f}s, exit at {wall:.2f}s\n" if said else "")
    with (root / f"{name}.iterate.log").open("a") as f:  # the next round of the run appends
        f.write(out)
    if rc != 0:
        raise SystemExit(f"iterate ({name}) failed:\n{out[-6000:]}")
    stages = load_manifest(RunLayout(root / name).latest_round().manifest)["stages"]
    return wall, {s: e.get("seconds") for s, e in stages.items()}, out


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--root", default=str(ROOT / "bench_out/borrow"))
    ap.add_argument("--chat-every", type=float, default=3.0)
    ap.add_argument("--idle-s", type=float, default=45.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--priority", action="store_true",
                    help="also the borrowed round on a server with priority scheduling (serve.borrow_priority=10)")
    ap.add_argument("--server", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]",
                    help="also the borrowed round on a server started with these overrides (side by side)")
    ap.add_argument("--no-inproc", action="store_true", help="leave out the round with a second engine in-process")
    ap.add_argument("--also", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="one more borrowed round on the first server, with these overrides (side by side)")
    ap.add_argument("--next", action="store_true",
                    help="then the first run's next round: the teach chats sent through the gateway by their own "
                         "users, `selfevolve iterate` again (the live side's greedy answers read from answers/)")
    ap.add_argument("--set", dest="extra", action="append", default=[],
                    help="more config overrides for serve and both rounds (e.g. train.max_steps=8)")
    args = ap.parse_args()
    args.set = [f"run.root={args.root}", "data.inputs=[builtin:sample_chats.jsonl]",
                f"serve.port={free_port()}", f"serve.vllm_port={free_port()}", *args.extra]
    subprocess.run(["rm", "-rf", args.root], check=True)
    env = {**os.environ, "SELFEVOLVE_CHAT_KEY": "sk-chat-bench", "SELFEVOLVE_ADMIN_KEY": "sk-admin-bench"}
    # (run name, serve overrides): the served engine as configured, then (--priority) the same round with
    # iterate's requests behind chats; the in-process round beside the last server.
    servers = [("borrowed", [])] + ([("borrowed-priority", ["serve.borrow_priority=10"])] if args.priority else [])
    servers += [_also(spec, ";") for spec in args.server]
    rounds, latencies, errors = {}, {}, {}
    for i, (name, extra) in enumerate(servers):
        demo_args = argparse.Namespace(config=args.config, set=args.set + extra + [f"run.name={name}"])
        proc, url = start_serve(demo_args, env, RunLayout(Path(args.root) / name))
        load = ChatLoad(url, "sk-chat-bench", args.chat_every)
        try:
            load.phase = f"idle ({name})"
            load.start()
            time.sleep(args.idle_s)
            todo = [(name, [])] + ([_also(a) for a in args.also] if i == 0 else [])
            todo += [("inproc", [])] if i == len(servers) - 1 and not args.no_inproc else []
            for rnd, sets in todo:
                load.phase = f"round ({rnd})"
                # on this server: its serve.json is copied so that the round borrows it
                root = _share_server(Path(args.root), name, rnd) if sets else None
                rounds[rnd] = iterate(args, rnd, env, sets, root)
                print(f"{rnd}: {rounds[rnd][0]:.1f} s {rounds[rnd][1]}", flush=True)
            if args.next and i == 0:
                load.phase = f"teach chats ({name})"
                print(f"teach chats captured: {teach(url, RunLayout(Path(args.root) / name))}", flush=True)
                load.phase = f"round ({name}, next)"
                rounds[f"{name}, next"] = iterate(args, name, env)
                print(f"{name}, next: {rounds[f'{name}, next'][0]:.1f} s {rounds[f'{name}, next'][1]}", flush=True)
            load.phase = f"after ({name})"
            time.sleep(min(args.idle_s, 20))
        finally:
            load.done.set()
            load.join(timeout=300)
            stop(proc)
        latencies |= load.latencies
        errors |= load.errors
    lines = ["# One engine per machine: the round through the served engine (scripts/bench_borrow.py)", "",
             f"`selfevolve serve` up (vLLM CPU + gateway), a chat every {args.chat_every:g} s through the gateway "
             "meanwhile; a round on the shipped sample chats borrowing the served engine (`backend.use_server: "
             "auto`; `serve.borrow_priority` as configured), with `--priority` the same round on a server with "
             "priority scheduling (iterate's requests behind chats), then the same round with a second engine "
             "in-process (a run without a server). "
             f"Overrides: {', '.join(args.extra) or 'none'}. `outside stages` = wall minus the stages' own "
             "seconds: process start, the in-process engine's start, the loop, and the waits for the served engine "
             "to finish what it answered beside a stage (`engine waits`, from iterate's `waited …s` lines). "
             "`orchestration` (issue 15 item 4: everything but model work) = outside stages - engine waits + "
             "collect.", "",
             "| round | wall s | orchestration s (share) | outside stages s | engine waits s | "
             + " | ".join(next(iter(rounds.values()))[1]) + " |",
             "|---|---|---|---|---|" + "---|" * len(next(iter(rounds.values()))[1])]
    for name, (wall, secs, log) in rounds.items():
        outside = wall - sum(v or 0 for v in secs.values())
        waits = sum(float(x) for x in re.findall(r"alongside: waited ([0-9.]+)s", log))
        orch = outside - waits + (secs.get("collect") or 0)
        lines.append(f"| {name} | {wall:.1f} | {orch:.1f} ({orch / wall:.1%}) | {outside:.1f} | {waits:.1f} | "
                     + " | ".join(f"{v if v is not None else '-'}" for v in secs.values()) + " |")
    lines += ["", "| chats during | n | p50 s | p95 s | errors |", "|---|---|---|---|---|"]
    for phase, xs in latencies.items():
        lines.append(f"| {phase} | {len(xs)} | {statistics.median(xs):.2f} | {pct(xs, 0.95):.2f} | "
                     f"{errors.get(phase, 0)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_atomic(Path(args.out), text)


if __name__ == "__main__":
    main()
