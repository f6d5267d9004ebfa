"""``selfevolve forget``: delete a user's or a conversation's chats from the store and from the rounds not yet
trained on (selfevolve/forget.py), and print what was deleted. Registered on the app of selfevolve/cli.py."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import ConfigOpt, SetOpt, _config, _fail, app
from .layout import RunLayout


@app.command()
def forget(
    users: Optional[list[str]] = typer.Option(None, "--user", help="A user to forget: the name sent as the request's "
                                              "`user` field, or the API key they chatted with (repeatable)."),
    conversations: Optional[list[str]] = typer.Option(None, "--conversation", help="A conversation id to forget "
                                                      "(repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted; change nothing."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
):
    """Delete a user's (or a conversation's) chats from the store and from every round not yet trained on;
    prints what was deleted per table and per file. Rounds already trained on are listed, not changed."""
    from .forget import forget as run_forget
    from .loop import LoopError
    from .store import StoreError

    if not users and not conversations:
        _fail("forget", ValueError("name a --user or a --conversation"))
    cfg = _config(config, set_)
    run = RunLayout.of(cfg.run.root, cfg.run.name)
    try:
        report = run_forget(run, users=list(users or []), conversations=list(conversations or []), dry_run=dry_run,
                            log=typer.echo)
    except (LoopError, StoreError, ValueError) as e:
        _fail("forget", e)
    typer.echo(f"forget: {'dry run, nothing changed; would delete' if dry_run else 'deleted'}:")
    for line in report.lines():
        typer.echo(f"  {line}")
    if not report.found:
        typer.echo("forget: nothing found for what was named")
