"""``selfevolve keys issue|revoke|list``: the gateway's per-user chat keys (selfevolve/userkeys.py), kept in the
run folder (``RunLayout.user_keys``). A running gateway of the run picks changes up on its next request.
Registered on the app of selfevolve/cli.py (which imports this module).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import ConfigOpt, SetOpt, _config, _fail, app
from .layout import RunLayout

keys_app = typer.Typer(no_args_is_help=True, help="Per-user chat keys of the gateway: issue, revoke, list.")
app.add_typer(keys_app, name="keys")


def _path(config, set_) -> Path:
    cfg = _config(config, set_)
    return RunLayout.of(cfg.run.root, cfg.run.name).user_keys


@keys_app.command("issue")
def issue(user: str = typer.Argument(..., help="User name: 1-64 of A-Z a-z 0-9 . _ @ -."),
          config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt):
    """Make a new chat key for USER and print it (once: only its SHA-256 is stored)."""
    from .userkeys import UserKeyError, issue as issue_key

    path = _path(config, set_)
    try:
        key, record = issue_key(path, user)
    except UserKeyError as e:
        _fail("keys", e)
    typer.echo(key)
    typer.echo(f"issued key {record['key_id']} for {user} ({path}); it is shown only now", err=True)


@keys_app.command("revoke")
def revoke(user: str = typer.Argument(..., help="User whose keys are revoked."),
           key_id: Optional[str] = typer.Option(None, "--key-id", help="Revoke only this key (see `keys list`)."),
           config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt):
    """Revoke USER's keys (all, or only --key-id): the gateway answers them 401 from its next request on."""
    from .userkeys import UserKeyError, revoke as revoke_keys

    try:
        n = revoke_keys(_path(config, set_), user, key_id)
    except UserKeyError as e:
        _fail("keys", e)
    if n == 0:
        typer.secho(f"keys: {user} has no key" + (f" {key_id}" if key_id else ""), fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {n} key(s) of {user}")


@keys_app.command("list")
def list_(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt):
    """Users, key ids and when each key was issued (never the keys)."""
    from .userkeys import UserKeyError, list_keys

    try:
        records = list_keys(_path(config, set_))
    except UserKeyError as e:
        _fail("keys", e)
    for r in records:
        typer.echo(f"{r['user']}\t{r['key_id']}\t{r.get('created', '')}")
    if not records:
        typer.echo("no per-user keys", err=True)
