"""The vLLM plugin that replaces the CPU LoRA ops: same results as vLLM's own ops for LoRA rows, zeros (not the
last adapter) for rows without one, installed only over the functions it knows; and on the real engine, a
base-model request batched beside two adapters that fill every slot answers as the base model."""
import inspect

import pytest
import torch

from selfevolve import vllm_cpu_lora as plug

torch.manual_seed(0)
SLOTS, RANK, HIDDEN, OUT = 3, 4, 12, 10


def _weights(out, inp):
    return torch.randn(SLOTS, 1, out, inp)  # vLLM stacks (slots, 1, out, in)


def test_lora_delta_selects_each_rows_slot_and_zeroes_rows_without_one():
    x, w = torch.randn(5, HIDDEN), _weights(RANK, HIDDEN)
    idx = torch.tensor([0, 2, -1, 1, 2])
    got = plug.lora_delta(x, w, idx, torch.float32)
    for i, k in enumerate(idx.tolist()):
        want = torch.zeros(RANK) if k < 0 else x[i] @ w[k, 0].T
        torch.testing.assert_close(got[i], want)


def test_ops_match_vllm_torch_ops_on_lora_rows():
    ops = pytest.importorskip("vllm.lora.ops.torch_ops")
    idx = torch.tensor([1, 0, 2, 2, 0, 1])  # no -1: where vLLM's ops are right
    x, a, b = torch.randn(6, HIDDEN), _weights(RANK, HIDDEN), _weights(OUT, RANK)
    ours, theirs = torch.zeros(6, RANK), torch.zeros(6, RANK)
    plug.bgmv_shrink(x, a, ours, idx, 0.5)
    ops.bgmv_shrink(x, a, theirs, idx, 0.5)
    torch.testing.assert_close(ours, theirs)
    base = torch.randn(6, OUT + 4)
    for add in (True, False):
        ours, theirs = base.clone(), base.clone()
        plug.bgmv_expand(x[:, :RANK], b, ours, idx, add)
        ops.bgmv_expand(x[:, :RANK], b, theirs, idx, add)
        torch.testing.assert_close(ours, theirs)
        ours, theirs = base.clone(), base.clone()
        plug.bgmv_expand_slice(x[:, :RANK], b, ours, idx, 2, OUT, add)
        ops.bgmv_expand_slice(x[:, :RANK], b, theirs, idx, 2, OUT, add)
        torch.testing.assert_close(ours, theirs)
    # prefill: one index per sequence, expanded over its tokens
    seq_idx, seq_len = torch.tensor([2, 0]), torch.tensor([4, 2])
    ours, theirs = torch.zeros(6, RANK), torch.zeros(6, RANK)
    plug.sgmv_shrink(x, a, ours, None, seq_len, seq_idx, 2, 4, 6, 1.0)
    ops.sgmv_shrink(x, a, theirs, None, seq_len, seq_idx, 2, 4, 6, 1.0)
    torch.testing.assert_close(ours, theirs)


def test_rows_without_a_lora_get_nothing_where_vllm_adds_the_last_slot():
    ops = pytest.importorskip("vllm.lora.ops.torch_ops")
    x, b = torch.randn(2, RANK), _weights(OUT, RANK)
    idx = torch.tensor([-1, 0])
    ours, theirs = torch.zeros(2, OUT), torch.zeros(2, OUT)
    plug.bgmv_expand(x, b, ours, idx, True)
    ops.bgmv_expand(x, b, theirs, idx, True)
    assert torch.count_nonzero(ours[0]) == 0
    torch.testing.assert_close(theirs[0], x[0] @ b[-1, 0].T)  # the upstream bug this plugin exists for
    torch.testing.assert_close(ours[1], theirs[1])


def test_plugin_signatures_are_the_originals():
    ops = pytest.importorskip("vllm.lora.ops.torch_ops")
    for name, params in plug._EXPECTED.items():
        assert list(inspect.signature(getattr(ops, name)).parameters) == params, name
        assert list(inspect.signature(getattr(plug, name)).parameters) == params, name


def test_register_installs_once_and_leaves_unknown_functions_alone(monkeypatch):
    pytest.importorskip("vllm")
    from vllm.lora.ops import torch_ops
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the plugin only acts on vLLM's CPU platform")

    for name in plug._EXPECTED:
        monkeypatch.setattr(punica_cpu, name, getattr(torch_ops, name))
    assert plug.register() and plug.register()  # vLLM may call it more than once per process
    assert all(getattr(punica_cpu, n) is getattr(plug, n) for n in plug._EXPECTED)

    for name in plug._EXPECTED:
        monkeypatch.setattr(punica_cpu, name, getattr(torch_ops, name))
    monkeypatch.setattr(punica_cpu, "bgmv_expand", lambda inputs, weights, out, indices: None)  # a changed API
    assert plug.register() is False
    assert punica_cpu.bgmv_shrink is torch_ops.bgmv_shrink  # nothing half-installed


def _loud_adapter(model_path, path, seed):
    """A LoRA whose B matrices are large and random: its answers are gibberish, unmistakable for the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(str(path))
    return str(path)


@pytest.mark.integration
def test_base_rows_in_a_full_slot_mixed_batch_answer_as_the_base_model(vllm_backend, default_cfg, tmp_path):
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    assert default_cfg.lora_slots.engine == 2  # two adapters below fill every slot
    loud = [LoRARequest(f"loud-{i}", 9000 + i, _loud_adapter(default_cfg.model.path, tmp_path / f"l{i}", i))
            for i in range(2)]
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    alone = vllm_backend.llm.chat([prompt], greedy, use_tqdm=False)[0].outputs[0].text
    mixed = vllm_backend.llm.chat([prompt] * 3, greedy, lora_request=[*loud, None], use_tqdm=False)
    l0, l1, base = (o.outputs[0].text for o in mixed)
    assert "Paris" in alone and l0 != alone and l1 != alone
    assert base == alone, (base, l0, l1)


@pytest.mark.integration
def test_prompt_logprobs_are_scored_in_one_batch_and_match_one_at_a_time(vllm_backend):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    assert vllm_backend.batched_logprobs  # the plugin is installed and allowed: the engine takes whole batches
    texts = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius.", "Green apples, long walks."]
    prompts = [TokensPrompt(prompt_token_ids=vllm_backend.tokenizer.encode(t)) for t in texts * 2]
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    batched = vllm_backend.llm.generate(prompts, params, use_tqdm=False)  # vLLM's own CPU ops die here
    for p, b in zip(prompts, batched):
        (one,) = vllm_backend.llm.generate([p], params, use_tqdm=False)
        ids = one.prompt_token_ids
        for j in range(1, len(ids)):  # bf16 on CPU: batch shapes move log-probs by a few hundredths
            assert abs(one.prompt_logprobs[j][ids[j]].logprob - b.prompt_logprobs[j][ids[j]].logprob) < 0.3


def test_lora_delta_broadcasts_one_shared_index_and_refuses_mixed_ones():
    x, w = torch.randn(4, HIDDEN), _weights(RANK, HIDDEN)
    torch.testing.assert_close(plug.lora_delta(x, w, torch.tensor([1, 1]), torch.float32), x @ w[1, 0].T)
    assert torch.count_nonzero(plug.lora_delta(x, w, torch.tensor([-1, -1, -1]), torch.float32)) == 0
    with pytest.raises(ValueError, match="different adapters"):
        plug.lora_delta(x, w, torch.tensor([0, 1]), torch.float32)
