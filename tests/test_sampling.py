"""Generation with the real embedded model at toy sizes: seeds, batching, stops, greedy."""

import contextlib
import os
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from soar.data import seed_from
from soar.prompts import student_messages
from soar.sampling import encode_prompts, eos_ids, generate, gumbel_noise, sample_tokens

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


def test_a_sample_does_not_depend_on_its_batch(smol):
    """Sample (i, j) draws with its own seed's noise: batch sizes 1, 3 and 8, and a prompt alone or
    beside others (with the same key), give the same tokens (fp32 CPU: exactly)."""
    model, tok = smol
    prompts = [*PROMPTS, [{"role": "user", "content": "Hi"}]]
    keys = [(3, 0), (3, 1), (3, 2)]
    ids = lambda rows: [s.completion_ids for row in rows for s in row]  # noqa: E731
    runs = [ids(generate(model, tok, prompts, n=2, max_new_tokens=10, keys=keys, batch_size=b, top_p=0.9,
                         progress=False)) for b in (1, 3, 8)]
    assert runs[0] == runs[1] == runs[2]
    alone = generate(model, tok, prompts[1:2], n=2, max_new_tokens=10, keys=keys[1:2], top_p=0.9, progress=False)
    assert ids(alone) == runs[2][2:4]


def test_greedy_matches_hf_generate(smol):
    """Our loop (left padding, explicit positions, rows leaving the batch at EOS) equals
    transformers' greedy decode of each prompt alone, token for token, EOS included."""
    model, tok = smol
    prompts = [[{"role": "user", "content": "Hi"}],  # these two stop early (EOS after 10 and 8 tokens),
               [{"role": "user", "content": "What is 2+2? Answer with a number only."}],  # so the batch is compacted
               *PROMPTS]
    out = generate(model, tok, prompts, n=1, max_new_tokens=24, temperature=0.0, progress=False)
    for i, p in enumerate(prompts):
        ids = torch.tensor([encode_prompts(tok, [p])[0]])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
        ref = ref[0, ids.shape[1]:].tolist()
        assert list(out[i][0].completion_ids) == ref
        assert out[i][0].finished == (ref[-1] in eos_ids(model, tok))
    assert [row[0].finished for row in out][:2] == [True, True]


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


# --- the sampler alone: counter-based Gumbel noise ----------------------------------------------

LOGITS = torch.tensor([0.0, 2.0, -3.0, 1.0, -1.0, 0.5])  # not sorted: the nucleus maps back to token ids
SEEDS = torch.tensor([seed_from(7, k) for k in range(40_000)])


def test_gumbel_noise_is_a_pure_function_of_seed_position_and_token():
    seeds = SEEDS[:4]
    noise = gumbel_noise(seeds, 5, 1000)
    assert torch.equal(noise, gumbel_noise(seeds, 5, 1000))
    assert torch.equal(noise[2], gumbel_noise(seeds[2:3], 5, 1000)[0])  # a row does not depend on the others
    assert torch.equal(noise[:, :10], gumbel_noise(seeds, 5, 10))  # nor on the vocabulary size
    other_position = gumbel_noise(seeds, 6, 1000)
    for a in range(4):
        assert (noise[a] != other_position[a]).float().mean() > 0.99
        for b in range(a):
            assert (noise[a] != noise[b]).float().mean() > 0.99
    wide = gumbel_noise(torch.tensor([2**63 - 1, -(2**63)]), 2**40, 200_000)  # int64 wraps without error
    assert torch.isfinite(wide).all()
    assert abs(wide.mean() - 0.5772) < 0.01 and abs(wide.std() - torch.pi / 6**0.5) < 0.01  # standard Gumbel


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_gumbel_max_draws_from_the_softmax(temperature):
    picks = sample_tokens(LOGITS.expand(len(SEEDS), -1), temperature, 1.0, SEEDS, 3)
    counts = torch.bincount(picks, minlength=len(LOGITS))
    expected = torch.softmax(LOGITS.double() / temperature, -1) * len(SEEDS)
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_top_p_draws_from_the_renormalized_nucleus():
    probs = torch.softmax(LOGITS.double(), -1)  # sorted: 0.57 (token 1), 0.21 (3), 0.13 (5), 0.08 (0), ...
    nucleus = [1, 3, 5]  # the smallest set of most likely tokens with mass >= 0.8
    picks = sample_tokens(LOGITS.expand(len(SEEDS), -1), 1.0, 0.8, SEEDS, 0)
    assert set(picks.tolist()) == set(nucleus)
    counts = torch.bincount(picks, minlength=len(LOGITS))[nucleus]
    expected = probs[nucleus] / probs[nucleus].sum() * len(SEEDS)
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


# --- generation.backend: vllm, against a stand-in `vllm` module --------------------------------
# vLLM needs a GPU and its own environment, so it cannot run here: the `vllm` module below is a
# STAND-IN, not vLLM. It records what the backend asks of it (engine arguments, LoRA requests,
# seeds, in-place weight loads), reads the saved files vLLM would load, and follows vLLM's own code
# (the sources of its 0.31.0 wheel, requirements-gpu.txt's, and 0.33.0's: the same) where the
# backend depends on it:
# - weight names: a LoRA engine wraps its linear layers (parameters `<layer>.base_layer.weight`),
#   and the wrapper's load_weights forwards the rest of a name to the layer it wraps, which takes
#   `weight` only (vllm/lora/layers/base.py; linear.py QKVParallelLinear.load_weights; models/utils.py
#   AutoWeightsLoader for o_proj, down_proj);
# - the process's distributed state: an engine starts vLLM's one-process groups from the launcher
#   environment if no engine has, reuses them otherwise, and gc.freeze()s the heap
#   (EngineCore.__init__); it shuts down when the LLM is collected (InprocClient's
#   weakref.finalize), unfreezing and destroying the groups every engine shares
#   (EngineCore.shutdown -> cleanup_dist_env_and_memory); a step needs them (get_pp_group's assert).
# Whether real vLLM accepts these calls is for a GPU machine to confirm (benchmarks/gpu_check.py).

@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """Install the stand-in `vllm` modules; yields the list of engines (LLM objects, weakly) made."""
    import gc
    import sys
    import weakref
    from types import ModuleType, SimpleNamespace

    from safetensors.torch import load_file

    from soar import sampling

    engines = []
    dist = {}  # the process's parallel groups: the launcher environment they were formed from
    stack = {".q_proj": ".qkv_proj", ".k_proj": ".qkv_proj", ".v_proj": ".qkv_proj", ".gate_proj": ".gate_up_proj",
             ".up_proj": ".gate_up_proj"}

    def stacked(name):  # LlamaModel.hf_to_vllm_mapper: HF names onto vLLM's stacked layers
        part = next((p for p in stack if p in name), None)
        return name.replace(part, stack[part]) if part else name

    def groups():  # parallel_state.get_pp_group(): "pipeline model parallel group is not initialized"
        assert dist, "pipeline model parallel group is not initialized"

    class EngineModel:  # llm.llm_engine.model_executor.driver_worker.model_runner.model
        """vLLM's parameter names: stacked layers (q, k, v -> qkv_proj) and, in a LoRA engine, every
        linear layer wrapped (its weight under base_layer). load_weights takes HF names; under a
        wrapped layer the rest of the name goes to the wrapped layer, which knows its own `weight`
        only; a name it cannot place fails, as vLLM's does."""

        packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

        def __init__(self, hf_names, lora):
            wrap = lambda n: n.replace("_proj.weight", "_proj.base_layer.weight") if lora else n  # noqa: E731
            self.params, self.loads = {wrap(stacked(n)) for n in hf_names}, []
            self.wrapped = {n.removesuffix(".base_layer.weight") for n in self.params if n.endswith(".base_layer.weight")}

        def named_parameters(self):
            return [(n, None) for n in sorted(self.params)]

        def load_weights(self, weights):
            groups()
            weights = {name: t.detach().clone() for name, t in weights}
            for name in weights:
                target = stacked(name)
                layer = next((w for w in self.wrapped if target.startswith(w + ".")), None)
                if layer is not None:  # BaseLayerWithLoRA.load_weights: the rest goes to base_layer
                    rest = target[len(layer) + 1:]
                    target = f"{layer}.base_layer.{rest}" if "." not in rest else target + " (under base_layer)"
                if target not in self.params:
                    raise ValueError(f"There is no module or parameter named {target!r}")
            self.loads.append(weights)

    def shutdown():  # EngineCore.shutdown: gc.unfreeze(), then cleanup_dist_env_and_memory()
        gc.unfreeze()
        dist.clear()

    class LLM:
        def __init__(self, model, **kw):
            self.dir, self.kw, self.calls, self.prefix_resets = model, kw, [], 0
            self.env = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
            self.local_rank = os.environ["LOCAL_RANK"]  # external_launcher's device: cuda:LOCAL_RANK
            if not dist:  # init_distributed_environment: from the environment, once per process
                dist.update({k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")})
            self.weights = load_file(f"{model}/model.safetensors")  # what vLLM would load
            self.model = EngineModel(self.weights, kw.get("enable_lora", False))
            worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
            self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))
            weakref.finalize(self, shutdown)
            gc.freeze()  # EngineCore.__init__: freeze_gc_heap()
            engines.append(weakref.proxy(self))

        def reset_prefix_cache(self):
            self.prefix_resets += 1

        def generate(self, prompts, params, use_tqdm, lora_request):
            groups()
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
    monkeypatch.setattr(sampling, "_ENGINES", [])
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # set by the backend for external_launcher; undone after
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    yield engines
    gc.unfreeze()  # should the code under test have left the heap frozen


def _tiny(tok):
    """A small random Llama on the real tokenizer (the stand-in never runs it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))


def test_vllm_backend_serves_the_adapters_and_loads_a_promotion_in_place(fake_vllm):
    from soar.config import GenerationConfig
    from soar.models import load_model
    from soar.policy import Policy

    engines = fake_vllm
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    policy = Policy(model, tok, adapter="lora", lora_r=4, lora_alpha=8)
    q = "model.layers.0.self_attn.q_proj.weight"
    q_base = policy.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)  # a trained adapter
    out = generate(policy.model, tok, PROMPTS, n=2, seed=3, backend="vllm")
    assert [[s.completion_ids for s in row] for row in out] == [[(7, 8)] * 2] * 2
    engine = engines[0]
    assert engine.kw["enable_lora"] and engine.kw["max_lora_rank"] >= 4
    assert engine.kw["distributed_executor_backend"] == "external_launcher"  # in process: load_weights reaches it
    assert engine.kw["max_model_len"] == GenerationConfig().max_model_len
    assert torch.equal(engine.weights[q], q_base)  # the base, no LoRA keys
    assert not any("lora" in k for k in engine.weights)
    call = engine.calls[0]
    assert call.prompts == encode_prompts(tok, PROMPTS)
    assert [p.seed for p in call.params] == [seed_from(3, i) % 2**32 for i in range(2)]
    key = next(k for k in call.adapters[0] if "q_proj.lora_B" in k)
    state = policy.state()
    assert torch.equal(call.adapters[0][key], state[next(k for k in state if "layers.0.self_attn.q_proj.lora_B" in k)])

    with policy.reference() as base:  # the baseline student: a zero adapter, the students' LoRA path
        generate(base, tok, PROMPTS, n=1, backend="vllm")
        generate(base, tok, PROMPTS, n=1, backend="vllm")
    zero = engine.calls[1].requests
    assert len({r.id for r in zero}) == 1 and engine.calls[2].requests == zero  # saved once, one id
    assert set(engine.calls[1].adapters[0]) == set(call.adapters[0])  # the policy's adapter, all zeros
    assert not any(t.any() for t in engine.calls[1].adapters[0].values())

    with policy.students([1, 2]) as names:  # batched students: one adapter per prompt
        generate(policy.model, tok, PROMPTS, n=1, backend="vllm", adapters=names)
        requests = engine.calls[3].requests
        assert len({r.id for r in requests}) == 2 and all(names[k] in r.lora_path for k, r in enumerate(requests))
        assert zero[0].id not in {r.id for r in requests}
        generate(policy.model, tok, PROMPTS, n=1, backend="vllm", adapters=[names[0], "__base__"])
        assert engine.calls[4].requests[1] == zero[0]

    policy.merge(state)  # a promotion changes the base: loaded into the same engine, in place
    generate(policy.model, tok, PROMPTS, n=1, backend="vllm")
    assert len(engines) == 1 and len(engine.model.loads) == 1 and engine.prefix_resets == 1
    loaded, base_model = engine.model.loads[0], policy.model.get_base_model()
    # the base's weights under HF names (TRL's rule), which a LoRA engine's wrapped layers take
    assert sorted(loaded) == sorted(n.replace(".base_layer", "") for n, _ in base_model.named_parameters()
                                    if "lora_" not in n)
    merged = base_model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(loaded[q], merged)
    assert not torch.equal(merged, q_base)
    generate(policy.model, tok, PROMPTS, n=1, backend="vllm")
    assert len(engine.model.loads) == 1  # an unchanged base is not loaded again


def test_vllm_engine_setup_restores_the_environment(fake_vllm, smol, monkeypatch):
    """The launcher environment is set while an engine starts and restored after: processes started
    later (a local Ray's workers) must not inherit the engine's MASTER_PORT. What was set before
    (torchrun's) is used and kept."""
    tok = smol[1]
    first = _tiny(tok)
    generate(first, tok, PROMPTS, n=1, max_new_tokens=4, backend="vllm")
    env = fake_vllm[0].env
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and env["LOCAL_RANK"] == "0" and int(env["MASTER_PORT"]) > 0
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} & set(os.environ)
    monkeypatch.setenv("MASTER_PORT", "29555")
    monkeypatch.setenv("RANK", "0")
    generate(_tiny(tok), tok, PROMPTS, n=1, max_new_tokens=4, backend="vllm")  # a second engine: first is alive
    assert fake_vllm[1].env["MASTER_PORT"] == "29555"
    assert os.environ["MASTER_PORT"] == "29555" and os.environ["RANK"] == "0" and "WORLD_SIZE" not in os.environ


def test_vllm_engines_are_sized_by_generation_max_model_len(fake_vllm, smol, monkeypatch):
    from soar import sampling
    from soar.config import GenerationConfig

    tok = smol[1]
    monkeypatch.setattr(sampling, "VLLM_MAX_MODEL_LEN", sampling.VLLM_MAX_MODEL_LEN)  # configure() undone after
    longest = max(map(len, encode_prompts(tok, PROMPTS)))
    sampling.configure(GenerationConfig(max_model_len=longest + 16))
    model = _tiny(tok)
    generate(model, tok, PROMPTS, n=1, max_new_tokens=16, backend="vllm")
    assert fake_vllm[0].kw["max_model_len"] == longest + 16
    with pytest.raises(ValueError, match="generation.max_model_len"):
        generate(model, tok, PROMPTS, n=1, max_new_tokens=17, backend="vllm")


def test_vllm_engines_go_on_their_models_gpu(fake_vllm, smol, monkeypatch):
    """Each engine is built with LOCAL_RANK = its model's GPU (the memory plan puts the teacher and
    the student apart), which is restored after. The stand-in cannot see a GPU: where the model is
    is set here, as _gpu_of would read it from a model on cuda:3."""
    from soar import sampling

    tok = smol[1]
    assert sampling._gpu_of(_tiny(tok)) is None  # on the CPU: no device to enter
    monkeypatch.setenv("LOCAL_RANK", "0")  # as torchrun would set it
    monkeypatch.setattr(sampling, "_gpu_of", lambda model: 3)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext(index))
    generate(_tiny(tok), tok, PROMPTS, n=1, max_new_tokens=4, backend="vllm")
    assert fake_vllm[0].local_rank == "3" and os.environ["LOCAL_RANK"] == "0"


def test_vllm_engines_outlive_their_models_and_serve_the_next(fake_vllm, smol):
    """No engine is ever shut down: vLLM's shutdown destroys the distributed state every engine of
    the process shares (the stand-in's as vLLM's), so closing one under another breaks it. When
    the last model of a role is collected its engine is free, and the next model of the same
    architecture takes it over with its own weights."""
    import gc

    from soar import sampling
    from soar.policy import Policy

    engines, tok = fake_vllm, smol[1]
    full = Policy(_tiny(tok), tok, adapter="full")  # made before an engine froze the heap
    generate(full.model, tok, PROMPTS, n=1, backend="vllm")
    with full.reference() as base:  # the same engine serves both models of the policy
        generate(base, tok, PROMPTS, n=1, backend="vllm")
    plain = _tiny(tok)
    generate(plain, tok, PROMPTS, n=1, backend="vllm")
    lora = Policy(_tiny(tok), tok, adapter="lora", lora_r=2, lora_alpha=4)
    generate(lora.model, tok, PROMPTS, n=1, backend="vllm")
    assert len(engines) == 3
    first = sampling._ENGINES[0]
    del full, base
    gc.collect()
    assert first.key is None and not first.users  # freed: the policy was collected, the engine kept
    generate(plain, tok, PROMPTS, n=1, backend="vllm")  # the other engines still work
    generate(lora.model, tok, PROMPTS, n=1, backend="vllm")

    other = _tiny(tok)  # a new model of the same architecture: the free engine, its weights loaded
    with torch.no_grad():
        other.model.layers[0].self_attn.q_proj.weight.add_(1.0)
    generate(other, tok, PROMPTS, n=1, backend="vllm")
    assert len(engines) == 3 and first.key == id(other) and first.dir.exists()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(engines[0].model.loads[-1][q], other.model.layers[0].self_attn.q_proj.weight)
    del plain, lora
    gc.collect()
    generate(other, tok, PROMPTS, n=1, backend="vllm")
    assert len(sampling._ENGINES) == 3 and all(e.dir.exists() for e in sampling._ENGINES)


def test_vllm_backend_syncs_full_fine_tuning_weights_in_place(fake_vllm, smol):
    """adapter: full (paper) and fail@k's plain model: one engine per policy, built once; after
    every change of the weights (an optimizer step, a reset, a promotion) the next generate loads
    them into the engine in place (TRL colocate's load_weights) and resets its prefix cache."""
    from soar.policy import Policy, make_optimizer, update

    engines, tok = fake_vllm, smol[1]
    plain = _tiny(tok)  # fail@k: an untrained model, no adapter
    generate(plain, tok, PROMPTS, n=2, backend="vllm")
    assert engines[0].kw["distributed_executor_backend"] == "external_launcher"
    assert "enable_lora" not in engines[0].kw and not engines[0].model.loads
    with pytest.raises(ValueError, match="LoRA"):
        generate(plain, tok, PROMPTS, n=1, backend="vllm", adapters=["a", "b"])

    policy = Policy(_tiny(tok), tok, adapter="full")
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
