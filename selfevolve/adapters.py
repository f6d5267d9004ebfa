"""What an adapter is (a PEFT LoRA folder that train writes and compare, deploy and serve load), and how one reaches
a model server: checked on a private copy that is what the server then loads.

A lower module: stages ask it instead of importing each other. ``stage_adapter``:
  1. the folder must resolve inside the run's own directory and is opened from the run directory down, one
     component at a time, never following a link (a folder swapped for a link meanwhile is refused);
  2. it may hold only ``adapter_config.json``, ``adapter_model.safetensors`` and PEFT's ``README.md``: pickle
     weights (which run code when loaded), embedding or tokenizer files and anything else are refused;
  3. each of the two files is opened once (``O_NOFOLLOW``: no symbolic link), must be a regular file with one
     link (a hard link can be a file outside the run) and is copied from that descriptor into a fresh 0700
     folder under ``runs/<run>/staged-adapters/``; the copies are made read-only;
  4. the copies are checked (selfevolve/adapter_checks.py: config, header, tensors against the base model's
     layers, values). The server loads the copy: changing the round's folder after the check changes nothing.
No server and no torch are needed: the safetensors header is read by hand, the values with numpy.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .adapter_checks import (DTYPE_BYTES, BaseModel, DeployError, check_config, check_tensors, check_values,
                             read_entries)
from .layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunLayout

__all__ = ["ADAPTER_FILES", "DTYPE_BYTES", "BaseModel", "DeployError", "Staging", "check_adapter_dir", "is_adapter",
           "private_dir", "stage_adapter"]

ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
"""The files PEFT's ``save_pretrained`` writes and vLLM's LoRA loader reads: both must be there."""
HARMLESS_FILES = ("README.md",)
"""Other files PEFT's ``save_pretrained`` writes (its model card): allowed in the folder, never copied."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Weight files in pickle format: an adapter folder holding one is refused."""
MAX_BYTES = {ADAPTER_CONFIG: 1 << 20, ADAPTER_WEIGHTS: 4 << 30}
"""Largest size of each file copied (a config is a few KB; a rank-64 adapter of a 70B model is ~1.6 GB)."""
CHECK_PREFIX = ".check-"
"""Staged folders of a check that loads nothing (:func:`check_adapter_dir`): removed at once."""


def is_adapter(path: Path) -> bool:
    """True when ``path`` is a folder holding a complete adapter (its config and its safetensors weights)."""
    return all((Path(path) / name).is_file() for name in ADAPTER_FILES)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can enter (created 0700; a link, or another owner's folder, is refused)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise DeployError(f"{path} is not a folder of this user (a link or another owner's): adapters are not "
                          f"staged there", 500)
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _inside_run(run: RunLayout, path: str | Path) -> tuple[Path, Path]:
    run_dir = Path(run.dir).resolve()
    folder = Path(path).resolve()
    if not folder.is_relative_to(run_dir):
        raise DeployError(f"refused: {path} resolves to {folder}, outside the run directory {run_dir}")
    if not folder.is_dir():
        raise DeployError(f"no adapter folder at {folder}", 404)
    return run_dir, folder


def _open_folder(run_dir: Path, folder: Path) -> int:
    """A descriptor of ``folder`` opened from ``run_dir`` down without following any link."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in folder.relative_to(run_dir).parts:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as e:
        os.close(fd)
        raise DeployError(f"refused: {folder} changed into a link or vanished while opened ({e.strerror})") from None
    return fd


def _check_listing(dfd: int, folder: Path) -> None:
    names = sorted(os.listdir(dfd))
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise DeployError(f"refused: {folder} holds pickle-format weights ({', '.join(pickles)}); "
                          f"only {ADAPTER_WEIGHTS} is loaded")
    for name in ADAPTER_FILES:
        if name not in names:
            raise DeployError(f"refused: {name} is missing in {folder}")
    extra = [n for n in names if n not in ADAPTER_FILES + HARMLESS_FILES]
    if extra:
        raise DeployError(f"refused: {folder} holds {', '.join(extra)}: an adapter folder holds only "
                          f"{', '.join(ADAPTER_FILES + HARMLESS_FILES)} (no embedding, tokenizer or other files)")


def _open_file(dfd: int, name: str, folder: Path, run_dir: Path) -> tuple[int, int]:
    """``(descriptor, size)`` of a regular, singly linked file, opened once without following a link."""
    if stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
        target = (folder / name).resolve()
        where = "inside the run" if target.is_relative_to(run_dir) else f"outside the run directory {run_dir}"
        raise DeployError(f"refused: {folder / name} is a symbolic link to {target} ({where}); adapter files are "
                          f"copied, never followed")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:  # ELOOP: swapped for a link since the listing
        raise DeployError(f"refused: {folder / name} cannot be opened without following a link ({e.strerror})") from None
    st = os.fstat(fd)
    why = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
           f"has {st.st_nlink} hard links (another name, maybe outside the run, shares its contents)"
           if st.st_nlink != 1 else
           f"is {st.st_size} bytes (> {MAX_BYTES[name]})" if st.st_size > MAX_BYTES[name] else None)
    if why:
        os.close(fd)
        raise DeployError(f"refused: {folder / name} {why}")
    return fd, st.st_size


def _copy(src: int, size: int, dest: Path) -> None:
    """Copy from the open descriptor into a new file (no link followed), fsync, then make it read-only."""
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    copied = 0
    with os.fdopen(out, "wb") as f:
        while chunk := os.read(src, 1 << 20):
            f.write(chunk)
            copied += len(chunk)
        f.flush()
        os.fsync(f.fileno())
        os.fchmod(f.fileno(), 0o400)
    if copied != size:
        raise DeployError(f"refused: {dest.name} changed while it was copied ({size} bytes before, {copied} read)")


def _check_copy(dest: Path, max_rank: int, base: BaseModel) -> None:
    """The checks of selfevolve/adapter_checks.py, on the staged copy."""
    try:
        cfg = json.loads((dest / ADAPTER_CONFIG).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeployError(f"refused: {ADAPTER_CONFIG} does not parse ({e})") from None
    check_config(cfg, max_rank, base, ADAPTER_CONFIG)
    weights = dest / ADAPTER_WEIGHTS
    with open(weights, "rb") as f:
        entries, offset = read_entries(f, weights.stat().st_size, ADAPTER_WEIGHTS)
        check_tensors(entries, cfg, base, ADAPTER_WEIGHTS)
        check_values(f, entries, offset, ADAPTER_WEIGHTS)


def stage_adapter(run: RunLayout, path: str | Path, max_rank: int, base: BaseModel | str | Path,
                  label: str = "adapter") -> Path:
    """Copy the adapter at ``path`` into a fresh private folder under ``run.staged_adapters`` and check the copy;
    returns that folder (the one a server should load). Raises :class:`DeployError` saying why not."""
    base = base if isinstance(base, BaseModel) else BaseModel.from_path(base)
    run_dir, folder = _inside_run(run, path)
    dfd = _open_folder(run_dir, folder)
    dest = None
    try:
        _check_listing(dfd, folder)
        dest = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=private_dir(run.staged_adapters)))
        for name in ADAPTER_FILES:
            fd, size = _open_file(dfd, name, folder, run_dir)
            try:
                _copy(fd, size, dest / name)
            finally:
                os.close(fd)
        _check_copy(dest, max_rank, base)
    except BaseException:
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        os.close(dfd)
    return dest


def check_adapter_dir(run: RunLayout, path: str | Path, max_rank: int, base: BaseModel | str | Path) -> Path:
    """The resolved adapter folder if it may be deployed on ``base``; raises :class:`DeployError` saying why not.
    The same checks as :func:`stage_adapter` (on a copy that is removed again): for a deploy that loads nothing now."""
    staged = stage_adapter(run, path, max_rank, base, label=CHECK_PREFIX.rstrip("-"))
    shutil.rmtree(staged, ignore_errors=True)
    return Path(path).resolve()


class Staging:
    """The staged copies one server loaded its adapters from, by adapter name. A copy stays while its adapter is
    loaded (vLLM rereads the folder after evicting an adapter from its cache) and is removed when it is unloaded.
    One per run's server: copies it did not make (a server of the run before) are removed at its first staging."""

    def __init__(self, run: RunLayout, max_rank: int):
        self.run, self.max_rank = run, max_rank
        self.copies: dict[str, Path] = {}
        self._swept = False

    def stage(self, name: str, path: str | Path, base: BaseModel) -> Path:
        """:func:`stage_adapter` under ``name``; the copy is not yet ``name``'s (:meth:`keep` after it loaded)."""
        if not self._swept:
            for old in private_dir(self.run.staged_adapters).iterdir():
                if not old.name.startswith(CHECK_PREFIX) and old not in self.copies.values():
                    shutil.rmtree(old, ignore_errors=True)
            self._swept = True
        return stage_adapter(self.run, path, self.max_rank, base, label=name)

    def keep(self, name: str, staged: Path) -> None:
        """``name`` is loaded from ``staged`` now (a copy it was loaded from before is removed)."""
        self.drop(name)
        self.copies[name] = staged

    def drop(self, name: str | None = None, staged: Path | None = None) -> None:
        """Remove ``staged`` (a copy nothing loaded), or the copy ``name`` was loaded from."""
        staged = staged if staged is not None else self.copies.pop(name, None)
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
