from pathlib import Path

import pytest

from selfevolve.config import ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_load():
    for path in (ROOT / "configs").glob("*.yaml"):
        cfg = load_config(path)
        assert cfg.model.path


def test_override_types():
    cfg = load_config(ROOT / "configs/default.yaml",
                      ["revise.strategy=json", "revise.temperature=1", "backend.seed=7", "data.inputs=[a.jsonl, b.json]"])
    assert cfg.revise.strategy == "json"
    assert cfg.revise.temperature == 1.0 and isinstance(cfg.revise.temperature, float)
    assert cfg.backend.seed == 7
    assert cfg.data.inputs == ["a.jsonl", "b.json"]
    assert load_config(None, ["revise.temperature=1e-3"]).revise.temperature == 0.001


@pytest.mark.parametrize("override,needle", [
    ("revise.stratgy=json", "revise.stratgy"),
    ("nope.x=1", "nope"),
    ("backend.seed=abc", "backend.seed"),
    ("backend.seed=true", "backend.seed"),
    ("revise.strategy=magic", "revise.strategy"),
    ("backend.kind=tgi", "backend.kind"),
])
def test_bad_keys_and_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(ROOT / "configs/default.yaml", [override])


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("revise:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match="revise.temprature"):
        load_config(p)


def test_override_syntax():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")
