"""Generation with the real embedded model at toy sizes: seeds, batching, stops, greedy."""

from pathlib import Path

import pytest
import torch

from soar.prompts import student_messages
from soar.sampling import encode_prompts, generate

PROMPTS = [student_messages("What is 2 + 3?"), student_messages("What is 7 times 6? Explain briefly.")]


def test_shapes_and_order(smol):
    model, tok = smol
    out = generate(model, tok, PROMPTS, n=3, max_new_tokens=8, seed=0, progress=False)
    assert [len(row) for row in out] == [3, 3]
    for i, row in enumerate(out):
        assert [s.prompt_index for s in row] == [i] * 3 and [s.sample_index for s in row] == [0, 1, 2]
        assert all(0 < len(s.completion_ids) <= 8 for s in row)
        assert all(s.prompt_ids == tuple(encode_prompts(tok, [PROMPTS[i]])[0]) for s in row)


def test_same_seed_same_samples_and_other_seed_differs(smol):
    model, tok = smol
    a = generate(model, tok, PROMPTS, n=2, max_new_tokens=12, seed=1, progress=False)
    b = generate(model, tok, PROMPTS, n=2, max_new_tokens=12, seed=1, progress=False)
    c = generate(model, tok, PROMPTS, n=2, max_new_tokens=12, seed=2, progress=False)
    ids = lambda o: [s.completion_ids for row in o for s in row]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_per_sample_seeds_do_not_depend_on_batching(smol):
    """Sample (i, j) draws from its own generator: batch size 1 and batch size 4 agree."""
    model, tok = smol
    big = generate(model, tok, PROMPTS, n=2, max_new_tokens=10, seed=3, batch_size=4, progress=False)
    one = generate(model, tok, PROMPTS, n=2, max_new_tokens=10, seed=3, batch_size=1, progress=False)
    assert [s.completion_ids for r in big for s in r] == [s.completion_ids for r in one for s in r]


def test_greedy_matches_hf_generate(smol):
    """Our KV-cached loop (left padding, explicit positions) equals transformers' greedy decode."""
    model, tok = smol
    out = generate(model, tok, PROMPTS, n=1, max_new_tokens=12, temperature=0.0, progress=False)
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([encode_prompts(tok, [p])[0]])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
        assert list(out[i][0].completion_ids) == ref[0, ids.shape[1]:].tolist()


def test_stop_string_cuts_the_text(smol):
    model, tok = smol
    out = generate(model, tok, [student_messages("Count: 1, 2, 3, 4, 5, 6, 7, 8")], n=2, max_new_tokens=40,
                   temperature=0.0, stop=("4",), progress=False)
    for s in out[0]:
        if "4" in s.text:
            assert s.text.endswith("4") and s.finished


def test_top_p_small_is_greedy(smol):
    model, tok = smol
    greedy = generate(model, tok, PROMPTS[:1], n=1, max_new_tokens=8, temperature=0.0, progress=False)
    nucleus = generate(model, tok, PROMPTS[:1], n=2, max_new_tokens=8, temperature=1.0, top_p=1e-6, progress=False)
    assert all(s.completion_ids == greedy[0][0].completion_ids for s in nucleus[0])


# --- generation.backend: vllm, against a stand-in `vllm` module --------------------------------
# vLLM needs a GPU and its own torch, so it cannot run here: the `vllm` module below is a
# STAND-IN, not vLLM. It records what the backend asks of it (engine arguments, LoRA requests,
# seeds, in-place weight loads) and reads the saved files vLLM would load; whether real vLLM
# accepts these calls is for a GPU machine to confirm (README, "Paper-path dry run").

@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """Install the stand-in `vllm` modules; yields the list of engines (LLM objects) made."""
    import sys
    from types import ModuleType, SimpleNamespace

    from safetensors.torch import load_file

    from soar import sampling

    engines = []

    class EngineModel:  # llm.llm_engine.model_executor.driver_worker.model_runner.model
        def __init__(self):
            self.loads = []

        def load_weights(self, weights):
            self.loads.append({name: t.detach().clone() for name, t in weights})

    class LLM:
        def __init__(self, model, **kw):
            self.dir, self.kw, self.calls, self.prefix_resets = model, kw, [], 0
            self.weights = load_file(f"{model}/model.safetensors")  # what vLLM would load
            self.model = EngineModel()
            worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
            self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))
            engines.append(self)

        def reset_prefix_cache(self):
            self.prefix_resets += 1

        def generate(self, prompts, params, use_tqdm, lora_request):
            adapters = [None if r is None else load_file(f"{r.lora_path}/adapter_model.safetensors")
                        for r in lora_request or []]
            self.calls.append(SimpleNamespace(prompts=prompts, params=params, requests=lora_request, adapters=adapters))
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[7, 8], text="x", finish_reason="stop")] * p.n)
                    for p in params]

    vllm = ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, lambda **kw: SimpleNamespace(**kw)
    inputs, lora, request = ModuleType("vllm.inputs"), ModuleType("vllm.lora"), ModuleType("vllm.lora.request")
    inputs.TokensPrompt = lambda prompt_token_ids: prompt_token_ids
    request.LoRARequest = lambda name, lora_id, path: SimpleNamespace(name=name, id=lora_id, lora_path=path)
    for name, module in (("vllm", vllm), ("vllm.inputs", inputs), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sampling, "_ENGINES", {})
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # set by the backend for external_launcher; undone after
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    yield engines
    for e in sampling._ENGINES.values():
        e.close()


def test_vllm_backend_serves_the_adapters_and_rebuilds_after_a_promotion(fake_vllm):
    from soar.data import seed_from
    from soar.models import load_model
    from soar.policy import Policy

    engines = fake_vllm
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    policy = Policy(model, tok, adapter="lora", lora_r=4, lora_alpha=8)
    q_base = policy.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)  # a trained adapter
    out = generate(policy.model, tok, PROMPTS, n=2, seed=3, backend="vllm")
    assert [[s.completion_ids for s in row] for row in out] == [[(7, 8)] * 2] * 2
    engine = engines[0]
    assert engine.kw["enable_lora"] and engine.kw["max_lora_rank"] >= 4
    assert torch.equal(engine.weights["model.layers.0.self_attn.q_proj.weight"], q_base)  # the base, no LoRA keys
    assert not any("lora" in k for k in engine.weights)
    call = engine.calls[0]
    assert call.prompts == encode_prompts(tok, PROMPTS)
    assert [p.seed for p in call.params] == [seed_from(3, i) % 2**32 for i in range(2)]
    key = next(k for k in call.adapters[0] if "q_proj.lora_B" in k)
    state = policy.state()
    assert torch.equal(call.adapters[0][key], state[next(k for k in state if "layers.0.self_attn.q_proj.lora_B" in k)])

    with policy.reference() as base:  # the baseline student: no adapter
        generate(base, tok, PROMPTS, n=1, backend="vllm")
    assert engine.calls[1].requests is None

    with policy.students([1, 2]) as names:  # batched students: one adapter per prompt
        generate(policy.model, tok, PROMPTS, n=1, backend="vllm", adapters=names)
        requests = engine.calls[2].requests
        assert len({r.id for r in requests}) == 2 and all(names[k] in r.lora_path for k, r in enumerate(requests))

    policy.merge(state)  # a promotion changes the base: a new engine holds the merged weights
    generate(policy.model, tok, PROMPTS, n=1, backend="vllm")
    assert len(engines) == 2 and not Path(engine.dir).exists()
    assert torch.equal(engines[1].weights["model.layers.0.self_attn.q_proj.weight"], q_base)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(engines[1].weights[q], engine.weights[q])


def test_vllm_backend_syncs_full_fine_tuning_weights_in_place(fake_vllm, smol):
    """adapter: full (paper) and fail@k's plain model: one engine per policy, built once; after
    every change of the weights (an optimizer step, a reset, a promotion) the next generate loads
    them into the engine in place (TRL colocate's load_weights) and resets its prefix cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from soar.policy import Policy, make_optimizer, update

    engines, tok = fake_vllm, smol[1]

    def tiny():  # a small random Llama on the real tokenizer (the stand-in never runs it)
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))

    plain = tiny()  # fail@k: an untrained model, no adapter
    generate(plain, tok, PROMPTS, n=2, backend="vllm")
    assert engines[0].kw["distributed_executor_backend"] == "external_launcher"
    assert "enable_lora" not in engines[0].kw and not engines[0].model.loads
    with pytest.raises(ValueError, match="LoRA"):
        generate(plain, tok, PROMPTS, n=1, backend="vllm", adapters=["a", "b"])

    policy = Policy(tiny(), tok, adapter="full")
    generate(policy.model, tok, PROMPTS, n=1, backend="vllm")
    engine = engines[1]
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(engine.weights[q], policy.model.model.layers[0].self_attn.q_proj.weight)
    optimizer, scheduler = make_optimizer(policy, lr=1e-2, warmup_steps=0, total_steps=2)
    samples = [s for row in generate(policy.model, tok, PROMPTS, n=2, max_new_tokens=4, backend="hf",
                                     progress=False) for s in row]
    update(policy, optimizer, scheduler, samples, torch.tensor([1.0, -1.0, 0.5, -0.5]), kl_coef=0.001,
           max_grad_norm=1.0)
    assert not engine.model.loads  # nothing is loaded until the engine is asked to sample
    generate(policy.model, tok, PROMPTS, n=1, backend="vllm")
    assert len(engines) == 2 and len(engine.model.loads) == 1 and engine.prefix_resets == 1
    loaded = engine.model.loads[0]
    assert list(loaded) == [n for n, _ in policy.model.named_parameters()]  # HF names: vLLM's loader maps them
    assert torch.equal(loaded[q], policy.model.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(loaded[q], engine.weights[q])  # the update reached the engine
    generate(policy.model, tok, PROMPTS, n=1, backend="vllm")
    assert len(engine.model.loads) == 1  # unchanged weights are not loaded again

    with policy.reference() as base:  # the same engine, the reference's weights
        generate(base, tok, PROMPTS, n=1, backend="vllm")
    assert len(engines) == 2 and torch.equal(engine.model.loads[-1][q], engine.weights[q])
    trained = policy.state()
    policy.merge(trained)  # promotion: the base changes, the policy resets to it
    generate(policy.model, tok, PROMPTS, n=1, backend="vllm")
    assert torch.equal(engine.model.loads[-1][q], trained[q]) and len(engines) == 2
