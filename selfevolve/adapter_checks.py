"""What a LoRA adapter's two files must hold to be served on our base model: the checks selfevolve/adapters.py runs
on the private copy it stages (what is checked is what vLLM reads).

- ``adapter_config.json``: a plain PEFT LoRA (``peft_type`` LORA; no DoRA, bias, ``modules_to_save``, trainable
  token rows, layer replication or init that rewrites base weights); ranks 1..``max_rank``; ``lora_alpha`` a
  finite positive number whose scaling (alpha / r, or alpha / sqrt(r) with rsLoRA) is at most
  :data:`MAX_SCALING`; ``base_model_name_or_path`` names the served base model.
- ``adapter_model.safetensors``: a sound header (tensors cover the data exactly, every dimension >= 1), and only
  ``lora_A`` / ``lora_B`` weights of linear layers the base model has and the config targets (never the
  embeddings or ``lm_head``), each pair shaped (rank, in) / (out, rank) with the rank the config gives that
  module, floating point, finite and at most :data:`MAX_ABS_WEIGHT` in magnitude.

The base model's shapes come from its safetensors headers (no weights are read).
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
"""Bytes per element of each safetensors dtype: a tensor's data span must be exactly count × this."""
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
"""The dtypes a LoRA weight may have (vLLM casts them to the model's dtype)."""
MAX_SCALING = 16.0
"""Largest LoRA scaling (alpha / r) accepted. Ours is 2 (r 16, alpha 32); published recipes use 0.5–4, rsLoRA
with a large r somewhat more. A scaling of 1e8 (``lora_alpha: 1e9``) makes every output garbage."""
MAX_ABS_WEIGHT = 1e4
"""Largest magnitude of a LoRA weight accepted. Trained LoRA weights are below ~1; 1e4 only stops weights built
to blow up the activations (the finite check alone lets 1e30 through)."""
MAX_HEADER_BYTES = 100 << 20
"""A safetensors header larger than this is refused before it is read (a header is a few KB per 100 tensors)."""
KEY = re.compile(r"base_model\.model\.(?P<module>[\w.]+)\.lora_(?P<ab>[AB])\.weight")
"""The name PEFT's ``save_pretrained`` gives a LoRA weight (the adapter's own name removed)."""
NOT_ADAPTED = ("embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out")
"""Layers an adapter of ours never touches: the embeddings and the output head (they decide every token)."""
REFUSED_FEATURES = {
    "use_dora": "DoRA (use_dora) rescales the base weights; vLLM does not serve it",
    "lora_bias": "a LoRA bias (lora_bias) changes the base layers' bias",
    "modules_to_save": "modules_to_save replaces whole base layers",
    "trainable_token_indices": "trainable_token_indices retrains embedding rows",
    "layer_replication": "layer_replication changes the base model's layers",
    "target_parameters": "target_parameters adapts raw parameters, not linear layers",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not served",
    "use_qalora": "QALoRA is not served",
    "use_bdlora": "block-diagonal LoRA is not served",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D layers) does not fit our linear layers",
}
"""adapter_config.json fields that must be absent, null, false or empty, and why."""
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")
"""``init_lora_weights`` values whose adapters expect modified base weights."""


class DeployError(RuntimeError):
    """A refused or failed deploy/rollback; ``status`` is the HTTP code the admin API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BaseModel:
    """The served base model as the checks need it: its path or hub id, and ``{module: (out, in)}`` of every
    two-dimensional ``<module>.weight`` in its safetensors."""
    path: str
    shapes: dict

    @classmethod
    def from_path(cls, path: str | Path) -> "BaseModel":
        folder = Path(path)
        if not folder.is_dir():
            folder = _hub_snapshot(str(path))
        return _base_shapes(str(path), str(folder.resolve()))

    def names(self, value: str) -> bool:
        """True when ``value`` (an adapter's ``base_model_name_or_path``) names this model: the same string or
        path, or the same last component (a hub id ``org/name`` and its local folder ``.../name``)."""
        value = value.rstrip("/")
        if value == self.path.rstrip("/"):
            return True
        return bool(value) and Path(value).name == Path(self.path.rstrip("/")).name


def _hub_snapshot(model_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # not cached (or not a hub id): the checks cannot run, so nothing is loaded
        raise DeployError(f"cannot read the base model {model_id!r} to check adapters against it: {e}", 500) from None


@functools.lru_cache(maxsize=4)
def _base_shapes(path: str, folder: str) -> BaseModel:
    root = Path(folder)
    index = root / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
        ["model.safetensors"]
    shapes = {}
    for name in files:
        try:
            with open(root / name, "rb") as f:
                entries, _ = read_entries(f, (root / name).stat().st_size, name)
        except OSError as e:
            raise DeployError(f"cannot read the base model's {name} in {root}: {e}", 500) from None
        shapes.update({k[: -len(".weight")]: tuple(e[1]) for k, e in entries.items()
                       if k.endswith(".weight") and len(e[1]) == 2})
    if not shapes:
        raise DeployError(f"the base model in {root} has no two-dimensional weights to check adapters against", 500)
    return BaseModel(path, shapes)


# ---------------------------------------------------------------- safetensors

def read_entries(f, size: int, name: str) -> tuple[dict, int]:
    """Validate a safetensors file's header against its size: ``({tensor: (dtype, shape, start, end)}, data
    offset)``. Every dimension must be >= 1 and the tensors must cover the data exactly (no gap, overlap, tail)."""
    if size < 8:
        raise DeployError(f"refused: {name}: {size} bytes, not a safetensors file")
    n = int.from_bytes(f.read(8), "little")
    if n <= 1 or n > min(size - 8, MAX_HEADER_BYTES):
        raise DeployError(f"refused: {name}: header length {n} does not fit a {size}-byte safetensors file (corrupt?)")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DeployError(f"refused: {name}: safetensors header is not JSON (corrupt?)") from None
    if not isinstance(header, dict):
        raise DeployError(f"refused: {name}: safetensors header is not a JSON object")
    data_len, entries = size - 8 - n, {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            dims_ok = isinstance(shape, list) and all(type(d) is int and d >= 1 for d in shape)
            count = math.prod(shape) if dims_ok else -1
            ok = dims_ok and type(start) is int and type(end) is int and dtype in DTYPE_BYTES and \
                0 <= start <= end <= data_len and end - start == count * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DeployError(f"refused: {name}: tensor {key!r} has a bad entry (dimensions must be >= 1) or lies "
                              f"outside the file (corrupt safetensors?)")
        entries[key] = (dtype, shape, start, end)
    if not entries:
        raise DeployError(f"refused: {name}: the safetensors file holds no tensors")
    covered = 0
    for _, _, start, end in sorted(entries.values(), key=lambda e: e[2]):
        if start != covered:
            raise DeployError(f"refused: {name}: tensor data has gaps or overlaps (corrupt safetensors?)")
        covered = end
    if covered != data_len:
        raise DeployError(f"refused: {name}: {data_len - covered} bytes after the last tensor (corrupt safetensors?)")
    return entries, 8 + n


def check_values(f, entries: dict, offset: int, name: str) -> None:
    """Every LoRA weight is finite and at most :data:`MAX_ABS_WEIGHT` in magnitude (read tensor by tensor)."""
    for key, (dtype, _, start, end) in entries.items():
        f.seek(offset + start)
        raw = f.read(end - start)
        if dtype == "BF16":  # numpy has no bfloat16: its bits are the top half of a float32's
            values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(raw, {"F64": "<f8", "F32": "<f4", "F16": "<f2"}[dtype])
        if not np.isfinite(values).all():
            raise DeployError(f"refused: {name}: tensor {key} holds NaN or infinite values")
        peak = float(np.abs(values).max())
        if peak > MAX_ABS_WEIGHT:
            raise DeployError(f"refused: {name}: tensor {key} holds a weight of magnitude {peak:.3g} "
                              f"(> {MAX_ABS_WEIGHT:g}: no trained LoRA weight is near that)")


# ---------------------------------------------------------------- adapter_config.json

def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _pattern(patterns: dict, module: str):
    """PEFT's rank_pattern / alpha_pattern rule: a key matches a module name it ends at a '.' boundary."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def check_config(cfg, max_rank: int, base: BaseModel, name: str = "adapter_config.json") -> dict:
    """Refuse anything but a plain LoRA for ``base``; returns the config."""
    if not isinstance(cfg, dict):
        raise DeployError(f"refused: {name} is not a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise DeployError(f"refused: {name} is a {cfg.get('peft_type')!r} adapter, not LORA")
    ranks = {"r": cfg.get("r")}
    for pattern_name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(cfg.get(pattern_name) or {}, dict):
            raise DeployError(f"refused: {name}: {pattern_name} is not an object")
    ranks.update({f"rank_pattern[{k}]": v for k, v in (cfg.get("rank_pattern") or {}).items()})
    for where, r in ranks.items():
        if type(r) is not int or r <= 0:
            raise DeployError(f"refused: {name} has no valid rank {where} ({r!r})")
        if r > max_rank:
            raise DeployError(f"refused: {name}: LoRA rank {r} exceeds lora_slots.max_rank={max_rank}")
    alphas = {"lora_alpha": cfg.get("lora_alpha")}
    alphas.update({f"alpha_pattern[{k}]": v for k, v in (cfg.get("alpha_pattern") or {}).items()})
    scale = math.sqrt if cfg.get("use_rslora") else (lambda r: r)
    for where, alpha in alphas.items():
        if not _number(alpha):
            raise DeployError(f"refused: {name}: {where} must be a finite positive number, got {alpha!r}")
        scaling = alpha / scale(min(ranks.values()))
        if scaling > MAX_SCALING:
            raise DeployError(f"refused: {name}: {where}={alpha:g} scales the update by {scaling:.3g} "
                              f"(> {MAX_SCALING:g}): its answers would be noise")
    for field, why in REFUSED_FEATURES.items():
        if cfg.get(field):
            raise DeployError(f"refused: {name}: {field}={cfg[field]!r}: {why}")
    if cfg.get("bias", "none") != "none":
        raise DeployError(f"refused: {name}: bias={cfg['bias']!r} trains the base layers' biases")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise DeployError(f"refused: {name}: init_lora_weights={init!r} expects modified base weights")
    targets = cfg.get("target_modules")
    names = [targets] if isinstance(targets, str) else targets
    if not names or not isinstance(names, list) or not all(isinstance(t, str) and t for t in names):
        raise DeployError(f"refused: {name}: target_modules must name the adapted layers, got {targets!r}")
    if any(_targets(targets, layer) for layer in NOT_ADAPTED):
        raise DeployError(f"refused: {name}: target_modules {targets!r} adapts the embeddings or the output head")
    claimed = cfg.get("base_model_name_or_path")
    if not isinstance(claimed, str) or not base.names(claimed):
        raise DeployError(f"refused: {name}: base_model_name_or_path={claimed!r} is not the served base model "
                          f"{base.path!r}")
    return cfg


def _targets(targets, module: str) -> bool:
    """PEFT's rule: a list matches a module by its last name component(s), a string is a regex over the full name."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


# ---------------------------------------------------------------- tensors against the base model

def check_tensors(entries: dict, cfg: dict, base: BaseModel, name: str = "adapter_model.safetensors") -> int:
    """Only lora_A / lora_B pairs of linear layers of ``base`` that the config targets, shaped (rank, in) /
    (out, rank) with the rank the config gives the module; returns the number of adapted modules."""
    pairs: dict[str, dict] = {}
    for key, (dtype, shape, _, _) in entries.items():
        m = KEY.fullmatch(key)
        if m is None:
            raise DeployError(f"refused: {name}: unexpected tensor {key!r} (only the lora_A / lora_B weights of "
                              f"linear layers are loaded; embeddings, DoRA magnitudes and saved modules are not)")
        module = m["module"]
        if any(module == x or module.endswith("." + x) for x in NOT_ADAPTED):
            raise DeployError(f"refused: {name}: {key} adapts {module} (embeddings and output head are not adapted)")
        if module not in base.shapes:
            raise DeployError(f"refused: {name}: {key} adapts {module}, which the base model does not have")
        if not _targets(cfg["target_modules"], module):
            raise DeployError(f"refused: {name}: {key} adapts {module}, which target_modules "
                              f"{cfg['target_modules']!r} does not name")
        if dtype not in FLOAT_DTYPES:
            raise DeployError(f"refused: {name}: {key} is {dtype}, not floating point")
        pairs.setdefault(module, {})[m["ab"]] = list(shape)
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise DeployError(f"refused: {name}: {module} has lora_{'AB'.replace(''.join(ab), '')} missing")
        rank = _pattern(cfg.get("rank_pattern") or {}, module) or cfg["r"]
        out, inp = base.shapes[module]
        if ab["A"] != [rank, inp] or ab["B"] != [out, rank]:
            raise DeployError(f"refused: {name}: {module} has lora_A {ab['A']} and lora_B {ab['B']}; the base "
                              f"layer is ({out}, {inp}) and adapter_config.json gives rank {rank}, so they must be "
                              f"[{rank}, {inp}] and [{out}, {rank}]")
    if not pairs:
        raise DeployError(f"refused: {name}: holds no LoRA tensors (lora_A / lora_B)")
    return len(pairs)
