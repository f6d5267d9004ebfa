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


RoundOpt = typer.Option(None, "--round", help="Round number (default: the latest, or 1).")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
ForceOpt = typer.Option(False, "--force", help="Redo the stage even when its manifest entry is complete.")


def _fail(what: str, e: Exception) -> None:
    typer.secho(f"{what} error: {e}", fg="red", err=True)
    raise typer.Exit(2)


def _stage(stage, config, set_, round_, progress: bool, *, force: bool = False, inputs=None, before=None):
    """Run one stage of a round as ``selfevolve iterate`` would, and print its result."""
    from .stage import ModelPool, StageContext, StageError

    cfg = _config(config, set_)
    run = _run(cfg)
    ctx = StageContext(cfg, run, run.round_or_latest(round_), ModelPool(cfg), inputs=list(inputs or []),
                       show_progress=progress, force=force, log=typer.echo)
    try:
        if before is not None:
            before(ctx)
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
            typer.echo(f"import: {collect_files(paths, ctx.cfg.data.format, ctx.rnd).summary()}")

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
    from rich.console import Console

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
    except (stage.SideError, ValueError, FileNotFoundError) as e:
        _fail("compare", e)
    Console().print(table(summary))
    typer.echo(f"wrote {summary['dir']}/summary.json, report.md, winrate.png, lengths.png")


@app.command()
def gate(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, round_: Optional[int] = RoundOpt,
         progress: bool = ProgressOpt, force: bool = ForceOpt):
    """Decide from the round's comparison whether its adapter goes live (recorded in the manifest)."""
    from . import gate as stage

    _stage(stage, config, set_, round_, progress, force=force)


@app.command()
def report(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt):
    """Every round's comparisons and drift monitors in one table (runs/<name>/report.md) and one plot (report.png)."""
    from .report import write_report

    cfg = _config(config, set_)
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    if not run.dir.exists():
        typer.secho(f"report: {run.dir} does not exist", fg="red", err=True)
        raise typer.Exit(2)
    md, png, summaries = write_report(run)
    typer.echo(f"report: {len(summaries)} comparisons; wrote {md}, {png}")


@app.command()
def publish(
    round_: int = typer.Option(..., "--round", help="Round whose adapter, cards and training data are published."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write (default: runs/<run>/publish/round-NNN)."),
    repo: Optional[str] = typer.Option(None, "--repo", help="Hub repo id to push to (default: publish.repo; "
                                                           "none: write the folder only)."),
    private: Optional[bool] = typer.Option(None, "--private/--public", help="Repo visibility (default: publish.private)."),
    force: bool = typer.Option(False, "--force", help="Publish a round its gate did not promote (the card says so)."),
):
    """A Hub-ready folder of round N (adapter/, model card, dataset/ with its card); pushed when a repo is named."""
    from .publish import PublishError, publish as run_publish

    cfg = _config(config, set_)
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    try:
        run_publish(cfg, run, round_, out=out, repo=repo, private=private, force=force, log=typer.echo)
    except PublishError as e:
        _fail("publish", e)


@app.command()
def serve(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    port: Optional[int] = typer.Option(None, "--port", help="Gateway port (default: serve.port)."),
):
    """Serve the model: vLLM on 127.0.0.1:serve.vllm_port behind the capture gateway (chat page at /). Ctrl-C stops both."""
    from .gateway import serve as run_serve
    from .serve import ServerError

    cfg = _config(config, set_)
    _run(cfg)
    try:
        run_serve(cfg, port=port, echo=typer.echo)
    except (ServerError, ValueError) as e:
        typer.secho(f"serve error: {e}", fg="red", err=True)
        raise typer.Exit(2)


@app.command()
def iterate(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    rounds: int = typer.Option(1, "--rounds", "-n", min=1, help="Rounds to run at most (stops when nothing is new)."),
    inputs: Optional[list[Path]] = typer.Option(None, "--input", "-i", help="Chat-log files to collect as well."),
    progress: bool = ProgressOpt,
):
    """Run rounds: collect → revise → curate → train → compare → gate → deploy. Finished stages are skipped,
    an interrupted round is resumed; with no new chats nothing runs."""
    from .loop import iterate as run_iterate
    from .stage import StageError

    cfg = _config(config, set_)
    run = _run(cfg)
    try:
        results = run_iterate(cfg, run, rounds, list(inputs or []), show_progress=progress, log=typer.echo)
    except (StageError, FileNotFoundError, ValueError) as e:
        _fail("iterate", e)
    for res in results:
        if res.round is None:
            continue
        times = ", ".join(f"{s} {v.seconds:.0f}s" if v.ran else f"{s} skipped" for s, v in res.stages.items())
        typer.echo(f"round {res.round}: {times}; total {res.seconds:.0f}s")
        if res.decision:
            typer.echo(f"round {res.round}: gate: {'promoted' if res.decision['promote'] else 'not promoted'} — "
                       f"{res.decision['reason']}")
        if res.deployed:
            typer.echo(f"round {res.round}: deploy: {res.deployed['action']}"
                       + (f", live {res.deployed['live']}" if res.deployed.get("live") else ""))


@app.command()
def status(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
           as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")):
    """Rounds, their stages, win rates and gate decisions, and the live adapter."""
    import json

    from rich.console import Console
    from rich.table import Table

    from .loop import STAGES, status as run_status

    cfg = _config(config, set_)
    st = run_status(RunLayout.of(cfg.run.root, cfg.run.name))
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    table = Table(title=f"run {st['run']}")
    for col in ("round", "stages", "chats", "turns", "kept / train set", "win rate vs live (CI)", "gate",
                "deploy"):
        table.add_column(col)
    for r in st["rounds"]:
        todo = [s for s in STAGES if r["stages"].get(s) != "complete"]
        stages = "all done" if not todo else f"{'failed' if todo[0] in r['stages'] else 'next'}: {todo[0]}"
        win = (f"{r['win_rate']:.0%} ({r['ci_low']:.0%}–{r['ci_high']:.0%}) vs {r['vs']}"
               if r["win_rate"] is not None else "–")
        gate = "–" if r["promote"] is None else ("promote" if r["promote"] else "keep live")
        table.add_row(str(r["round"]), stages, f"{r['conversations']} (+{r['heldout'] or 0} held out)"
                      if r["conversations"] is not None else "–", str(r["turns"] or "–"),
                      f"{r['kept']} / {r['train_sft']}" if r["kept"] is not None else "–", win, gate,
                      r["deploy"] or ("–" if r["finished"] else "unfinished"))
    Console().print(table)
    serve = st["serve"]
    typer.echo(f"live: {st['live']}  previous: {st['previous'] or '–'}  gateway: "
               f"{serve['url'] + ' (pid ' + str(serve['pid']) + ')' if serve else 'not running'}")


AdminKeyOpt = typer.Option(None, "--admin-key", envvar="SELFEVOLVE_ADMIN_KEY",
                           help="Gateway admin key (default: $SELFEVOLVE_ADMIN_KEY, else serve.admin_key).")
GatewayOpt = typer.Option(None, "--gateway", help="Gateway URL (default: http://serve.host:serve.port).")




@app.command()
def deploy(
    round_: int = typer.Option(..., "--round", help="Round whose adapter (runs/<run>/round-NNN/adapter) goes live."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    admin_key: Optional[str] = AdminKeyOpt,
    gateway: Optional[str] = GatewayOpt,
):
    """Load round N's adapter as se-rNNN into the running server, smoke-test it, make it live (via the gateway)."""
    _admin_post(config, set_, admin_key, gateway, "/admin/adapters/load", {"round": round_}, "deploy")


@app.command()
def rollback(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    admin_key: Optional[str] = AdminKeyOpt,
    gateway: Optional[str] = GatewayOpt,
):
    """Switch the live adapter back to the previous one (via the gateway)."""
    _admin_post(config, set_, admin_key, gateway, "/admin/rollback", None, "rollback")


def _admin_post(config, set_, admin_key, gateway, route: str, payload: dict | None, what: str) -> None:
    import json

    from .gateway_client import GatewayError, admin_call, configured_url
    from .gateway_client import admin_key as find_key

    cfg = _config(config, set_)
    key = find_key(cfg, RunLayout.of(cfg.run.root, cfg.run.name), admin_key)
    if not key:
        typer.secho("no admin key: pass --admin-key or set SELFEVOLVE_ADMIN_KEY (printed by `selfevolve serve`)",
                    fg="red", err=True)
        raise typer.Exit(2)
    try:
        result = admin_call(gateway or configured_url(cfg), key, route, payload)
    except GatewayError as e:
        typer.secho(f"{what} refused (HTTP {e.status}): {e}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    app()
