"""The ``selfevolve`` commands about a whole run rather than one stage of a round: report, publish, serve,
iterate, status, and the gateway's deploy and rollback. Registered on the app of selfevolve/cli.py (which imports
this module); the modules that do the work are imported inside each command, so ``selfevolve --help`` stays fast.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli import ConfigOpt, ProgressOpt, SetOpt, _config, _fail, _run, app
from .layout import RunLayout
from .stage import StageError


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
        around = ", ".join(f"{s} {v:.1f}s" for s, v in res.around.items() if v >= 0.2)
        typer.echo(f"round {res.round}: {times}; total {res.seconds:.0f}s"
                   + (f"; around the stages: {around}" if around else ""))
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
    """POST to an admin route of the running gateway and print its JSON answer (exit 1 when it refuses)."""
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
