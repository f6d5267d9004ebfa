"""The gateway's pooled connections to vLLM are dropped before vLLM's server would close them: a request sent on a
connection the server is closing at that instant fails with a ReadError, a 502 for the client (seen once in CI,
during a hot swap under streams). A real HTTP server on 127.0.0.1 tells which connection each request came on."""
from __future__ import annotations

import asyncio
import importlib.util
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request

from selfevolve.gateway_pool import KEEPALIVE_S, UpstreamPool


def _vllm_keep_alive_default() -> int:
    """vLLM's server keep-alive default, read from its source (importing vllm.envs costs ~8 s here)."""
    spec = importlib.util.find_spec("vllm")
    text = (Path(spec.submodule_search_locations[0]) / "envs.py").read_text()
    m = re.search(r'"VLLM_HTTP_TIMEOUT_KEEP_ALIVE",\s*"(\d+)"', text)
    assert m, "vLLM's envs.py no longer names VLLM_HTTP_TIMEOUT_KEEP_ALIVE's default"
    return int(m.group(1))


@pytest.fixture
def server():
    app = FastAPI()

    @app.get("/port")
    async def port(request: Request):
        return {"port": request.client.port}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    # the server keeps idle connections longer than the gateway does, as vLLM's does
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free, log_level="warning",
                                        timeout_keep_alive=int(KEEPALIVE_S) + 3))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{free}"
    srv.should_exit = True
    t.join(timeout=10)


def test_idle_connections_are_dropped_before_vllm_closes_them(server):
    assert KEEPALIVE_S <= _vllm_keep_alive_default() - 2, "leave vLLM's keep-alive timer a margin"

    async def ports() -> tuple[int, int, int]:
        pool = UpstreamPool.of([server])
        await pool.open()
        try:
            client = pool.upstreams[0].client
            a = (await client.get("/port")).json()["port"]
            await asyncio.sleep(KEEPALIVE_S / 4)
            b = (await client.get("/port")).json()["port"]  # a busy connection is kept
            await asyncio.sleep(KEEPALIVE_S + 0.5)
            c = (await client.get("/port")).json()["port"]  # an idle one was dropped, not reused
            return a, b, c
        finally:
            await pool.aclose()

    a, b, c = asyncio.run(ports())
    assert a == b
    assert c != b
