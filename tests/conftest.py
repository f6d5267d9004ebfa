import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/fakes.py

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_cfg():
    from selfevolve.config import load_config

    cfg = load_config(ROOT / "configs/default.yaml")
    cfg.model.path = str(ROOT / cfg.model.path)
    if not (Path(cfg.model.path) / "model.safetensors").exists():
        pytest.fail(f"{cfg.model.path} is missing: run `make setup` first")
    return cfg


@pytest.fixture(scope="session")
def vllm_backend(default_cfg):
    """One in-process vLLM engine for the whole session: each start costs ~30 s on this CPU."""
    from selfevolve.backends import make_backend

    backend = make_backend(default_cfg)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def sample_chats():
    from selfevolve.config import PACKAGE_DATA
    from selfevolve.records import read_jsonl

    return read_jsonl(PACKAGE_DATA / "sample_chats.jsonl")
