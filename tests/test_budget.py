"""The work model of soar.budget, counted by hand on small configs."""

import pytest

from soar import budget, config, models
from soar.retrain import kept_checkpoints

P, T = 100.0, 50.0  # mean student and teacher prompt tokens


def _cfg(**overrides):
    return config.load("params.yaml", overrides)


def test_retrain_counts_every_run_and_the_group_factor():
    cfg = _cfg(retrain={"methods": ["hard_only", "hard_only-g128"], "seeds": [0, 1], "steps": 3,
                        "questions_per_step": 2, "samples_per_question": 4, "max_new_tokens": 10},
               fail_at_k={"pools": ["gsm8k_test"]})
    seqs = 3 * 2 * 4 * (1 + 4) * 2  # steps x questions x samples x (group 1 + group 4) x seeds
    w = budget.retrain_work(cfg, prompt=P)
    assert (w.sampled, w.trained) == (seqs * 10, seqs * (P + 10))


def test_evaluate_counts_models_seeds_and_the_window_checkpoints():
    cfg = _cfg(retrain={"methods": ["hard_only", "oracle"], "seeds": [0, 1, 2], "steps": 8, "eval_every": 2,
                        "window": 4, "read_at": None},
               evaluate={"n_samples": 4, "max_new_tokens": 10})
    assert kept_checkpoints(cfg, "math_test") == 2  # saved 2, 4, 6, 8; the window [6, 10) holds 6, 8
    models = 2 + 2 * 2  # base and PS once, each fresh student at 2 checkpoints
    w = budget.evaluate_work(cfg, {"a": 5, "b": 3})  # extra benchmarks: tested with the first pool's students
    assert (w.sampled, w.trained) == (8 * 4 * 10 * models * 3, 0)
    olympiad = _cfg(retrain={"methods": ["hard_only", "oracle"], "seeds": [0, 1, 2], "steps": 8, "eval_every": 2,
                             "window": 4, "read_at": None},
                    evaluate={"n_samples": 4, "max_new_tokens": 10}, fail_at_k={"pools": ["math_test", "olympiadbench"]})
    w = budget.evaluate_work(olympiad, {"math_test": 5, "olympiadbench": 3})  # OlympiadBench students: read at one step
    assert w.sampled == (5 * models + 3 * (2 + 2 * 1)) * 4 * 10 * 3


@pytest.mark.parametrize("reward", ["grounded", "intrinsic"])
def test_soar_counts_the_teacher_the_baseline_and_the_inner_loops(reward):
    cfg = _cfg(soar={"reward": reward, "outer_steps": 2, "n": 3, "group_size": 2, "groups_per_step": 1, "r": 2,
                     "q_r": 5, "intrinsic_samples": 4},
               student={"steps": 2, "questions_per_step": 2, "samples_per_question": 2, "max_new_tokens": 10},
               teacher={"max_new_tokens": 20})
    teacher = (2 * 3 * 20, 2 * 3 * (T + 20))  # 2 datasets x 3 questions, sampled then trained on
    baseline = 5 * 10  # greedy Q_R answers of the baseline
    # 4 students: 2 steps x 4 answers, trained on, then 5 Q_R answers each (intrinsic too: its
    # promotions follow the grounded gain, so it runs the inner loops)
    sampled, trained = teacher[0] + baseline + 4 * (8 * 10 + 50), teacher[1] + 4 * 8 * (P + 10)
    if reward == "intrinsic":  # and its reward: 4 answers per question of each dataset
        sampled += 2 * 3 * 4 * 10
    w = budget.soar_work(cfg, prompt=P, teacher_prompt=T)
    assert (w.sampled, w.trained) == (2 * sampled, 2 * trained)


def test_roofline_rates_and_hours():
    shape, hw = budget.Shape(params=1e9, kv_bytes_per_token=1000), budget.Hardware("toy", flops=1e12, bandwidth=1e11)
    sampled, trained = budget.roofline_rates(shape, hw, batch=10, context=100, full=True)
    assert sampled == pytest.approx(10 * 1e11 / (2e9 + 10 * 100 * 1000))  # weights once + every row's KV per step
    assert trained == pytest.approx(1e12 / 8e9)  # 2N forward + 4N backward + 2N reference forward
    assert budget.roofline_rates(shape, hw, batch=10, context=100, full=False, kl=False)[1] == pytest.approx(1e12 / 4e9)
    assert budget.hours(budget.Work(3600, 7200), sampled_per_s=1, trained_per_s=2) == pytest.approx(2.0)


# --- the outer step's parts and its wall-clock on a plan ---------------------------------------

def test_outer_step_parts_add_up_and_the_students_split_into_shares():
    cfg = _cfg(soar={"outer_steps": 3, "n": 3, "group_size": 4, "groups_per_step": 2, "r": 2, "q_r": 5},
               student={"steps": 2, "questions_per_step": 2, "samples_per_question": 2, "max_new_tokens": 10},
               teacher={"max_new_tokens": 20})
    parts = budget.soar_step_work(cfg, prompt=P, teacher_prompt=T)
    total = sum(parts.values(), budget.Work()) * 3
    assert total == budget.soar_work(cfg, prompt=P, teacher_prompt=T)
    one = budget.hours(parts["inner_loops"], sampled_per_s=1, trained_per_s=1) / 16  # one student's inner loop
    rest = budget.hours(parts["teacher"] + parts["baseline"], sampled_per_s=1, trained_per_s=1)
    for slots, share, busy in ((1, 16, 1), (6, 3, 6), (8, 2, 8), (20, 1, 16)):  # 8 x 2 students, ceil(16 / slots) each
        plan = budget.MemoryPlan((), {}, slots)
        h = budget.outer_step_hours(cfg, plan, parts, student=(1, 1), teacher=(1, 1))
        assert h["wall_hours"] == pytest.approx(rest + share * one) and h["busy_slots"] == busy
        assert h["busy_gpu_hours"] == pytest.approx(rest + 16 * one)


# --- the memory plan ---------------------------------------------------------------------------

GiB = budget.GiB
LLAMA_3B = 3_212_749_824  # Llama-3.2-3B's parameters (tied embeddings)


def _paper(**overrides):
    return config.load("params.yaml", {"profile": "paper", **overrides})


def test_the_shipped_llama_3b_config_gives_its_shape_and_parameter_count():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = budget.architecture("meta-llama/Llama-3.2-3B-Instruct")
    assert (arch.hidden, arch.layers, arch.heads, arch.kv_heads, arch.intermediate, arch.vocab, arch.tied) == \
        (3072, 28, 24, 8, 8192, 128256, True)
    with torch.device("meta"):  # no memory: only the shapes
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(budget.KNOWN["meta-llama/Llama-3.2-3B-Instruct"]))
    assert arch.params == sum(p.numel() for p in model.parameters()) == LLAMA_3B
    assert arch.kv_bytes_per_token(2) == 2 * 28 * 8 * 128 * 2


def test_lora_parameters_are_peft_all_linear_adapters():
    from soar.policy import Policy

    path = "profiles/paper_dry/llama.json"
    base, _ = models.load_model(f"random:{path}", dtype="float32", device="cpu")
    policy = Policy(base, None, adapter="lora", lora_r=4, lora_alpha=8)
    adapters = sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" in n)
    assert budget.architecture(f"random:{path}").lora_params(4) == adapters


def test_paper_student_counts_each_component():
    cfg = _paper()
    arch, n = budget.architecture(cfg.model.name), LLAMA_3B
    m = budget.model_memory(cfg, "student", arch, bytes_per_param=2, prompt=153)
    assert m.resident == {"weights": 2 * n, "reference": 2 * n, "fp32 masters": 4 * n, "AdamW m, v": 8 * n}
    tokens = 4 * (153 + 1024)  # micro_batch x (prompt + max_new_tokens)
    layer = 2 * (8 * 3072 + 4 * 8192) + 8 * 3072
    assert m.phases["backward"] == {"gradients": 4 * n + 2 * 128256 * 3072, "activations": tokens * 28 * layer,
                                    "logits": tokens * 128256 * (4 + 2 * 2)}
    assert m.phases["optimizer step"] == {"gradients": 4 * n}
    assert m.phases["rollout"]["KV cache"] == 256 * (153 + 1024) * 2 * 28 * 8 * 128 * 2
    gc = budget.model_memory(_paper(student={"gradient_checkpointing": True}), "student", arch, bytes_per_param=2,
                             prompt=153)
    assert gc.phases["backward"]["activations"] == tokens * (28 * 3072 * 2 + layer)  # layer inputs + one layer
    lora = budget.model_memory(_paper(student={"adapter": "lora"}), "student", arch, bytes_per_param=2)
    a = arch.lora_params(16)
    assert lora.resident == {"weights": 2 * n, "reference": 0.0, "fp32 masters": 4 * a, "AdamW m, v": 8 * a}


def test_paper_profile_on_one_80gb_gpu_is_refused_naming_the_knobs():
    cfg = _paper()
    with pytest.raises(budget.MemoryPlanError) as error:
        budget.check_memory(cfg, devices=[80 * GiB])
    text = str(error.value)
    assert "teacher -> cuda:0, student -> cuda:0" in text and "DOES NOT FIT" in text
    for part in ("reference", "fp32 masters", "AdamW m, v", "activations", "logits"):
        assert part in text
    for knob in ("gradient_checkpointing: true", "micro_batch: 1", "generation.batch_size: 128", "2 GPUs",
                 "adapter: lora", "max_new_tokens", "generation.max_model_len"):
        assert knob in text
    assert isinstance(error.value, config.ConfigError)


def test_paper_profile_on_eight_80gb_gpus_places_the_teacher_apart_from_the_students():
    cfg = _paper(parallel={"backend": "ray", "workers": 6, "gpus_per_worker": 1.0})
    plan = budget.memory_plan(cfg, [80 * GiB] * 8)
    assert plan.placement == {"teacher": "cuda:0", "student": "cuda:1",
                              **{f"actor {k}": f"cuda:{k + 2}" for k in range(6)}}
    assert plan.student_slots == 6 and plan.parallel(cfg.parallel).actor_gpus == (2, 3, 4, 5, 6, 7)
    assert plan.model(cfg.model, "student").device == "cuda:1"
    assert not plan.fits  # as set: a full-FT student's rollout (KV of 256 x 1.2k tokens) or backward overflows 72 GiB
    fitted, devices, knobs = budget.fitting(cfg, [80 * GiB] * 8)  # the knobs it names, until it fits
    # fused AdamW and gradients moved onto the masters as they are made: micro_batch stays 4
    assert [k.split(" (")[0] for k in knobs] == ["student/teacher gradient_checkpointing: true",
                                                 "generation.batch_size: 128"]
    assert devices == [80 * GiB] * 8 and budget.memory_plan(fitted, devices).fits
    assert fitted.student.adapter == fitted.teacher.adapter == "full"  # still the paper's method
    assert budget.memory_plan(_paper(), [141 * GiB] * 2).fits  # H200s hold the paper profile as set


def test_ray_actors_never_land_on_the_drivers_gpus():
    cfg = _paper(parallel={"backend": "ray", "workers": 8, "gpus_per_worker": 1.0})
    plan = budget.memory_plan(cfg, [141 * GiB] * 8)
    assert not plan.fits and "8 Ray actors x 1.0 GPUs need 8 GPUs besides the driver's 2, and 6 are left" \
        in plan.problems[0]
    halves = budget.memory_plan(_paper(parallel={"backend": "ray", "workers": 4, "gpus_per_worker": 0.5}),
                                [141 * GiB] * 4)
    assert [halves.placement[f"actor {k}"] for k in range(4)] == ["cuda:2", "cuda:2", "cuda:3", "cuda:3"]


def test_a_toy_config_on_the_cpu_is_planned_against_host_ram_and_never_refused(monkeypatch):
    # a shipped config: models/addition exists only once the pipeline has run (not in a fresh clone)
    cfg = _cfg(model={"device": "cpu", "name": "random:profiles/paper_dry/llama.json"})
    plan = budget.check_memory(cfg)
    assert not plan.gpu and plan.fits and plan.placement == {"teacher": "cpu", "student": "cpu"}
    assert plan.model(cfg.model, "teacher") == cfg.model
    monkeypatch.setattr(budget, "host_memory", lambda: 1)
    with pytest.warns(UserWarning, match="a CPU run goes on"):
        assert not budget.check_memory(cfg).fits


def test_gradient_checkpointing_is_real_and_changes_no_result():
    """The knob reaches the model (load_policy), and an update with it steps the same weights."""
    import torch

    from soar.policy import load_policy, make_optimizer, update
    from soar.sampling import Sample

    model_cfg = config.ModelConfig(name="random:profiles/paper_dry/llama.json", dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(0)
    samples = [Sample(0, j, tuple(torch.randint(3, 500, (5,), generator=g).tolist()),
                      tuple(torch.randint(3, 500, (7,), generator=g).tolist()), "", True) for j in range(4)]
    states = []
    for adapter in ("full", "lora"):
        for checkpointing in (False, True):
            torch.manual_seed(0)
            role = _cfg(student={"adapter": adapter, "gradient_checkpointing": checkpointing}).student
            policy = load_policy(model_cfg, role)
            policy.tokenizer = type("T", (), {"pad_token_id": 0})()  # random: has no tokenizer; update reads the pad id
            assert policy.model.is_activation_checkpointing == checkpointing
            optimizer, scheduler = make_optimizer(policy, lr=1e-3, warmup_steps=0, total_steps=1)
            update(policy, optimizer, scheduler, samples, torch.tensor([1.0, -1.0, 0.5, -0.5]), kl_coef=0.001,
                   max_grad_norm=1.0, micro_batch=2)
            states.append(policy.state())
    for plain, checkpointed in (states[:2], states[2:]):
        assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_layer_activations_match_the_saved_tensors_of_a_forward():
    """layer_activation_bytes against what autograd keeps per token of one decoder layer
    (the difference between 2 and 1 layers) in soar.policy's training forward, fp32 and bf16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def saved(layers, dtype):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=384, num_hidden_layers=layers,
                                             num_attention_heads=4, num_key_value_heads=2)).to(dtype).train()
        weights, storages = {p.data_ptr() for p in model.parameters()}, {}

        def pack(t):
            if t.data_ptr() not in weights:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(0, 64, (2, 32)), use_cache=False)
        return sum(storages.values())

    arch = budget.Architecture(hidden=128, layers=1, heads=4, kv_heads=2, head_dim=32, intermediate=384, vocab=64,
                               tied=False, context=0)
    for dtype, w in ((torch.float32, 4), (torch.bfloat16, 2)):
        per_token = (saved(2, dtype) - saved(1, dtype)) / 64
        assert per_token == pytest.approx(arch.layer_activation_bytes(w), rel=0.1)


def test_vllm_engines_take_their_share_and_must_hold_a_sequence(monkeypatch):
    cfg = _paper(generation={"backend": "vllm"})
    plan = budget.memory_plan(cfg, [80 * GiB] * 2)
    teacher = plan.devices[0].processes[0][0]
    assert teacher.resident["vLLM engine"] == pytest.approx(budget.VLLM_GPU_MEMORY * 80 * GiB)
    assert "rollout" not in teacher.phases  # the engine's KV cache is inside its share
    assert not budget.memory_plan(cfg, [80 * GiB]).fits  # two engines and two full-FT policies on one GPU
    monkeypatch.setattr(budget, "VLLM_GPU_MEMORY", 0.08)  # 6.4 GiB: the 6 GiB of weights leave no room
    assert "generation.max_model_len" in budget.memory_plan(cfg, [80 * GiB] * 2).problems[0]


# --- the one-GPU profile (profiles/gpu1.yaml) ---------------------------------------------------

def _gpu1(**overrides):
    return config.load("params.yaml", {"profile": "gpu1", **overrides})


def test_fail_at_k_work_and_the_most_test_problems_count_by_hand():
    cfg = _cfg(fail_at_k={"pools": ["math_test", "olympiadbench"], "limit": 100, "k": 4, "max_new_tokens": 10,
                          "train_fraction": 0.5},
               evaluate={"extra": ["aime24"], "limit": 40})
    sizes = {"math_test": 5000, "olympiadbench": 60, "aime24": 30}
    assert budget.fail_at_k_work(cfg, sizes) == budget.Work((100 + 60) * 4 * 10)  # the limit, or the whole pool
    # half of what fail@k draws, were all of it hard; an extra benchmark whole; at most evaluate.limit
    assert budget.most_test_problems(cfg, sizes) == {"math_test": 40, "olympiadbench": 30, "aime24": 30}


def test_batched_students_decode_at_a_larger_batch_in_the_projection():
    hw = budget.Hardware("toy", flops=1e15, bandwidth=1e12)
    args = {"prompt": P, "teacher_prompt": T, "pool_sizes": {"math_test": 10}, "test_problems": {"math_test": 5},
            "efficiency": [0.5, 0.25]}
    alone, batched = (budget.projection(_gpu1(parallel={"batch_students": k}), hw, **args) for k in (1, 8))
    assert alone["work"] == batched["work"]  # the same tokens, decoded 8 students' rows at a time
    assert batched["ideal_hours"]["soar_run"] < alone["ideal_hours"]["soar_run"]
    assert batched["ideal_hours"]["retrain"] == alone["ideal_hours"]["retrain"]  # fresh students train alone
    one = batched["ideal_hours"]
    assert one["one_run"] == pytest.approx(one["soar_run"] + one["retrain"] + one["evaluate"])
    assert batched["hours"]["one_run"] == pytest.approx([one["one_run"] / 0.5, one["one_run"] / 0.25])


def test_the_shipped_llama_1b_config_gives_its_parameter_count():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    name = "meta-llama/Llama-3.2-1B-Instruct"
    arch = budget.architecture(name)
    with torch.device("meta"):  # no memory: only the shapes
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(budget.KNOWN[name]))
    assert arch.params == sum(p.numel() for p in model.parameters()) == 1_235_814_400


def test_gpu1_profile_is_planned_on_one_80gb_gpu():
    cfg = _gpu1()
    assert cfg.model.name == "meta-llama/Llama-3.2-1B-Instruct" and cfg.parallel.backend == "inprocess"
    assert cfg.student.adapter == "lora" and cfg.parallel.batch_students > 1  # students batched on one base
    plan = budget.check_memory(cfg, devices=[80 * GiB])  # raises MemoryPlanError when it does not fit
    assert plan.fits and plan.placement == {"teacher": "cuda:0", "student": "cuda:0"}
    assert plan.model(cfg.model, "student").device == "cuda:0"
    student = plan.devices[0].processes[0][1]
    a = budget.architecture(cfg.model.name).lora_params(cfg.student.lora_r)
    assert student.resident["batched students"] == cfg.parallel.batch_students * a * (4 + 8)  # fp32 adapter, AdamW
    assert budget.check_memory(cfg, roles=("student",), devices=[80 * GiB]).fits  # retrain, evaluate


def test_gpu1_projection_is_within_8_gpu_hours_and_is_the_committed_one():
    """The projection docs/scale-out.md shows (benchmarks/project_gpu1.py) is budget.projection of
    the gpu1 config as it is now, and one SOAR run with its fresh students, their evaluation and
    fail@k stays within 8 H100-hours at the slower of the paper's two fitted roofline shares."""
    import json

    from soar import paths

    saved = json.loads((paths.ROOT / paths.BENCHMARKS / "gpu1_projection.json").read_text())
    hw = saved["hardware"]
    p = budget.projection(_gpu1(), budget.Hardware(hw["name"], hw["flops"], hw["bandwidth"]),
                          prompt=saved["prompt_tokens"], teacher_prompt=saved["teacher_prompt_tokens"],
                          pool_sizes=saved["pool_sizes"], test_problems=saved["test_problems"],
                          efficiency=list(saved["efficiency"].values()))
    assert p == saved["projection"], "stale: run `python benchmarks/project_gpu1.py`"
    assert p["hours"]["one_run"][-1] <= p["hours"]["with_fail_at_k"][-1] <= saved["budget_hours"] == 8
    plan = saved["memory_plan"]
    assert plan["fits"] and plan["placement"] == {"teacher": "cuda:0", "student": "cuda:0"}
