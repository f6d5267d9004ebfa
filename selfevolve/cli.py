"""The ``selfevolve`` command: one sub-command per stage. Parse, resolve paths, call the stage, print."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .config import PROJECT_ROOT, ConfigError, load_config, resolve_input
from .layout import RunLayout

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
    import yaml

    from .records import write_atomic

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
):
    """Normalize chat logs; rejected records go to OUT.rejected.jsonl with their reasons."""
    from .formats import load_conversations
    from .records import write_jsonl

    try:
        conversations, rejected, report = load_conversations(inputs, fmt=fmt)
    except (FileNotFoundError, ValueError) as e:
        typer.secho(f"import error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    write_jsonl(out, conversations)
    write_jsonl(out.with_suffix(".rejected.jsonl"), rejected)
    typer.echo(report.summary())


@app.command()
def revise(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    round_: Optional[int] = typer.Option(None, "--round", help="Round number (default: the latest, or 1)."),
    inputs: Optional[list[Path]] = typer.Option(None, "--input", "-i", help="Chat logs to import (default: data.inputs)."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
):
    """Revise every assistant turn with hindsight (imports the round's chats first if needed)."""
    from .collect import collect_files
    from .revise import revise_round

    cfg = _config(config, set_)
    run = _run(cfg)
    latest = run.latest_round()
    rnd = run.round(round_ or (latest.number if latest else 1))
    if inputs or not rnd.conversations.exists():
        paths = list(inputs) if inputs else [resolve_input(s) for s in cfg.data.inputs]
        try:
            report = collect_files(paths, cfg.data.format, rnd)
        except (FileNotFoundError, ValueError) as e:
            typer.secho(f"import error: {e}", fg="red", err=True)
            raise typer.Exit(2)
        typer.echo(f"import: {report.summary()}")
    summary = revise_round(cfg, rnd, show_progress=progress)
    typer.echo(f"revise: {summary.line()}")
    typer.echo(f"wrote {rnd.revisions}")


@app.command()
def curate(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    round_: Optional[int] = typer.Option(None, "--round", help="Round number (default: the latest, or 1)."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
):
    """Filter the round's revisions into SFT and preference datasets; dropped records go to rejected.jsonl."""
    from .curate import curate_round

    cfg = _config(config, set_)
    run = _run(cfg)
    latest = run.latest_round()
    rnd = run.round(round_ or (latest.number if latest else 1))
    if not rnd.revisions.exists():
        typer.secho(f"curate: {rnd.revisions} is missing: run `selfevolve revise` first", fg="red", err=True)
        raise typer.Exit(2)
    summary = curate_round(cfg, rnd, run, show_progress=progress)
    typer.echo(f"curate: {summary.line()}")
    typer.echo(f"wrote {rnd.sft}, {rnd.dpo}, {rnd.train_sft}, {rnd.train_dpo}, {rnd.rejected}, {rnd.card}")


if __name__ == "__main__":
    app()
