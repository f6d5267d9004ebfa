import dataclasses
import math
import types
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfevolve.cli import app
from selfevolve.config import LR_SCHEDULERS, Config, ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = str(ROOT / "configs/default.yaml")


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


# ``prepare-model`` loads the config before it imports anything else: a refused config exits 2 there.
LOAD = "prepare-model"


def test_shipped_configs_load():
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        cfg = load_config(path)
        assert cfg.model.path
        assert cfg.train.lora.r <= cfg.lora_slots.max_rank


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


# Each: an override that must be refused at load (exit 2 through the CLI), and the text the message must hold.
BAD = [
    ("revise.max_tokens=-5", "revise.max_tokens: must be positive, got -5"),
    ("revise.max_in_flight=0", "revise.max_in_flight: must be positive"),
    ("revise.max_failed_share=-1", "revise.max_failed_share: must be in [0, 1]"),
    ("revise.critique_max_tokens=0", "revise.critique_max_tokens: must be positive"),
    ("revise.retries=-1", "revise.retries: must be non-negative"),
    ("revise.journal_every=0", "revise.journal_every: must be positive"),
    ("revise.temperature=-0.1", "revise.temperature: must be non-negative"),
    ("revise.temperature=.nan", "revise.temperature: must be non-negative, got nan"),
    ("revise.top_p=0", "revise.top_p: must be in (0, 1]"),
    ("curate.self_consistency.agreement=2", "curate.self_consistency.agreement: must be in [0, 1]"),
    ("curate.self_consistency.samples=0", "curate.self_consistency.samples: must be positive"),
    ("curate.self_consistency.temperature=0", "curate.self_consistency.temperature: must be positive"),
    ("curate.diversity.threshold=1.5", "curate.diversity.threshold: must be in (0, 1]"),
    ("curate.diversity.num_perm=0", "curate.diversity.num_perm: must be positive"),
    ("curate.diversity.threshold=0.99", "curate.diversity: threshold=0.99 with num_perm=128"),
    ("curate.perplexity.max_repetition=1.2", "curate.perplexity.max_repetition: must be in [0, 1]"),
    ("curate.perplexity.mad_k=-1", "curate.perplexity.mad_k: must be non-negative"),
    ("curate.perplexity.ngram=0", "curate.perplexity.ngram: must be positive"),
    ("curate.structural.max_chars=0", "curate.structural.max_chars: must be positive"),
    ("curate.structural.min_chars=5000", "curate.structural: min_chars=5000 > max_chars=4000"),
    ("curate.leakage.extra_patterns=['(unclosed']", "curate.leakage.extra_patterns[0]: '(unclosed' is not a valid regex"),
    ("curate.order=[structural, typo]", "curate.order: unknown filter 'typo'"),
    ("backend.concurrency=0", "backend.concurrency: must be positive"),
    ("backend.max_num_seqs=0", "backend.max_num_seqs: must be positive"),
    ("backend.gpu_memory_utilization=1.5", "backend.gpu_memory_utilization: must be in (0, 1]"),
    ("backend.cpu_kvcache_gb=0", "backend.cpu_kvcache_gb: must be positive"),
    ("backend.request_timeout_s=0", "backend.request_timeout_s: must be positive"),
    ("backend.block_size=-32", "backend.block_size: must be non-negative"),
    ("compare.max_prompts=-1", "compare.max_prompts: must be non-negative"),
    ("compare.max_heldout=-1", "compare.max_heldout: must be non-negative"),
    ("compare.top_p=1.5", "compare.top_p: must be in (0, 1]"),
    ("compare.max_probes=-1", "compare.max_probes: must be non-negative"),
    ("compare.confidence=1", "compare.confidence: must be in (0, 1)"),
    ("compare.length_buckets=[1.5, 0.9]", "compare.length_buckets: must be increasing"),
    ("judge.kind=gpt", "judge.kind: 'gpt' is not one of same, openai"),
    ("judge.max_tokens=0", "judge.max_tokens: must be positive"),
    ("judge.backend.kind=vllm", "judge.backend.kind: the judge is reached as 'openai'"),
    ("judge.backend.concurrency=0", "judge.backend.concurrency: must be positive"),
    ("judge.base_url=http://x:1/v1", "judge.base_url moved to judge.backend.base_url"),
    ("serve.max_loras=8", "serve.max_loras moved to lora_slots.serve"),
    ("backend.max_lora_rank=32", "backend.max_lora_rank moved to lora_slots.max_rank"),
    ("model.max_model_len=0", "model.max_model_len: must be positive"),
    ("lora_slots.max_rank=0", "lora_slots.max_rank: must be positive"),
    ("lora_slots.serve=1", "lora_slots.serve: must be at least 2"),
    ("train.lora.r=32", "train.lora.r=32 exceeds lora_slots.max_rank=16"),
    ("signals.min_confidence=1.5", "signals.min_confidence: must be in [0, 1]"),
    ("gate.max_perplexity_rise=0", "gate.max_perplexity_rise: must be positive"),
    ("gate.min_distinct2_ratio=-0.5", "gate.min_distinct2_ratio: must be non-negative"),
    ("gate.min_taught_gain=1", "gate.min_taught_gain: must be in [-1, 1)"),
    ("train.warmup_steps=-1", "train.warmup_steps: must be non-negative"),
    ("train.save_total_limit=0", "train.save_total_limit: must be positive"),
    ("train.torch_threads=-2", "train.torch_threads: must be non-negative"),
    ("train.lr_scheduler=cosin", "train.lr_scheduler: 'cosin' is not one of"),
    ("train.dpo.beta=0", "train.dpo.beta: must be positive"),
    ("data.heldout_share=1", "data.heldout_share: must be in [0, 1)"),
    ("serve.port=70000", "serve.port: must be a TCP port"),
    ("serve.vllm_port=8080", "serve.port and serve.vllm_port are both 8080"),
    ("run.name=../../x", "run.name: must be one folder name"),
    ("run.name=a/b", "run.name: must be one folder name"),
    ("run.name=..", "run.name: must be one folder name"),
    ("run.name=", "run.name: must be one folder name"),
]


@pytest.mark.parametrize("override,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_value_exits_2_naming_the_key(override, needle):
    res = cli(LOAD, "-c", DEFAULT, "--set", override)
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()), res.output  # rich/typer may wrap long lines


def _numeric_leaves(obj, prefix=""):
    """(key, type) of every int / float field of the config tree (Optional ones too), bools excluded."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _numeric_leaves(value, key + ".")
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if tp in (int, float):
            yield key, tp


def test_every_numeric_field_is_range_checked():
    """A value no field can mean (-1e9; NaN for floats) is refused for every numeric key, by name: a new field
    without a range check fails here."""
    leaves = list(_numeric_leaves(Config()))
    assert len(leaves) > 80
    unchecked = []
    for key, tp in leaves:
        for raw in ["-1000000000"] + ([".nan"] if tp is float else []):
            try:
                load_config(None, [f"{key}={raw}"])
                unchecked.append(f"{key}={raw}")
            except ConfigError as e:
                assert str(e).startswith(key), (key, raw, str(e))
    assert not unchecked, unchecked


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("run:\n  name: x\nrevise:\n  max_tokens: [1, 2\n  retries: 1\n")
    res = cli(LOAD, "-c", str(p))
    assert res.exit_code == 2
    flat = " ".join(res.output.split())
    assert "broken.yaml" in flat and "invalid YAML at line" in flat and "column" in flat
    assert "Traceback" not in res.output
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line 5, column 10: .* "
                                          r"\(while parsing a flow sequence from line 4, column 15\)"):
        load_config(p)


def test_yaml_shape_errors(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must map section names"):
        load_config(p)
    p.write_text("revise: 3\n")
    with pytest.raises(ConfigError, match="^revise: expected a mapping"):
        load_config(p)
    p.write_text("judge:\nrevise: {max_tokens: 64}\n")  # an empty section is the defaults
    assert load_config(p).revise.max_tokens == 64
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"revise\.max_tokens: the value '\[1' is not valid YAML"):
        parse_override("revise.max_tokens=[1")


def test_bad_regex_refused_before_any_stage_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("revise", "-c", DEFAULT, "--set", f"run.root={tmp_path / 'runs'}",
              "--set", "curate.leakage.extra_patterns=[ok, 'as you (said']")
    assert res.exit_code == 2
    assert "curate.leakage.extra_patterns[1]: 'as you (said' is not a valid regex (missing )" in res.output
    assert not (tmp_path / "runs").exists()  # refused at load: no round was started


def test_run_name_cannot_leave_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    res = cli("revise", "--set", "run.name=../../x", "--set", "run.root=runs")
    assert res.exit_code == 2 and "run.name" in res.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "a" / "b" / "runs").exists()
    assert load_config(None, ["run.root=/some/where/../else", "run.name=round-robin.v2"]).run.name == "round-robin.v2"


def test_judge_backend_is_a_backend_config(tmp_path):
    p = tmp_path / "judge.yaml"
    p.write_text("judge:\n  kind: openai\n  backend: {base_url: 'http://judge:9/v1', served_model: big}\n")
    cfg = load_config(p)
    assert (cfg.judge.kind, cfg.judge.backend.kind, cfg.judge.backend.base_url) == ("openai", "openai", "http://judge:9/v1")
    assert cfg.judge.backend.served_model == "big" and cfg.judge.backend.api_key == "EMPTY"
    assert load_config(None).judge.backend.base_url == "http://127.0.0.1:8001/v1"
    p.write_text("judge:\n  kind: openai\n  base_url: http://judge:9/v1\n")
    with pytest.raises(ConfigError, match=r"judge\.base_url moved to judge\.backend\.base_url"):
        load_config(p)


def test_lora_slots_read_by_the_served_engine(tmp_path):
    from selfevolve.serve import VLLMServer

    cfg = load_config(DEFAULT, ["lora_slots.max_rank=32", "lora_slots.serve=6"])
    server = VLLMServer.from_config(cfg, log_path=tmp_path / "vllm.log")
    assert (server.max_lora_rank, server.max_loras) == (32, 6)
    assert cfg.lora_slots.engine == 2


def test_lr_schedulers_match_transformers():
    from transformers import SchedulerType

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType}


def test_grounding_config_validates():
    from selfevolve.grounding import GroundingConfig

    GroundingConfig().validate("grounding")
    for bad, key in ((dict(min_numbers=0), "grounding.min_numbers"), (dict(agree_min_share=1.5), "agree_min_share"),
                     (dict(min_similarity=2.0), "grounding.min_similarity"), (dict(approx_tolerance=math.nan), "approx")):
        with pytest.raises(ConfigError, match=key):
            GroundingConfig(**bad).validate("grounding")


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("revise:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match="revise.temprature"):
        load_config(p)


def test_override_syntax():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")
    with pytest.raises(ConfigError, match="dotted key"):
        parse_override("a..b=1")
