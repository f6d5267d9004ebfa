"""The GPU memory plan (selfevolve/memplan.py) with the numbers of real GPUs and real models, and the vLLM
parallelism / sleep-mode settings it checks. No GPU is needed: the GPUs are their totals as torch reports them."""
import pytest

from selfevolve.config import ConfigError, load_config
from selfevolve.memplan import (GIB, Gpu, MemoryPlanError, ModelShape, check_devices, check_round, engine_need,
                                model_shape, plan_round, serve_engine_args, train_need)

from conftest import ROOT

GPU_CONFIG = ROOT / "configs/qwen2.5-1.5b-instruct.yaml"

# torch.cuda.mem_get_info()'s total, as CUDA's out-of-memory messages print it ("GPU 0 has a total capacity of …")
GPUS = {
    "H200": 139.80, "H100-80GB": 79.11, "A100-80GB": 79.15, "A100-40GB": 39.39,
    "L4": 22.03, "RTX-4090": 23.65, "T4": 14.75,
}

# the fields of each model's real config.json that the plan reads
QWEN_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_hidden_layers=28,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
QWEN, LLAMA = ModelShape.from_hf_config(QWEN_1_5B, "Qwen2.5-1.5B"), ModelShape.from_hf_config(LLAMA_8B, "Llama-3.1-8B")


def gpu(name: str, used_gib: float = 0.5, count: int = 1) -> Gpu:
    """A GPU with ``used_gib`` already taken (the driver, a desktop, another process)."""
    total = int(GPUS[name] * GIB)
    return Gpu(total, total - int(used_gib * GIB), count, name)


def smollm():
    return model_shape(str(ROOT / ".cache/models/SmolLM2-135M-Instruct"))


def test_parameter_counts_match_the_published_ones():
    assert abs(QWEN.params - 1.54e9) < 0.01e9      # Qwen2.5-1.5B: 1.54B
    assert abs(LLAMA.params - 8.03e9) < 0.01e9     # Llama-3.1-8B: 8.03B
    shape = smollm()
    from safetensors import safe_open

    with safe_open(str(ROOT / ".cache/models/SmolLM2-135M-Instruct/model.safetensors"), "pt") as f:
        real = sum(f.get_slice(k).get_shape()[0] * (f.get_slice(k).get_shape() + [1])[1] for k in f.keys())
    assert abs(shape.params - real) / real < 0.001  # norms left out: 0.03%


def test_the_issue_two_engines_at_0_85_cannot_both_start():
    """Before: serve at vLLM's default 0.9, iterate's engine at 0.85 on the same H100: refused, and the message
    says what to change, in numbers."""
    cfg = load_config(GPU_CONFIG, ["backend.gpu_memory_utilization=0.85", "serve.gpu_memory_utilization=0.9",
                                   "backend.enable_sleep_mode=false"])
    plan = plan_round(cfg, gpu("H100-80GB"), QWEN, serving="starting")
    bad = [s.name for s in plan.steps if not s.ok]
    assert bad[0].startswith("iterate's engine starts") and bad[-1].startswith("training")
    with pytest.raises(MemoryPlanError) as e:
        plan.check()
    msg = str(e.value)
    assert "backend.gpu_memory_utilization <= 0.08" in msg and "serve.gpu_memory_utilization <= 0.13" in msg
    fixed = load_config(GPU_CONFIG, ["backend.gpu_memory_utilization=0.08", "serve.gpu_memory_utilization=0.9",
                                     "backend.enable_sleep_mode=false"])
    assert plan_round(fixed, gpu("H100-80GB"), QWEN, serving="starting").steps[2].ok
    # at iterate time, with the server already up, the measured free memory says the same
    running = Gpu(int(79.11 * GIB), int(79.11 * GIB * 0.1) - int(0.5 * GIB), 1, "H100-80GB")
    assert not plan_round(cfg, running, QWEN, serving="running").fits


@pytest.mark.parametrize("name", ["H200", "H100-80GB", "A100-80GB"])
def test_the_gpu_config_fits_beside_its_server_on_80gb_and_up(name):
    cfg = load_config(GPU_CONFIG)
    plan = plan_round(cfg, gpu(name), QWEN, serving="starting").check()
    train = plan.steps[-1]
    assert train.name.startswith("training") and train.need < train.available
    assert train.parts["logits"] > train.parts["weights"]  # a 151,936-token vocabulary: the logits dominate


@pytest.mark.parametrize("name", ["A100-40GB", "L4", "RTX-4090", "T4"])
def test_on_smaller_gpus_the_advice_makes_it_fit(name):
    """Refused with a batch size (or a length) to use; applying that advice gives a plan that fits."""
    cfg = load_config(GPU_CONFIG)
    with pytest.raises(MemoryPlanError) as e:
        plan_round(cfg, gpu(name), QWEN, serving="starting").check()
    advice = [line.strip("- ").strip() for line in str(e.value).splitlines() if line.startswith("  - ")]
    fix = next(a for a in advice if a.startswith("train.batch_size"))
    value = int(fix.split(" <= ")[1].split()[0])
    overrides = ([f"train.batch_size={value}"] if fix.startswith("train.batch_size <=") else
                 ["train.batch_size=1", f"train.max_length={value}"])
    if name == "T4":  # 14.75 GiB: the served engine's 0.4 leaves too little for an engine of its own too
        overrides += ["serve.gpu_memory_utilization=0.3", "backend.gpu_memory_utilization=0.3"]
    fixed = plan_round(load_config(GPU_CONFIG, overrides), gpu(name), QWEN, serving="starting")
    assert fixed.steps[-1].ok, fixed.table()


def test_sleeping_engine_leaves_its_residual_and_closing_frees_all():
    """Training beside an asleep engine has 1 GiB less than beside a closed one; where that GiB decides, the
    advice says to close it instead."""
    cfg = load_config(GPU_CONFIG)
    need = sum(train_need(QWEN, cfg.train).values())
    g = Gpu(int(GPUS["H100-80GB"] * GIB), need + int(0.5 * GIB), 1, "H100-80GB")  # 0.5 GiB to spare, closed
    asleep = plan_round(cfg, g, QWEN).steps[-1]
    cfg.backend.enable_sleep_mode = False
    closed = plan_round(cfg, g, QWEN).steps[-1]
    assert closed.available - asleep.available == 1 * GIB and closed.ok and not asleep.ok
    assert asleep.fixes[0].startswith("backend.enable_sleep_mode: false")


def test_llama_8b_needs_tensor_parallel_on_24gb_cards():
    cfg = load_config(GPU_CONFIG, ["model.max_model_len=8192", "serve.gpu_memory_utilization=0.5",
                                   "serve.plan_round=false"])
    one = plan_round(cfg, gpu("RTX-4090"), LLAMA, serving="starting")
    holds = one.steps[1]
    assert not holds.ok and any("tensor_parallel_size higher" in f for f in holds.fixes)
    assert holds.parts["weights"] > 14 * GIB  # 8.03B x 2 bytes
    cfg.serve.tensor_parallel_size = 2
    two = plan_round(cfg, gpu("RTX-4090", count=2), LLAMA, serving="starting")
    assert two.fits and two.steps[1].parts["weights"] == holds.parts["weights"] // 2


def test_smollm_needs_little_and_gradient_checkpointing_cuts_activations():
    cfg = load_config(ROOT / "configs/default.yaml", ["serve.gpu_memory_utilization=0.4",
                                                      "backend.gpu_memory_utilization=0.3"])
    assert plan_round(cfg, gpu("T4"), smollm(), serving="starting").fits
    t = cfg.train
    plain = train_need(QWEN, t, batch_size=4, max_length=4096)["activations"]
    t.gradient_checkpointing = True
    assert train_need(QWEN, t, batch_size=4, max_length=4096)["activations"] < plain / 5
    need = engine_need(QWEN, max_model_len=32768)
    assert need["kv_cache (one max_model_len sequence)"] == 32768 * 2 * 28 * 2 * 128 * 2  # K and V, bf16


def test_devices_and_sleep_mode_are_checked_before_an_engine_starts(monkeypatch):
    with pytest.raises(ConfigError, match="2 x 2 x 1 = 4 GPUs, but 2 are visible"):
        check_devices("serve", 2, 2, 1, False, gpu("H100-80GB", count=2))
    check_devices("serve", 2, 1, 1, False, gpu("H100-80GB", count=2))
    with pytest.raises(ConfigError, match="CUDA, ROCm and XPU only"):
        check_devices("backend", 1, 1, 1, True, None)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    with pytest.raises(ConfigError, match="expandable_segments"):
        check_devices("backend", 1, 1, 1, True, gpu("H200"))


def test_parallel_fields_are_validated_and_used_by_the_gpu_config():
    cfg = load_config(GPU_CONFIG)
    b, s = cfg.backend, cfg.serve
    assert b.gpu_memory_utilization + s.gpu_memory_utilization <= 0.75 and b.enable_sleep_mode
    assert (s.tensor_parallel_size, s.pipeline_parallel_size, s.data_parallel_size) == (1, 1, 1)
    for bad, match in (("backend.data_parallel_size=2", "one data-parallel rank"),
                       ("serve.pipeline_parallel_size=0", ">= 1"), ("serve.tensor_parallel_size=true", "expected int"),
                       ("serve.gpu_memory_utilization=0", r"\(0, 1\]")):
        with pytest.raises(ConfigError, match=match):
            load_config(GPU_CONFIG, [bad])
    load_config(GPU_CONFIG, ["serve.data_parallel_size=2"])  # the served engine may run replicas


def test_on_this_cpu_there_is_no_plan_and_sleep_mode_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU behaviour")
    cfg = load_config(ROOT / "configs/default.yaml")
    assert check_round(cfg) is None and serve_engine_args(cfg) == []
    with pytest.raises(ConfigError, match="enable_sleep_mode"):
        serve_engine_args(load_config(ROOT / "configs/default.yaml", ["serve.enable_sleep_mode=true"]))
    with pytest.raises(ConfigError, match="enable_sleep_mode"):
        check_round(load_config(ROOT / "configs/default.yaml", ["backend.enable_sleep_mode=true"]))


def test_served_engine_args_on_a_gpu(monkeypatch):
    import selfevolve.memplan as memplan

    monkeypatch.setattr(memplan, "cuda_gpu", lambda: gpu("H200", count=4))
    monkeypatch.setattr(memplan, "model_shape", lambda path: QWEN)
    cfg = load_config(GPU_CONFIG, ["serve.tensor_parallel_size=2", "serve.data_parallel_size=2",
                                   "serve.enable_sleep_mode=true"])
    lines = []
    args = serve_engine_args(cfg, log=lines.append)
    assert args == ["--gpu-memory-utilization", "0.4", "--tensor-parallel-size", "2", "--data-parallel-size", "2",
                    "--enable-sleep-mode"]
    assert lines and "memory plan on H200" in lines[0]
    cfg.serve.gpu_memory_utilization = 0.95
    with pytest.raises(MemoryPlanError, match="backend.gpu_memory_utilization <="):
        serve_engine_args(cfg)


class FakeEngine:
    def __init__(self):
        self.calls = []

    def sleep(self):
        self.calls.append("sleep")

    def wake_up(self):
        self.calls.append("wake_up")

    def close(self):
        self.calls.append("close")


@pytest.mark.parametrize("sleep_mode, expected", [(True, ["sleep", "wake_up"]), (False, ["close"])])
def test_train_stage_sleeps_or_closes_the_engine_on_a_gpu(monkeypatch, tmp_path, sleep_mode, expected):
    """On a GPU the train stage makes room: the engine sleeps and is woken for compare (sleep mode), or is
    closed; the training plan is checked in between with iterate's engine out of the way."""
    import selfevolve.memplan as memplan
    import selfevolve.train as train
    from selfevolve.layout import RunLayout
    from selfevolve.stage import ModelPool, StageContext

    cfg = load_config(ROOT / "configs/default.yaml", [f"run.root={tmp_path}"])
    cfg.backend.enable_sleep_mode = sleep_mode
    run = RunLayout.of(tmp_path, cfg.run.name)
    rnd = run.round(1)
    rnd.dataset("train_sft").mkdir(parents=True)
    engine, checked = FakeEngine(), []
    ctx = StageContext(cfg, run, rnd, ModelPool(cfg, engine), show_progress=False, log=lambda m: None)
    ctx.models._owned = True  # as if the pool had built it
    monkeypatch.setattr(train, "on_cuda", lambda: True)
    monkeypatch.setattr(memplan, "check_round", lambda c, **kw: checked.append((list(engine.calls), kw)))
    monkeypatch.setattr(train, "train_round", lambda *a, **kw: {"metrics": {}, "skipped": True})
    monkeypatch.setattr(ctx, "entry", lambda stage: {"counts": {"sft": 5}})
    train.run(ctx)
    assert engine.calls == expected
    assert checked == [(expected[:1], {"serving": "none", "engine": False, "log": checked[0][1]["log"]})]
