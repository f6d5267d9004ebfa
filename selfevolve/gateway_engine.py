"""The served engine lent to `selfevolve iterate`: admin-key routes that reach vLLM without capture.

With `selfevolve serve` up, the round's generation (revise, the model-backed curate filters, compare's answers
and probes) goes through the serving engine instead of starting a second one in-process (issue 15): on a GPU
there is no memory for two engines, on this CPU a second engine costs 35-65 s and its memory each round.
selfevolve/backends/served_backend.py is the client.

  POST /admin/engine/v1/chat/completions   forwarded to a replica, **never captured** (no store write, no
  POST /admin/engine/v1/completions        consent, no per-user limits: the admin key is the operator's)
  POST /admin/engine/tokenize
  POST /admin/engine/adapters/load         {"path": adapter folder in the run} → {"name": "se-borrow-<hash>"}:
                                           staged + checked like a deploy, loaded on every replica
  POST /admin/engine/adapters/unload       {"name": "se-borrow-..."}

A borrowed adapter (the round's candidate) has a private name: the chat routes refuse it and /v1/models does
not list it (:func:`is_private`), so no user chats with a candidate the gate has not passed. ``stream`` is
refused: the lending client reads whole answers. Chat traffic keeps flowing meanwhile: vLLM batches both, and
schedules chats first when the servers run priority scheduling (``serve.borrow_priority``).
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from .gateway_admin import admin_op
from .gateway_http import admin_auth, gateway, json_body
from .live import PRIVATE_PREFIX, is_private, private_name

router = APIRouter(prefix="/admin/engine")
FORWARDED = {"v1/chat/completions": "/v1/chat/completions", "v1/completions": "/v1/completions",
             "tokenize": "/tokenize"}


@router.post("/adapters/load")
async def load(request: Request, _who=Depends(admin_auth)):
    body = await json_body(request)
    path = body.get("path")
    if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
        raise HTTPException(400, "'path' must be an adapter folder inside the run (no NUL, at most 4096 characters)")
    name = private_name(path)
    await admin_op(gateway(request).deployer.load_private(name, path))
    return {"name": name, "path": path}


@router.post("/adapters/unload")
async def unload(request: Request, _who=Depends(admin_auth)):
    name = (await json_body(request)).get("name")
    if not is_private(name) or len(name) > 256:
        raise HTTPException(400, f"'name' must be a borrowed adapter's name ({PRIVATE_PREFIX}...)")
    return await admin_op(gateway(request).deployer.unload(name))


@router.post("/{route:path}")
async def forward(route: str, request: Request, _who=Depends(admin_auth)):
    target = FORWARDED.get(route)
    if target is None:
        raise HTTPException(404, f"/admin/engine/{route[:100]} is not a route: "
                                 f"{', '.join('/admin/engine/' + r for r in FORWARDED)}")
    body = await json_body(request)
    if body.get("stream"):
        raise HTTPException(400, "stream is not supported on the engine routes: they answer whole")
    gw = gateway(request)
    if gw.borrow_priority and target != "/tokenize":
        body["priority"] = gw.borrow_priority  # behind the chats (serve.borrow_priority)
    u, r = await admin_op(gw.pool.send(lambda c: c.post(target, json=body)))
    try:
        content = r.json()
    except ValueError:
        content = {"error": {"message": r.text[:2000], "code": r.status_code}}
    finally:
        gw.pool.release(u)
    status = r.status_code if r.status_code < 500 else 502  # vLLM's own failure, not the client's
    return JSONResponse(content, status_code=status)
