"""Deploy a round's LoRA adapter into the running vLLM server, switch ``current``, roll back.

deploy(round N):
  1. the adapter folder is ``runs/<name>/round-NNN/adapter`` (or a given path) and must resolve *inside the
     run's own directory* (symlinks included); it must hold ``adapter_model.safetensors`` with a sound header
     (offsets cover the file exactly: truncated or garbage bytes are refused) and ``adapter_config.json``
     that parses with ``r <= serve.max_lora_rank``; any pickle-format weight file (.bin/.pt/.pth/.pkl/.ckpt)
     in the folder is refused;
  2. it is loaded under the versioned name ``se-rNNN`` (``POST /v1/load_lora_adapter``);
  3. one short generation through it must succeed (non-empty text, finish ``stop``/``length``);
  4. ``current.json`` is switched atomically (tmp + rename): ``previous`` = the old live, ``live`` = se-rNNN,
     and a ``history`` entry is appended; the gateway routes ``model=current`` from the in-memory copy,
     which changes only after the file is written.
A refusal or a failure at 2-3 leaves ``live`` untouched and unloads the adapter again if it got loaded.
The previous adapter stays loaded, so ``rollback`` (swap live and previous) is instant; older ``se-r*``
adapters are unloaded after a switch (requests already running on them finish).

The gateway's admin routes call :class:`Deployer` in-process; the CLI calls those routes (:func:`admin_call`).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx

from .layout import RunLayout
from .records import write_json
from .serve import BASE_NAME

PREFIX = "se-r"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SAFETENSORS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
SMOKE_PROMPT = "Hello"
SMOKE_TOKENS = 2


class DeployError(RuntimeError):
    """A refused or failed deploy/rollback; ``status`` is the HTTP code the admin API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def build_random_adapter(model_path: str, out: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter with random (non-zero) weights, so its answers differ from the base model's:
    what the deploy tests and scripts/bench_deploy.py load, without training one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                      init_lora_weights=False))
    model.save_pretrained(str(out))
    return Path(out)


def adapter_name(round_n: int) -> str:
    return f"{PREFIX}{round_n:03d}"


def round_of(name: str | None) -> int | None:
    m = re.fullmatch(rf"{PREFIX}(\d+)", name or "")
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- validation (no server needed)

def check_safetensors(path: Path) -> dict:
    """Validate a safetensors file's header against its size; returns ``{tensor name: shape}``."""
    size = path.stat().st_size
    if size < 8:
        raise DeployError(f"{path.name}: {size} bytes, not a safetensors file")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 1 or n > min(size - 8, 100 << 20):
            raise DeployError(f"{path.name}: header length {n} does not fit a {size}-byte file (corrupt?)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DeployError(f"{path.name}: header is not JSON (corrupt?)") from None
    if not isinstance(header, dict):
        raise DeployError(f"{path.name}: header is not a JSON object")
    data_len = size - 8 - n
    spans, lora, shapes = [], 0, {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = 1
            for d in shape:
                count *= int(d)
            ok = dtype in DTYPE_BYTES and 0 <= start <= end <= data_len and end - start == count * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DeployError(f"{path.name}: tensor {key!r} has a bad entry or lies outside the file (corrupt?)")
        spans.append((start, end))
        shapes[key] = [int(d) for d in shape]
        lora += "lora_" in key
    if not spans:
        raise DeployError(f"{path.name}: holds no tensors")
    if not lora:
        raise DeployError(f"{path.name}: holds no LoRA tensors (lora_A / lora_B)")
    covered = 0
    for start, end in sorted(spans):
        if start != covered:
            raise DeployError(f"{path.name}: tensor data has gaps or overlaps (corrupt?)")
        covered = end
    if covered != data_len:
        raise DeployError(f"{path.name}: {data_len - covered} bytes after the last tensor (corrupt?)")
    return shapes


def check_lora_shapes(shapes: dict, max_rank: int) -> None:
    """Every ``lora_A`` is (r, in) and its ``lora_B`` (out, r) with the same r <= max_rank."""
    for key, a in shapes.items():
        if ".lora_A." not in key:
            continue
        b = shapes.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise DeployError(f"refused: {key} has no matching lora_B tensor")
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise DeployError(f"refused: {key} shape {a} does not match its lora_B shape {b}")
        if a[0] > max_rank:
            raise DeployError(f"refused: {key} has rank {a[0]} > serve.max_lora_rank={max_rank}")


def check_adapter_dir(run: RunLayout, path: str | Path, max_rank: int) -> Path:
    """The resolved adapter folder if it may be deployed; raises :class:`DeployError` saying why not."""
    run_dir = Path(run.dir).resolve()
    folder = Path(path).resolve()
    if not folder.is_relative_to(run_dir):
        raise DeployError(f"refused: {path} resolves to {folder}, outside the run directory {run_dir}")
    if not folder.is_dir():
        raise DeployError(f"no adapter folder at {folder}", 404)
    pickles = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise DeployError(f"refused: {folder} holds pickle-format weights ({', '.join(pickles)}); "
                          f"only {SAFETENSORS} is loaded")
    weights, config = folder / SAFETENSORS, folder / ADAPTER_CONFIG
    for f in (weights, config):
        if not f.is_file():
            raise DeployError(f"refused: {f.name} is missing in {folder}")
        if not f.resolve().is_relative_to(run_dir):
            raise DeployError(f"refused: {f} resolves outside the run directory {run_dir}")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeployError(f"refused: {config} does not parse ({e})") from None
    if not isinstance(cfg, dict):
        raise DeployError(f"refused: {config} is not a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise DeployError(f"refused: {config} is a {cfg.get('peft_type')} adapter, not LORA")
    ranks = [cfg.get("r")] + list((cfg.get("rank_pattern") or {}).values())
    for r in ranks:
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            raise DeployError(f"refused: {config} has no valid rank r ({r!r})")
        if r > max_rank:
            raise DeployError(f"refused: LoRA rank {r} exceeds serve.max_lora_rank={max_rank}")
    check_lora_shapes(check_safetensors(weights), max_rank)
    return folder


# ---------------------------------------------------------------- current.json

def read_current(run: RunLayout) -> dict:
    state = {"live": None, "previous": None, "history": []}
    if run.current.exists():
        data = json.loads(run.current.read_text(encoding="utf-8"))
        state.update({k: data.get(k, state[k]) for k in state})
    return state


def write_current(run: RunLayout, state: dict) -> None:
    write_json(run.current, state)


def _event(kind: str, **kw) -> dict:
    return {"event": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **kw}


def make_live_offline(run: RunLayout, round_n: int, max_rank: int) -> dict:
    """With no server running: check round N's adapter and name it live in current.json, the previous live one
    as ``previous``. The next ``selfevolve serve`` loads it and smoke-tests it (falling back to the base model,
    recorded in the history, if it does not load). Never call this while a gateway of the run is up: it owns
    current.json then."""
    name = adapter_name(round_n)
    folder = check_adapter_dir(run, run.round(round_n).adapter, max_rank)
    state = read_current(run)
    if state["live"] != name:
        state = {"live": name, "previous": state["live"], "history": state["history"] + [
            _event("deploy-offline", round=round_n, live=name, previous=state["live"], path=str(folder))]}
        write_current(run, state)
    return state


# ---------------------------------------------------------------- the deployer

class Deployer:
    """Adapters of one run on one vLLM server. All operations are serialized by one asyncio lock."""

    def __init__(self, run: RunLayout, vllm_url: str, headers: dict | None = None, max_rank: int = 16,
                 timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None):
        self.run = run
        self.transport = transport  # tests: an in-process stub of the vLLM API
        self.url = vllm_url.rstrip("/")
        self.headers = dict(headers or {})
        self.max_rank = max_rank
        self.timeout_s = timeout_s
        self.state = read_current(run)
        self._lock: asyncio.Lock | None = None

    @property
    def live_model(self) -> str:
        """The served name ``model=current`` maps to."""
        return self.state["live"] or BASE_NAME

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout_s,
                                 transport=self.transport)

    async def loaded(self) -> list[str]:
        """Adapter names the server has loaded now."""
        async with self._client() as c:
            r = await c.get("/v1/models")
            r.raise_for_status()
            return [m["id"] for m in r.json()["data"] if m["id"] != BASE_NAME and m.get("parent")]

    async def _load(self, c: httpx.AsyncClient, name: str, path: Path) -> None:
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        if r.status_code != 200:
            raise DeployError(f"vLLM refused {name} from {path}: {_error_text(r)}", 502)

    async def _unload(self, c: httpx.AsyncClient, name: str) -> bool:
        r = await c.post("/v1/unload_lora_adapter", json={"lora_name": name})
        return r.status_code == 200

    async def _smoke(self, c: httpx.AsyncClient, name: str) -> None:
        try:
            r = await c.post("/v1/completions", json={"model": name, "prompt": SMOKE_PROMPT,
                                                      "max_tokens": SMOKE_TOKENS, "temperature": 0})
        except httpx.HTTPError as e:
            raise DeployError(f"smoke test of {name} failed: {type(e).__name__}: {e}", 502) from None
        if r.status_code != 200:
            raise DeployError(f"smoke test of {name} failed: {_error_text(r)}", 502)
        choices = r.json().get("choices") or [{}]
        text, finish = choices[0].get("text") or "", choices[0].get("finish_reason")
        if not text or finish not in ("stop", "length"):
            raise DeployError(f"smoke test of {name} failed: text={text!r} finish_reason={finish!r}", 502)

    def _switch(self, live: str | None, previous: str | None, event: dict) -> None:
        state = {"live": live, "previous": previous, "history": self.state["history"] + [event]}
        write_current(self.run, state)  # atomic: readers see the old file or the new one
        self.state = state

    async def _prune(self, c: httpx.AsyncClient) -> list[str]:
        keep = {self.state["live"], self.state["previous"]}
        r = await c.get("/v1/models")
        names = [m["id"] for m in r.json().get("data", [])] if r.status_code == 200 else []
        gone = [n for n in names if round_of(n) is not None and n not in keep]
        for n in gone:
            await self._unload(c, n)
        return gone

    async def _ensure_loaded(self, c: httpx.AsyncClient, name: str, path: Path | None = None) -> bool:
        """Load ``name`` (validated) unless the server has it; True when it was loaded now."""
        r = await c.get("/v1/models")
        r.raise_for_status()
        if name in {m["id"] for m in r.json()["data"]}:
            return False
        n = round_of(name)
        folder = check_adapter_dir(self.run, path or self.run.round(n).adapter, self.max_rank)
        await self._load(c, name, folder)
        return True

    async def deploy(self, round_n: int, path: str | Path | None = None, activate: bool = True) -> dict:
        """Validate, load as ``se-rNNN``, smoke-test, then (``activate``) switch ``current`` to it."""
        if not isinstance(round_n, int) or isinstance(round_n, bool) or round_n <= 0:
            raise DeployError(f"round must be a positive integer, got {round_n!r}")
        name = adapter_name(round_n)
        folder = check_adapter_dir(self.run, path if path is not None else self.run.round(round_n).adapter,
                                   self.max_rank)
        async with self._locked():
            t0 = time.perf_counter()
            if activate and self.state["live"] == name:
                return {**self.public_state(), "status": "already live", "name": name}
            async with self._client() as c:
                r = await c.get("/v1/models")
                r.raise_for_status()
                was_loaded = name in {m["id"] for m in r.json()["data"]}
                if not was_loaded:
                    await self._load(c, name, folder)
                t1 = time.perf_counter()
                try:
                    await self._smoke(c, name)
                except BaseException:
                    if not was_loaded:
                        await self._unload(c, name)
                    raise
                t2 = time.perf_counter()
                if activate:
                    old = self.state["live"]
                    self._switch(name, old, _event("deploy", round=round_n, live=name, previous=old, path=str(folder)))
                t3 = time.perf_counter()
                pruned = await self._prune(c) if activate else []
            return {**self.public_state(), "status": "live" if activate else "loaded", "name": name,
                    "path": str(folder), "pruned": pruned, "timings_ms": {
                        "load": round((t1 - t0) * 1000, 1), "smoke": round((t2 - t1) * 1000, 1),
                        "switch": round((t3 - t2) * 1000, 1), "total": round((t3 - t0) * 1000, 1)}}

    async def rollback(self) -> dict:
        """Switch back to the previous adapter (or the base model when the first deploy is rolled back)."""
        async with self._locked():
            live, previous = self.state["live"], self.state["previous"]
            if live is None and previous is None:
                raise DeployError("nothing to roll back: the base model is live and there is no previous adapter", 409)
            async with self._client() as c:
                if previous is not None:
                    loaded_now = await self._ensure_loaded(c, previous)
                    try:
                        await self._smoke(c, previous)
                    except BaseException:
                        if loaded_now:
                            await self._unload(c, previous)
                        raise
                self._switch(previous, live, _event("rollback", live=previous, previous=live))
            return {**self.public_state(), "status": "rolled back"}

    async def unload(self, name: str) -> dict:
        """Unload an adapter that is not live (unloading ``previous`` is allowed; rollback reloads it)."""
        async with self._locked():
            if name == self.state["live"]:
                raise DeployError(f"{name} is live: deploy another adapter or roll back first", 409)
            async with self._client() as c:
                if not await self._unload(c, name):
                    raise DeployError(f"{name} is not loaded", 404)
            return {**self.public_state(), "status": "unloaded", "name": name}

    async def restore(self) -> dict:
        """After a server (re)start: load the live and previous adapters that current.json names. A live
        adapter that no longer loads falls back to the base model (recorded in history)."""
        report = {}
        async with self._locked():
            async with self._client() as c:
                for role in ("live", "previous"):
                    name = self.state[role]
                    if name is None:
                        continue
                    try:
                        if round_of(name) is None:
                            raise DeployError(f"{name} is not a deployable adapter name")
                        await self._ensure_loaded(c, name)
                        if role == "live":
                            await self._smoke(c, name)
                        report[role] = f"{name} loaded"
                    except (DeployError, httpx.HTTPError) as e:
                        report[role] = f"{name} failed: {e}"
                        if role == "live":
                            self._switch(None, self.state["previous"],
                                         _event("restore-failed", failed=name, reason=str(e)[:300], live=None))
                        else:
                            self._switch(self.state["live"], None,
                                         _event("restore-failed", failed=name, reason=str(e)[:300]))
        return report

    def public_state(self) -> dict:
        return {"live": self.state["live"], "previous": self.state["previous"], "model": self.live_model}


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("detail")
        return f"HTTP {r.status_code}: {msg or body}"[:500]
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:300]}"


# ---------------------------------------------------------------- the CLI's way in: the gateway admin API

def admin_call(base_url: str, admin_key: str, route: str, payload: dict | None = None, timeout_s: float = 120.0,
               method: str = "POST") -> dict:
    """Call a gateway admin route (``/admin/...``); raises :class:`DeployError` with the gateway's message."""
    url = base_url.rstrip("/") + route
    headers = {"Authorization": f"Bearer {admin_key}"}
    try:
        r = httpx.request(method, url, json=payload if method == "POST" else None, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise DeployError(f"gateway not reachable at {base_url}: {type(e).__name__}: {e}", 503) from None
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text[:300]}
    if r.status_code != 200:
        raise DeployError(str(body.get("detail", body)), r.status_code)
    return body
