"""The one way to reach a running gateway from the command line and the round runner: where it is, which
admin key to use, and how to call an admin route.

Where: ``runs/<run>/serve.json`` (written by ``selfevolve serve``, removed at exit) when its process lives and
``/health`` answers, else ``http://serve.host:serve.port``. The admin key: ``$SELFEVOLVE_ADMIN_KEY``, then
``serve.admin_key``, then the run's 0600 ``admin.key``.
"""
from __future__ import annotations

import json
import os

import httpx

from .layout import RunLayout


class GatewayError(RuntimeError):
    """An admin call failed: refused by the gateway (its HTTP status) or no gateway answered (503)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def admin_key(cfg, run: RunLayout | None = None, given: str | None = None) -> str | None:
    """The admin key to use: ``given`` (a --admin-key option), $SELFEVOLVE_ADMIN_KEY, serve.admin_key, the run's
    admin.key file; None when none is known."""
    key = given or os.environ.get("SELFEVOLVE_ADMIN_KEY") or cfg.serve.admin_key
    if not key and run is not None and run.admin_key.exists():
        key = run.admin_key.read_text().strip()
    return key or None


def configured_url(cfg) -> str:
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::", "") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}"


def running_gateway(cfg, run: RunLayout) -> tuple[str, str] | None:
    """(url, admin key) of this run's running gateway, or None when none answers. Raises GatewayError when one
    runs but no admin key is known."""
    if not run.serve_info.exists():
        return None
    try:
        info = json.loads(run.serve_info.read_text())
        os.kill(int(info["pid"]), 0)
        if httpx.get(info["url"] + "/health", timeout=5).status_code != 200:
            return None
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return None  # stale file of a server that is gone
    key = admin_key(cfg, run)
    if not key:
        raise GatewayError(f"the gateway at {info['url']} is running but no admin key is known: "
                           "set SELFEVOLVE_ADMIN_KEY", 401)
    return info["url"], key


def admin_call(base_url: str, key: str, route: str, payload: dict | None = None, timeout_s: float = 120.0,
               method: str = "POST") -> dict:
    """Call a gateway admin route (``/admin/...``); raises :class:`GatewayError` with the gateway's message."""
    url = base_url.rstrip("/") + route
    headers = {"Authorization": f"Bearer {key}"}
    try:
        r = httpx.request(method, url, json=payload if method == "POST" else None, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise GatewayError(f"gateway not reachable at {base_url}: {type(e).__name__}: {e}", 503) from None
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text[:300]}
    if r.status_code != 200:
        raise GatewayError(str(body.get("detail", body)), r.status_code)
    return body
