"""The round runner: collect → revise → curate → train → compare → gate → deploy, one folder per round.

``iterate`` only sequences the stages; every stage reads files and writes files (selfevolve/layout.py).
A stage whose manifest entry is complete for the same inputs, with intact outputs, is skipped, so a rerun
after a crash (kill -9 included) goes on where the round stopped: revise resumes turn by turn from its
journal, training from its last checkpoint, the other stages start over. A round opens only when the
collect step finds something new, so ``iterate`` with no new chats does no model work.

One engine serves revise, curate and compare (each start costs ~30 s on CPU); on a GPU it is closed
before training, which needs the memory the engine reserves.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest
from .config import resolve_input
from .layout import RoundLayout, RunLayout

STAGES = ("collect", "revise", "curate", "train", "compare", "gate", "deploy")


class LoopError(RuntimeError):
    pass


@dataclass
class RoundResult:
    round: int | None
    status: str = "complete"
    """``complete``, or ``nothing new`` (no round was opened)."""
    stages: dict[str, dict] = field(default_factory=dict)
    """Per stage: ``{"ran": bool, "seconds": float, "line": str}`` for this invocation."""
    decision: dict | None = None
    deployed: dict | None = None

    @property
    def seconds(self) -> float:
        return sum(s["seconds"] for s in self.stages.values())


# ---------------------------------------------------------------- helpers

class SharedBackend:
    """The engine the stages share, started on first use."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.backend = None

    def get(self):
        if self.backend is None:
            from .backends import make_backend

            self.backend = make_backend(self.cfg)
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


@contextmanager
def run_lock(run: RunLayout):
    """One ``iterate`` per run at a time (flock: released by the kernel even after kill -9)."""
    run.dir.mkdir(parents=True, exist_ok=True)
    with open(run.lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise LoopError(f"another `selfevolve iterate` holds {run.lock} (pid {f.read().strip() or '?'})") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def stage_entry(rnd: RoundLayout, stage: str) -> dict | None:
    return manifest.load(rnd.manifest)["stages"].get(stage)


def is_finished(rnd: RoundLayout) -> bool:
    entry = stage_entry(rnd, "deploy")
    return bool(entry and entry.get("status") == "complete")


def open_round(run: RunLayout) -> RoundLayout:
    """The latest round if it did not finish (a crash or kill), else the next one."""
    latest = run.latest_round()
    if latest is not None and not is_finished(latest):
        return latest
    return run.round(latest.number + 1 if latest else 1)


def live_side(run: RunLayout) -> tuple[str, str | None]:
    """The incumbent as a compare side (``base`` or ``rN``) and its served name (None = base)."""
    from .deploy import read_current, round_of

    live = read_current(run)["live"]
    n = round_of(live)
    return (f"r{n}" if n else "base"), (live if n else None)


def gateway_target(cfg, run: RunLayout) -> tuple[str, str] | None:
    """(url, admin key) of this run's running gateway, or None when none answers."""
    import httpx

    if not run.serve_info.exists():
        return None
    try:
        info = json.loads(run.serve_info.read_text())
        os.kill(int(info["pid"]), 0)
        if httpx.get(info["url"] + "/health", timeout=5).status_code != 200:
            return None
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return None  # stale file of a server that is gone
    key = os.environ.get("SELFEVOLVE_ADMIN_KEY") or cfg.serve.admin_key
    if not key and run.admin_key.exists():
        key = run.admin_key.read_text().strip()
    if not key:
        raise LoopError(f"the gateway at {info['url']} is running but no admin key is known: set SELFEVOLVE_ADMIN_KEY")
    return info["url"], key


# ---------------------------------------------------------------- one round

def run_round(cfg, run: RunLayout, inputs: list[Path] | None = None, *, show_progress: bool = True,
              log=print) -> RoundResult:
    """Run (or finish) one round. ``inputs``: chat-log files to collect besides ``data.inputs``."""
    rnd = open_round(run)
    result = RoundResult(rnd.number)
    shared = SharedBackend(cfg)
    say = lambda stage, line: log(f"[round {rnd.number}] {stage}: {line}")  # noqa: E731

    def done(stage: str, line: str) -> None:
        entry = stage_entry(rnd, stage)
        result.stages[stage] = {"ran": False, "seconds": 0.0, "line": line,
                                "recorded_seconds": entry.get("seconds") if entry else None}
        say(stage, f"done before, skipped ({line})")

    def ran(stage: str, t0: float, line: str) -> None:
        result.stages[stage] = {"ran": True, "seconds": round(time.time() - t0, 1), "line": line}
        say(stage, f"{line}  [{time.time() - t0:.1f}s]")

    try:
        # 1. collect: what is new since the last round (files by sha256, gateway chats by seq)
        entry = stage_entry(rnd, "collect")
        if entry and entry.get("status") == "complete":
            done("collect", f"{entry['counts']['conversations']} conversations")
        else:
            from .collect import collect_round

            t0 = time.time()
            paths = [resolve_input(s) for s in cfg.data.inputs] + list(inputs or [])
            report = collect_round(rnd, run, paths, fmt=cfg.data.format, gateway=cfg.data.gateway,
                                   heldout_share=cfg.data.heldout_share)
            if report.empty:
                log(f"nothing new to collect since round {rnd.number - 1}: no round opened, no model work"
                    if rnd.number > 1 else "nothing to collect: no chats captured and no input files")
                return RoundResult(None, "nothing new")
            ran("collect", t0, report.line())

        # 2. revise with hindsight
        if manifest.is_complete(rnd.manifest, "revise", [rnd.conversations]):
            done("revise", _counts(rnd, "revise", "turns", "revised", "kept", "failed"))
        else:
            from .revise import revise_round

            t0 = time.time()
            summary = revise_round(cfg, rnd, backend=shared.get(), show_progress=show_progress)
            ran("revise", t0, summary.line())

        # 3. curate
        if manifest.is_complete(rnd.manifest, "curate", [rnd.revisions]):
            done("curate", _counts(rnd, "curate", "read", "kept", "dropped"))
        else:
            from .curate import curate_round

            t0 = time.time()
            summary = curate_round(cfg, rnd, run, backend=shared.get(), show_progress=show_progress)
            ran("curate", t0, summary.line())

        new = stage_entry(rnd, "curate")["counts"].get("sft", 0)
        if new < cfg.gate.min_new_examples:
            reason = f"curation kept {new} new SFT record(s) < gate.min_new_examples={cfg.gate.min_new_examples}: " \
                     "nothing new to train on"
            _finish_without_training(rnd, result, reason, say)
            return result

        # 4. train (train_round itself skips an adapter that is up to date and resumes from checkpoints)
        from .train import on_cuda, summary_line, train_round

        if on_cuda():
            shared.close()  # the engine holds most of the GPU memory
        t0 = time.time()
        meta = train_round(cfg, rnd, run, show_progress=show_progress, log=lambda m: say("train", m))
        if meta.get("skipped"):
            done("train", summary_line(meta))
        else:
            ran("train", t0, summary_line(meta))

        # 5. compare with the live adapter (or the base model). Once the gate decided, the comparison it
        # decided on stands, even if the live adapter changed since (this round's own deploy, a rollback).
        entry = stage_entry(rnd, "compare")
        gate = stage_entry(rnd, "gate")
        if entry and gate and gate.get("status") == "complete":
            incumbent, live_name = entry["incumbent"], entry.get("incumbent_name")
        else:
            incumbent, live_name = live_side(run)
        candidate = f"r{rnd.number}"
        if (entry and entry.get("incumbent") == incumbent
                and manifest.is_complete(rnd.manifest, "compare", [rnd.train_meta, rnd.heldout])):
            summary = json.loads((rnd.dir / next(iter(entry["outputs"]))).read_text())
            done("compare", _compare_line(summary))
        else:
            from .evaluate import compare

            t0 = time.time()
            summary = compare(cfg, incumbent, candidate, run=run, backend=shared.get(),
                              log=lambda m: say("compare", m.removeprefix("compare: ")))
            manifest.record_stage(rnd.manifest, "compare", inputs=[rnd.train_meta, rnd.heldout],
                                  outputs=[Path(summary["dir"]) / "summary.json"], started=t0,
                                  counts={k: summary["result"][k] for k in ("n", "wins", "ties", "losses")},
                                  incumbent=incumbent, incumbent_name=live_name, candidate=candidate)
            ran("compare", t0, _compare_line(summary))
        shared.close()

        # 6. gate
        result.decision = _gate(cfg, rnd, summary, incumbent, live_name, say, result)

        # 7. deploy
        result.deployed = _deploy(cfg, run, rnd, result.decision, say, result)
    finally:
        shared.close()
    return result


def _counts(rnd: RoundLayout, stage: str, *keys: str) -> str:
    counts = stage_entry(rnd, stage)["counts"]
    return ", ".join(f"{k} {counts.get(k)}" for k in keys)


def _compare_line(s: dict) -> str:
    r = s["result"]
    return (f"{s['b']['label']} vs {s['a']['label']}: W/T/L {r['wins']}/{r['ties']}/{r['losses']} of {r['n']}, "
            f"win rate {r['win_rate']:.1%} (CI {r['ci_low']:.1%}–{r['ci_high']:.1%}), {r['verdict']}")


def _finish_without_training(rnd: RoundLayout, result: RoundResult, reason: str, say) -> None:
    decision = {"promote": False, "reason": reason, "candidate": None}
    for stage, extra in (("gate", {"decision": decision}), ("deploy", {"action": "none", "reason": reason})):
        t0 = time.time()
        manifest.record_stage(rnd.manifest, stage, inputs=[rnd.curated], outputs=[], counts={}, started=t0, **extra)
        result.stages[stage] = {"ran": True, "seconds": 0.0, "line": reason}
    say("gate", reason)
    result.decision = decision


def gate_decision(summary: dict, threshold: float) -> dict:
    """Promote the candidate only when its win rate's CI lower bound against the live one is above ``threshold``."""
    r = summary["result"]
    promote = r["n"] > 0 and r["ci_low"] > threshold
    reason = (f"{summary['b']['label']} vs {summary['a']['label']}: win rate {r['win_rate']:.1%}, "
              f"{r['confidence']:.0%} CI {r['ci_low']:.1%}–{r['ci_high']:.1%}; lower bound "
              f"{'>' if promote else '<='} gate.threshold {threshold:.0%}")
    if not promote and r["n"] and (r["inconsistent"] + r["invalid"]) / r["n"] > 0.5:
        reason += (f" (the judge flipped with the order or gave no verdict on {r['inconsistent'] + r['invalid']} "
                   f"of {r['n']} prompts: a stronger judge, judge.kind=openai, can tell them apart)")
    return {"promote": promote, "reason": reason, "threshold": threshold, "win_rate": r["win_rate"],
            "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"]}


def _gate(cfg, rnd: RoundLayout, summary: dict, incumbent: str, live_name: str | None, say, result) -> dict:
    from .deploy import adapter_name

    entry = stage_entry(rnd, "gate")
    summary_path = Path(summary["dir"]) / "summary.json"
    if entry and manifest.is_complete(rnd.manifest, "gate", [summary_path]):
        result.stages["gate"] = {"ran": False, "seconds": 0.0, "line": entry["decision"]["reason"]}
        return entry["decision"]
    t0 = time.time()
    decision = {**gate_decision(summary, cfg.gate.threshold), "candidate": adapter_name(rnd.number),
                "incumbent": live_name or "base", "compare": incumbent}
    manifest.record_stage(rnd.manifest, "gate", inputs=[summary_path], outputs=[], counts={}, started=t0,
                          decision=decision)
    result.stages["gate"] = {"ran": True, "seconds": round(time.time() - t0, 1), "line": decision["reason"]}
    say("gate", ("PROMOTE " if decision["promote"] else "keep the live one: ") + decision["reason"])
    return decision


def _deploy(cfg, run: RunLayout, rnd: RoundLayout, decision: dict, say, result) -> dict:
    from .deploy import DeployError, admin_call, adapter_name, make_live_offline

    t0 = time.time()
    name = adapter_name(rnd.number)
    if not decision["promote"]:
        action = {"action": "none", "reason": "the gate did not promote the adapter"}
    elif cfg.gate.deploy == "never":
        action = {"action": "none", "reason": "gate.deploy=never: promoted but not deployed; "
                                               f"`selfevolve deploy --round {rnd.number}` makes it live"}
    else:
        target = gateway_target(cfg, run)
        if target is not None:
            url, key = target
            try:
                out = admin_call(url, key, "/admin/adapters/load", {"round": rnd.number})
                action = {"action": "hot-loaded", "gateway": url, "live": out.get("live"),
                          "previous": out.get("previous"), "timings_ms": out.get("timings_ms")}
            except DeployError as e:  # refused or broken: the gateway left the live adapter as it was
                action = {"action": "refused", "gateway": url, "reason": str(e), "status": e.status}
        else:
            try:
                make_live_offline(run, rnd.number, cfg.serve.max_lora_rank)
                action = {"action": "offline", "live": name,
                          "reason": "no gateway running: current.json names it, `selfevolve serve` loads it"}
            except DeployError as e:
                action = {"action": "refused", "reason": str(e)}
    manifest.record_stage(rnd.manifest, "deploy", inputs=[], outputs=[], counts={}, started=t0, **action)
    line = action["action"] + (f" → live {action['live']}" if action.get("live") else "") + \
        (f" ({action['reason']})" if action.get("reason") else "")
    result.stages["deploy"] = {"ran": True, "seconds": round(time.time() - t0, 1), "line": line}
    say("deploy", line)
    return action


# ---------------------------------------------------------------- rounds

def iterate(cfg, run: RunLayout, rounds: int = 1, inputs: list[Path] | None = None, *, show_progress: bool = True,
            log=print) -> list[RoundResult]:
    """Up to ``rounds`` rounds; stops early when there is nothing new. Refreshes the across-rounds report."""
    results = []
    with run_lock(run):
        for i in range(rounds):
            res = run_round(cfg, run, inputs if i == 0 else None, show_progress=show_progress, log=log)
            results.append(res)
            if res.round is None:
                break
            from .report import write_report

            write_report(run)
    return results


# ---------------------------------------------------------------- status

def status(run: RunLayout) -> dict:
    """Rounds, their stages and decisions, and the live adapter, from the files alone."""
    from .deploy import read_current

    rows = []
    for rnd in run.rounds():
        stages = manifest.load(rnd.manifest)["stages"]
        gate = stages.get("gate", {}).get("decision") or {}
        deploy = stages.get("deploy", {})
        collect = stages.get("collect", {}).get("counts", {})
        curate = stages.get("curate", {}).get("counts", {})
        rows.append({
            "round": rnd.number,
            "stages": {s: stages[s]["status"] for s in STAGES if s in stages},
            "seconds": {s: stages[s].get("seconds") for s in STAGES if s in stages},
            "finished": is_finished(rnd),
            "conversations": collect.get("conversations"), "heldout": collect.get("heldout"),
            "turns": stages.get("revise", {}).get("counts", {}).get("turns"),
            "kept": curate.get("kept"), "train_sft": curate.get("train_sft"),
            "win_rate": gate.get("win_rate"), "ci_low": gate.get("ci_low"), "ci_high": gate.get("ci_high"),
            "vs": gate.get("incumbent"), "promote": gate.get("promote"), "reason": gate.get("reason"),
            "deploy": deploy.get("action"),
        })
    current = read_current(run)
    return {"run": str(run.dir), "rounds": rows, "live": current["live"] or "base",
            "previous": current["previous"], "serve": json.loads(run.serve_info.read_text())
            if run.serve_info.exists() else None}
