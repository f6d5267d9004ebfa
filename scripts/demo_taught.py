"""Does the served model now answer what its users corrected? Ask through `selfevolve serve`, not in-process.

Starts `selfevolve serve` for the run (vLLM + the gateway, which loads the live adapter of current.json), then
asks every **taught** question of the live round's evaluation (the corrected turns' questions, asked fresh)
through the gateway twice: as ``model: base`` and as ``model: current``. Each answer is scored with the probe
check the gate used (selfevolve/probes.py: carries the user's correction, repeats nothing they rejected).
Chats are sent with ``X-Consent-Train: false``: a demo must not feed the next round.

    python scripts/demo_taught.py --set run.name=default --out docs/bench/serve_taught.md
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from selfevolve import probes
from selfevolve.config import load_config
from selfevolve.layout import RunLayout
from selfevolve.live import read_current
from selfevolve.records import read_jsonl, write_atomic


def taught_probes(run: RunLayout, live: str) -> list[dict]:
    """The taught probes of the comparison that promoted ``live`` (``se-r001`` → round 1)."""
    rnd = run.round(int(live.rsplit("r", 1)[1]))
    for ev in rnd.comparisons():
        if ev.probes.exists():
            return [p for p in read_jsonl(ev.probes) if p["kind"] == "taught"]
    raise SystemExit(f"no probes in {rnd.dir}: run `selfevolve iterate` with compare.probes on first")


def start_serve(args, env: dict, run: RunLayout, timeout_s: float = 400.0) -> tuple[subprocess.Popen, str]:
    run.serve_info.unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "selfevolve"), "serve", "--config", args.config] + \
        [x for s in args.set for x in ("--set", s)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=sys.stderr, stderr=sys.stderr)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"selfevolve serve exited with {proc.returncode}")
        if run.serve_info.exists():
            url = json.loads(run.serve_info.read_text())["url"]
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
        time.sleep(2)
    stop(proc)
    raise SystemExit(f"the gateway did not come up in {timeout_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def ask(url: str, key: str, model: str, question: str, max_tokens: int) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=300,
                   headers={"Authorization": f"Bearer {key}", "X-Consent-Train": "false"},
                   json={"model": model, "temperature": 0.0, "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": question}]})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"] or ""


def table(rows: list[dict], live: str) -> str:
    lines = [f"| question (asked fresh through the gateway) | base | {live} |", "|---|---|---|"]
    for r in rows:
        cell = lambda ok, text: f"{'✅' if ok else '❌'} {text[:90].replace(chr(10), ' ').replace('|', '/')}"
        lines.append(f"| {r['question']} | {cell(r['pass_base'], r['base'])} | {cell(r['pass_live'], r['live'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, help="write the table as markdown here")
    args = ap.parse_args()
    cfg = load_config(Path(args.config), args.set)
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    live = read_current(run)["live"]
    if not live:
        raise SystemExit(f"no live adapter in {run.current}: no round of run {cfg.run.name!r} was promoted yet")
    questions = taught_probes(run, live)
    key = "sk-chat-demo-" + secrets.token_urlsafe(12)
    env = {**os.environ, "SELFEVOLVE_CHAT_KEY": key, "SELFEVOLVE_ADMIN_KEY": "sk-admin-demo-" + secrets.token_urlsafe(12)}
    proc, url = start_serve(args, env, run)
    try:
        rows = []
        for p in questions:
            base = ask(url, key, "base", p["question"], args.max_tokens)
            now = ask(url, key, "current", p["question"], args.max_tokens)
            rows.append({"question": p["question"], "base": base, "live": now,
                         "pass_base": probes.passes(p, base), "pass_live": probes.passes(p, now)})
    finally:
        stop(proc)
    fixed = sum(r["pass_live"] and not r["pass_base"] for r in rows)
    broken = sum(r["pass_base"] and not r["pass_live"] for r in rows)
    head = (f"Taught questions of {live} asked through `selfevolve serve` (run `{cfg.run.name}`): base "
            f"{sum(r['pass_base'] for r in rows)}/{len(rows)}, {live} {sum(r['pass_live'] for r in rows)}/{len(rows)} "
            f"(fixed {fixed}, broken {broken}).")
    print(head)
    print(table(rows, live))
    if args.out:
        write_atomic(args.out, f"# The served model after a round\n\n{head}\n\n{table(rows, live)}\n\n"
                               f"Made by `python scripts/demo_taught.py {' '.join('--set ' + s for s in args.set)}`"
                               f" (greedy answers, {args.max_tokens} tokens at most; scored by selfevolve/probes.py).\n")


if __name__ == "__main__":
    main()
