"""The gateway's admin-key routes: load (deploy) and unload adapters, the live state, rollback. See
selfevolve/gateway.py for the API; the work is selfevolve/deploy.py's ``Deployer``.
"""
from __future__ import annotations

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request

from .deploy import DeployError, adapter_name
from .gateway_http import admin_auth, gateway, json_body
from .gateway_pool import NoUpstream

router = APIRouter()
MAX_ROUND = 10**6


async def admin_op(coro):
    """Await a deployer (or pool) operation; its refusals become their HTTP status, no model server in service a
    503, a vLLM failure a 502."""
    try:
        return await coro
    except DeployError as e:
        raise HTTPException(e.status, str(e)) from None
    except NoUpstream as e:
        raise HTTPException(503, str(e)) from None
    except httpx.HTTPError as e:
        raise HTTPException(502, f"model server error: {type(e).__name__}: {e}") from None


@router.post("/admin/adapters/load")
async def load(request: Request, _key: str = Depends(admin_auth)):
    body = await json_body(request)
    rnd, activate, path = body.get("round"), body.get("activate", True), body.get("path")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or not 0 < rnd < MAX_ROUND:
        raise HTTPException(400, f"'round' must be a positive integer below {MAX_ROUND}")
    if not isinstance(activate, bool) or (path is not None and not isinstance(path, str)):
        raise HTTPException(400, "'activate' must be a boolean and 'path' a string")
    if path is not None and ("\x00" in path or len(path) > 4096):  # os.path raises on NUL: that was a 500
        raise HTTPException(400, "'path' must be a folder path (no NUL, at most 4096 characters)")
    return await admin_op(gateway(request).deployer.deploy(rnd, path=path, activate=activate))


@router.post("/admin/adapters/unload")
async def unload(request: Request, _key: str = Depends(admin_auth)):
    body = await json_body(request)
    name = body.get("name")
    if name is None and isinstance(body.get("round"), int) and not isinstance(body.get("round"), bool):
        name = adapter_name(body["round"])
    if not isinstance(name, str) or not name or len(name) > 256:
        raise HTTPException(400, "give 'round' (int) or 'name' (str, at most 256 characters)")
    return await admin_op(gateway(request).deployer.unload(name))


@router.api_route("/admin/current", methods=["GET", "POST"])
async def current(request: Request, _key: str = Depends(admin_auth)):
    gw = gateway(request)
    loaded_on = await admin_op(gw.deployer.loaded_on())  # each model server in service: the same live / previous
    return {**gw.deployer.public_state(), "history": gw.deployer.state["history"],
            "loaded": next(iter(loaded_on.values())), "replicas": [
                {**u.status(), "loaded": loaded_on.get(u.name)} for u in gw.pool.upstreams], "restore": gw.restore}


@router.post("/admin/rollback")
async def rollback(request: Request, _key: str = Depends(admin_auth)):
    return await admin_op(gateway(request).deployer.rollback())
