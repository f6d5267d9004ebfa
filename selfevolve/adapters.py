"""What an adapter is (a PEFT LoRA folder that train writes and compare, deploy and serve load), and every check
an adapter folder passes before a model server loads it.

A lower module: stages ask it instead of importing each other (compare used to import it from train). The checks
need no server and no torch: the safetensors header is read by hand, and any pickle-format weight file (which
could run code when loaded) is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

from .layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunLayout

ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
"""The files PEFT's ``save_pretrained`` writes and vLLM's LoRA loader reads: both must be there."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Weight files in pickle format: an adapter folder holding one is refused."""
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
"""Bytes per element of each safetensors dtype: a tensor's data span must be exactly count × this."""


class DeployError(RuntimeError):
    """A refused or failed deploy/rollback; ``status`` is the HTTP code the admin API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def is_adapter(path: Path) -> bool:
    """True when ``path`` is a folder holding a complete adapter (its config and its safetensors weights)."""
    return all((Path(path) / name).is_file() for name in ADAPTER_FILES)


# ---------------------------------------------------------------- checks before a load (no server needed)

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
            raise DeployError(f"refused: {key} has rank {a[0]} > lora_slots.max_rank={max_rank}")


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
                          f"only {ADAPTER_WEIGHTS} is loaded")
    weights, config = folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG
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
            raise DeployError(f"refused: LoRA rank {r} exceeds lora_slots.max_rank={max_rank}")
    check_lora_shapes(check_safetensors(weights), max_rank)
    return folder
