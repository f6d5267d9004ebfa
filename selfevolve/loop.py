"""The round runner: every stage of :data:`ROUND`, in order, one folder per round.

Each stage is a module with the same contract (selfevolve/stage.py): ``run(ctx) -> StageResult``, reading and
writing files of the round folder (selfevolve/layout.py) and recording its own manifest entry. A stage whose
entry is complete for the same inputs, with intact outputs, returns what it recorded without working, so a
rerun after a crash (kill -9 included) goes on where the round stopped: revise resumes turn by turn from its
journal, training from its last checkpoint, the other stages start over. A round opens only when collect
finds something new, so ``iterate`` with no new chats does no model work.

One engine (``ctx.models``) serves revise, curate and compare (each start costs ~30 s on CPU); on a GPU the
train stage closes it first, since training needs the memory the engine reserves. Beside this run's served CPU
engine the round computes on the cores it leaves, and the engine answers compare's questions to the live side
while the round trains (:func:`compare.warm`).
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import collect, compare, curate, deploy, faults, gate, manifest, report, revise, signals, train
from .cpu_split import beside_server, pinned
from .layout import RoundLayout, RunLayout
from .live import read_current
from .records import sweep_tmp
from .stage import ModelPool, StageContext, StageError, StageResult

ROUND = (collect, signals, revise, curate, train, compare, gate, deploy)
"""The stages of a round, in order: each module has ``NAME`` and ``run(ctx)``."""
STAGES = tuple(stage.NAME for stage in ROUND)


class LoopError(StageError):
    pass


@dataclass
class RoundResult:
    round: int | None
    status: str = "complete"
    """``complete``, or ``nothing new`` (no round was opened)."""
    stages: dict[str, StageResult] = field(default_factory=dict)
    """The stages this invocation went through, in order (``ran`` False: done before, skipped)."""
    decision: dict | None = None
    deployed: dict | None = None
    around: dict[str, float] = field(default_factory=dict)
    """Per stage that ran: its wall time minus its own seconds (back-end set-up, input checks, waits for work
    done beside it); and the loop's own steps after them (closing the backend, the report): where a round's time
    outside the stages goes."""

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages.values())


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


def is_finished(rnd: RoundLayout) -> bool:
    entry = manifest.load(rnd.manifest)["stages"].get(deploy.NAME)
    return bool(entry and entry.get("status") == "complete")


def open_round(run: RunLayout) -> RoundLayout:
    """The latest round if it did not finish (a crash or kill), else the next one."""
    latest = run.latest_round()
    if latest is not None and not is_finished(latest):
        return latest
    return run.round(latest.number + 1 if latest else 1)


@contextmanager
def alongside(work, ctx: StageContext, when: bool):
    """``work(ctx)`` in a thread while the block runs (when ``when``), joined at its end. It only prepares what a
    later stage would otherwise do itself: a failure is said and the round goes on. Ctrl-C does not wait for it
    (a daemon thread; a warm-up can take minutes, and a rerun goes on from what it kept)."""
    if not when:
        yield
        return
    failed: list[BaseException] = []

    def target():
        try:
            work(ctx)
        except Exception as e:  # noqa: BLE001 - the stage it prepares does the work itself
            failed.append(e)

    thread = threading.Thread(target=target, name=f"alongside-{work.__module__}", daemon=True)
    thread.start()
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if not interrupted:
            t = time.perf_counter()
            thread.join()
            if (waited := time.perf_counter() - t) >= 0.1:  # engine work, not the loop's: benches tell them apart
                ctx.say("alongside", f"waited {waited:.1f}s for {work.__module__}.{work.__name__} after the stage")
            if failed:
                ctx.say("alongside", f"{work.__module__}.{work.__name__} failed ({type(failed[0]).__name__}: "
                                     f"{str(failed[0])[:200]}): its stage does the work itself")


def run_round(cfg, run: RunLayout, inputs: list[Path] | None = None, *, show_progress: bool = True,
              log=print) -> RoundResult:
    """Run (or finish) one round. ``inputs``: chat-log files to collect besides ``data.inputs``."""
    rnd = open_round(run)
    swept = sweep_tmp(rnd.dir)  # temp files of writes a kill interrupted: under the run lock, nobody writes them
    if swept:
        log(f"[round {rnd.number}] removed {swept} temp file(s) left by an interrupted run")
    ctx = StageContext(cfg, run, rnd, ModelPool(cfg), inputs=list(inputs or []), show_progress=show_progress,
                       log=log)
    result = RoundResult(rnd.number)
    try:
        # beside this run's served CPU engine, the round's own compute keeps off its cores (selfevolve/cpu_split.py)
        cores = beside_server(cfg, run)
        with pinned(cores, log=lambda m: ctx.say("cores", m)):
            for stage in ROUND:
                # faults: failpoints count per stage (SELFEVOLVE_FAULT; tests only). While the round trains on its
                # own cores, the served engine answers what compare will ask the live side.
                ahead = stage is train and bool(cores) and cfg.compare.ahead
                t = time.perf_counter()
                with faults.stage(stage.NAME), alongside(compare.warm, ctx, ahead):
                    res = stage.run(ctx)
                if res.ran:
                    result.around[stage.NAME] = round(time.perf_counter() - t - res.seconds, 1)
                if res.stop and stage is collect:  # nothing new: no round was opened
                    log(res.stop)
                    return RoundResult(None, "nothing new")
                result.stages[stage.NAME] = res
                ctx.say(stage.NAME, f"{res.line}  [{res.seconds:.1f}s]" if res.ran
                        else f"done before, skipped ({res.line})")
                if stage is compare:
                    t = time.perf_counter()
                    ctx.models.close()  # the rest of the round needs no model (a borrowed engine unloads our adapter)
                    result.around["closing the backend"] = round(time.perf_counter() - t, 1)
    finally:
        ctx.models.close()
    result.decision = result.stages[gate.NAME].data
    result.deployed = result.stages[deploy.NAME].data
    return result


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
            t = time.perf_counter()
            report.write_report(run)
            res.around["report"] = round(time.perf_counter() - t, 1)
    return results


def status(run: RunLayout) -> dict:
    """Rounds, their stages and decisions, and the live adapter, from the files alone."""
    rows = []
    for rnd in run.rounds():
        stages = manifest.load(rnd.manifest)["stages"]
        gate_ = stages.get(gate.NAME, {}).get("decision") or {}
        collected = stages.get(collect.NAME, {}).get("counts", {})
        curated = stages.get(curate.NAME, {}).get("counts", {})
        rows.append({
            "round": rnd.number,
            "stages": {s: stages[s]["status"] for s in STAGES if s in stages},
            "seconds": {s: stages[s].get("seconds") for s in STAGES if s in stages},
            "finished": is_finished(rnd),
            "conversations": collected.get("conversations"), "heldout": collected.get("heldout"),
            "turns": stages.get(revise.NAME, {}).get("counts", {}).get("turns"),
            "signals": stages.get(signals.NAME, {}).get("counts", {}).get("labels"),
            "kept": curated.get("kept"), "train_sft": curated.get("train_sft"),
            "win_rate": gate_.get("win_rate"), "ci_low": gate_.get("ci_low"), "ci_high": gate_.get("ci_high"),
            "vs": gate_.get("incumbent"), "promote": gate_.get("promote"), "reason": gate_.get("reason"),
            "deploy": stages.get(deploy.NAME, {}).get("action"),
        })
    current = read_current(run)
    return {"run": str(run.dir), "rounds": rows, "live": current["live"] or "base",
            "previous": current["previous"], "serve": json.loads(run.serve_info.read_text())
            if run.serve_info.exists() else None}
