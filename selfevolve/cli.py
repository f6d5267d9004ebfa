"""The ``selfevolve`` command: one sub-command per stage. Parse, resolve paths, call the stage, print."""
# (The docstring above is the --help text.) This module holds the app, the shared options and helpers, and the
# commands of one round's stages; the commands about a whole run (report, publish, serve, iterate, status, deploy,
# rollback) are in selfevolve/cli_run.py, registered on the same app. Stage modules are imported inside their
# command: ``selfevolve --help`` stays fast.
from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.console import Console

from .config import PROJECT_ROOT, ConfigError, load_config, resolve_input
from .cpu_split import beside_server, pinned
from .layout import RunLayout
from .records import write_atomic
from .stage import ModelPool, StageContext, StageError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: configs/default.yaml).")
SetOpt = typer.Option(None, "--set", help="Override one key, e.g. --set revise.strategy=json (repeatable).")


def _config(path: Optional[Path], overrides: Optional[list[str]]):
    if path is None:
        path = Path("configs/default.yaml")
        if not path.exists():
            path = PROJECT_ROOT / "configs" / "default.yaml"
    try:
        return load_config(path, overrides or [])
    except ConfigError as e:
        typer.secho(f"config error: {e}", fg="red", err=True)
        raise typer.Exit(2)


def _run(cfg) -> RunLayout:
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    run.dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return run


@app.command("prepare-model")
def prepare_model(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, force: bool = False):
    """Build the model folder the config points at (once; a second run does nothing)."""
    cfg = _config(config, set_)
    if cfg.model.prepare_from == "none":
        typer.echo(f"model.path={cfg.model.path} is used as it is (prepare_from=none)")
        return
    from .model_prep import is_prepared, prepare_smollm2

    if is_prepared(cfg.model.path) and not force:
        typer.echo(f"model ready: {cfg.model.path}")
        return
    out = prepare_smollm2(cfg.model.path, force=force)
    typer.echo(f"model prepared: {out}")


@app.command("import")
def import_(
    inputs: list[Path] = typer.Argument(..., help="Chat logs: ShareGPT JSON/JSONL, OpenAI-messages JSONL, HF dataset folders."),
    out: Path = typer.Option(..., "--out", "-o", help="Normalized conversations (JSONL)."),
    fmt: str = typer.Option("auto", "--format", help="auto | sharegpt | openai | hf"),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
):
    """Normalize chat logs; rejected records go to OUT.rejected.jsonl with their reasons (caps: data.limits).

    Records stream through: memory does not grow with the input. On any error neither file is changed."""
    from .formats import import_files

    cfg = _config(config, set_)
    rejected = out.with_suffix(".rejected.jsonl")
    for target in (out, rejected):
        if target.is_dir():
            _fail("import", ValueError(f"cannot write {target}: it is a directory"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail("import", ValueError(f"cannot create the folder of {out}: {e.strerror or e}"))
    try:
        report = import_files(inputs, out, rejected, fmt=fmt, limits=cfg.data.limits)
    except ValueError as e:  # an input that cannot be read in --format
        _fail("import", e)
    except OSError as e:  # a missing or unreadable input, an output that cannot be written, a full disk, ...
        if e.strerror is None:  # the import's own message (a missing input)
            _fail("import", e)
        writing = e.filename is not None and Path(e.filename).parent == out.parent
        _fail("import", ValueError(f"cannot write {out}: {e.strerror}" if writing else f"{e.strerror}: {e.filename}"))
    except RuntimeError as e:  # read != accepted + rejected: a bug, and nothing was written
        typer.secho(f"import error: {e}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(report.summary())
    typer.echo(f"wrote {out} ({report.conversations} conversations), {rejected} ({report.rejected} rejected)")


RoundOpt = typer.Option(None, "--round", help="Round number (default: the latest, or 1).")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
ForceOpt = typer.Option(False, "--force", help="Redo the stage even when its manifest entry is complete.")


def _fail(what: str, e: Exception) -> None:
    typer.secho(f"{what} error: {e}", fg="red", err=True)
    raise typer.Exit(2)


def _stage(stage, config, set_, round_, progress: bool, *, force: bool = False, inputs=None, before=None):
    """Run one stage of a round as ``selfevolve iterate`` would, and print its result."""
    cfg = _config(config, set_)
    run = _run(cfg)
    ctx = StageContext(cfg, run, run.round_or_latest(round_), ModelPool(cfg), inputs=list(inputs or []),
                       show_progress=progress, force=force, log=typer.echo)
    try:
        if before is not None:
            before(ctx)
        with pinned(beside_server(cfg, run), log=typer.echo):  # as a round does (selfevolve/cpu_split.py)
            res = stage.run(ctx)
    except (StageError, FileNotFoundError, ValueError) as e:
        _fail(stage.NAME, e)
    finally:
        ctx.models.close()
    if res.stop:
        typer.echo(f"{stage.NAME}: {res.stop}")
    elif res.ran:
        typer.echo(f"{stage.NAME}: {res.line}")
    else:
        typer.echo(f"{stage.NAME}: done before, skipped ({res.line}); --force redoes it")
    return ctx, res


@app.command()
def collect(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, round_: Optional[int] = RoundOpt,
            progress: bool = ProgressOpt, force: bool = ForceOpt,
            inputs: Optional[list[Path]] = typer.Option(None, "--input", "-i", help="Chat-log files to collect as well.")):
    """Collect what is new (data.inputs files no round consumed, consented gateway chats) into a round."""
    from . import collect as stage

    _stage(stage, config, set_, round_, progress, force=force, inputs=inputs)


@app.command()
def signals(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, round_: Optional[int] = RoundOpt,
            progress: bool = ProgressOpt, force: bool = ForceOpt):
    """Label every assistant turn confirmed / corrected / unclear from what the user said next (and feedback)."""
    from . import signals as stage

    _stage(stage, config, set_, round_, progress, force=force)


@app.command()
def revise(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    round_: Optional[int] = RoundOpt,
    inputs: Optional[list[Path]] = typer.Option(None, "--input", "-i", help="Chat logs to import (default: data.inputs)."),
    progress: bool = ProgressOpt,
    force: bool = ForceOpt,
):
    """Revise every assistant turn with hindsight (imports the round's chats first if needed)."""
    from . import revise as stage
    from .collect import collect_files

    def imported(ctx):
        if inputs or not ctx.rnd.conversations.exists():
            paths = list(inputs) if inputs else [resolve_input(s) for s in ctx.cfg.data.inputs]
            report = collect_files(paths, ctx.cfg.data.format, ctx.rnd, pii=ctx.cfg.pii, limits=ctx.cfg.data.limits)
            typer.echo(f"import: {report.summary()}")

    ctx, _ = _stage(stage, config, set_, round_, progress, force=force, before=imported)
    typer.echo(f"wrote {ctx.rnd.revisions}")


@app.command()
def curate(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, round_: Optional[int] = RoundOpt,
           progress: bool = ProgressOpt, force: bool = ForceOpt):
    """Filter the round's revisions into SFT and preference datasets; dropped records go to rejected.jsonl."""
    from . import curate as stage

    ctx, _ = _stage(stage, config, set_, round_, progress, force=force)
    r = ctx.rnd
    typer.echo(f"wrote {r.sft}, {r.dpo}, {r.train_sft}, {r.train_dpo}, {r.rejected}, {r.card}")


@app.command()
def train(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, round_: Optional[int] = RoundOpt,
          progress: bool = ProgressOpt,
          force: bool = typer.Option(False, "--force", help="Retrain even when the adapter is up to date.")):
    """Train the round's LoRA adapter (SFT, then DPO if train.dpo.enabled) on the accumulated curated data."""
    from . import train as stage

    ctx, _ = _stage(stage, config, set_, round_, progress, force=force)
    typer.echo(f"wrote {ctx.rnd.adapter}, {ctx.rnd.train_meta}")


@app.command()
def compare(
    a: Optional[str] = typer.Argument(None, help="Side A (the incumbent): base, r1, round-001, or an adapter folder "
                                                 "in the run. Without A and B: the round's adapter vs the live one."),
    b: Optional[str] = typer.Argument(None, help="Side B (the candidate), same forms as A."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    round_: Optional[int] = RoundOpt,
    progress: bool = ProgressOpt,
    force: bool = ForceOpt,
):
    """B against A on held-out prompts: pairwise win rate with CI, length control, drift monitors."""
    from . import compare as stage
    from .compare_report import table

    if (a is None) != (b is None):
        _fail("compare", ValueError("give both sides A and B, or neither (the round's stage)"))
    if a is None:
        ctx, res = _stage(stage, config, set_, round_, progress, force=force)
        return
    cfg = _config(config, set_)
    run = _run(cfg)
    try:
        summary = stage.compare(cfg, a, b, run=run, log=lambda m: typer.echo(m, err=True))
    except (stage.SideError, StageError, ValueError, FileNotFoundError) as e:
        _fail("compare", e)
    Console().print(table(summary))
    typer.echo(f"wrote {summary['dir']}/summary.json, report.md, winrate.png, lengths.png")


@app.command()
def gate(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, round_: Optional[int] = RoundOpt,
         progress: bool = ProgressOpt, force: bool = ForceOpt):
    """Decide from the round's comparison whether its adapter goes live (recorded in the manifest)."""
    from . import gate as stage

    _stage(stage, config, set_, round_, progress, force=force)


from . import cli_run  # noqa: E402,F401  (registers the run commands on ``app``; it imports this module)
from . import cli_forget  # noqa: E402,F401  (registers `forget` on ``app``)
from . import cli_keys  # noqa: E402,F401  (registers `selfevolve keys issue|revoke|list`)


def main() -> None:
    """The console script: the app, then an exit without the interpreter's teardown.

    Why: after a round the process holds torch, transformers and sentence-transformers, and the interpreter's
    finalization (freeing every module and tensor one by one) takes 0.9 s on a quiet machine and 1.5 s beside a
    busy serving engine: a quarter of a round's orchestration (docs/bench/borrow.md). Nothing is lost by skipping
    it: every output is written atomically and closed before a command returns, and what an exit must still do runs
    as usual: the atexit handlers (logging, multiprocessing children, Ray, vLLM) and flushing stdout and stderr.
    While a thread that is not a daemon still runs, the normal exit, which waits for it, is kept.
    """
    try:
        app()
        code = 0
    except SystemExit as e:  # click ends every command this way, with its exit code
        code = e.code
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
