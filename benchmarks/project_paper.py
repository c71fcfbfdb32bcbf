"""GPU-hours of the paper profile, projected (no GPU has run this project): the work of each
stage counted from the resolved paper config (`soar.budget`), at H100 roofline throughputs for
Llama-3.2-3B scaled by one efficiency factor fitted to the paper's own reported cost of a SOAR
run (PAPER.md, Compute). The paper's second reported cost (a fresh-student run with its
evaluation) is the check the fit did not see. Then one outer step on one node of 8 H100s as the
memory plan places the paper profile (`node_placement`): the knobs it needs to fit 80 GiB, how
many GPUs train students, and the wall-clock and GPU-hours of an outer step.

The work model itself is checked here on what can be measured: the default profile's retrain +
evaluate time is predicted from its counted work at CPU throughputs measured in this run (one
RLOO step and one evaluation batch at the stage's shapes), and compared with the wall time the
pipeline recorded (results/retrain/metrics.json, results/eval/metrics.json).
Writes results/benchmarks/paper_projection.json.
    python benchmarks/project_paper.py
"""

import platform
import time
from datetime import date

import torch

from soar import budget, config, data, paths, prompts
from soar.models import load_model
from soar.policy import load_policy, make_optimizer, update
from soar.retrain import kept_checkpoints, test_sets
from soar.sampling import encode_prompts, generate
from soar.teacher import teacher_prompt

# Llama-3.2-3B-Instruct in bf16, its shape from its config.json (shipped: benchmarks/llama-3.2-3b)
LLAMA_3B = budget.architecture("meta-llama/Llama-3.2-3B-Instruct").shape(bytes_per_param=2)
H100 = budget.Hardware("H100 SXM", flops=989e12, bandwidth=3.35e12)  # dense BF16 FLOP/s, HBM3 bytes/s
H100_MEMORY, NODE = 80 * budget.GiB, 8  # one node of 8 H100 80GB (PAPER.md: 4 such nodes per SOAR run)
# PAPER.md: fail@128 test sizes of the paper's pools; one SOAR run 1,500-1,900 GPU-hours;
# "one fresh-student evaluation: about 12 hours on one 8-GPU node".
PAPER_TEST = {"math_test": 360, "olympiadbench": 158}
PAPER_SOAR_GPU_HOURS = (1500, 1900)
PAPER_FRESH_GPU_HOURS = 12 * 8


def mean_prompt_tokens(tokenizer, problems) -> float:
    ids = encode_prompts(tokenizer, [prompts.student_messages(p.problem) for p in problems])
    return sum(map(len, ids)) / len(ids)


def cpu_rates(cfg) -> dict:
    """Measured on this machine at the default stages' shapes: sampled tokens/s of a retrain RLOO
    step and of an evaluation batch, trained tokens/s of the RLOO update."""
    rc, ec, g = cfg.retrain, cfg.evaluate, cfg.generation
    policy = load_policy(cfg.model, cfg.student)
    policy.reset(seed=0)
    hard = data.load_problems(paths.hard_split(cfg.fail_at_k.pools[0], "train"))
    optimizer, scheduler = make_optimizer(policy, lr=cfg.student.lr, warmup_steps=0, total_steps=2)
    sampled = trained = gen_s = train_s = 0.0
    for step in range(2):
        questions = hard[step * rc.questions_per_step : (step + 1) * rc.questions_per_step]
        start = time.perf_counter()
        samples = [s for row in generate(policy.model, policy.tokenizer,
                                         [prompts.student_messages(q.problem) for q in questions],
                                         n=rc.samples_per_question, max_new_tokens=rc.max_new_tokens,
                                         temperature=cfg.student.temperature, seed=step, batch_size=g.batch_size,
                                         progress=False) for s in row]
        mid = time.perf_counter()
        update(policy, optimizer, scheduler, samples, torch.zeros(len(samples)), kl_coef=cfg.student.kl_coef,
               max_grad_norm=cfg.student.max_grad_norm, micro_batch=cfg.student.micro_batch)
        gen_s, train_s = gen_s + mid - start, train_s + time.perf_counter() - mid
        sampled += sum(len(s.completion_ids) for s in samples)
        trained += sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    _, problems = next(iter(test_sets(cfg).values()))
    start = time.perf_counter()
    rows = generate(policy.model, policy.tokenizer, [prompts.student_messages(p.problem) for p in problems],
                    n=ec.n_samples, max_new_tokens=ec.max_new_tokens, temperature=ec.temperature, seed=0,
                    batch_size=g.batch_size, progress=False)
    eval_s = time.perf_counter() - start
    return {"retrain_sampled_per_s": sampled / gen_s, "trained_per_s": trained / train_s,
            "evaluate_sampled_per_s": sum(len(s.completion_ids) for r in rows for s in r) / eval_s,
            "prompt_tokens": mean_prompt_tokens(policy.tokenizer, hard)}


def work_model_check(cfg) -> dict:
    """Predicted vs recorded retrain + evaluate compute of the default profile (None if not run)."""
    rt, ev = (data.read_json(p) if p.exists() else None
              for p in (paths.stage_dir("retrain") / "metrics.json", paths.RESULTS / "eval" / "metrics.json"))
    rates = cpu_rates(cfg)
    tests = {b: len(ps) for b, (_, ps) in test_sets(cfg).items()}
    predicted = 3600 * (budget.hours(budget.retrain_work(cfg, prompt=rates["prompt_tokens"]),
                                     sampled_per_s=rates["retrain_sampled_per_s"], trained_per_s=rates["trained_per_s"])
                        + budget.hours(budget.evaluate_work(cfg, tests), sampled_per_s=rates["evaluate_sampled_per_s"],
                                       trained_per_s=rates["trained_per_s"]))
    recorded = rt["wall_s"] + ev["wall_s"] if rt and ev and "wall_s" in rt and "wall_s" in ev else None
    return {"rates": rates, "predicted_s": predicted, "recorded_s": recorded,
            "predicted_over_recorded": recorded and predicted / recorded}


def node_placement(cfg, *, prompt: float, teacher_prompt: float, efficiency: dict) -> dict:
    """One outer step on NODE H100s as the memory plan places the paper profile: the knobs it adds
    so that each GPU holds its share, and per layout the student GPUs and the hours of an outer
    step at the roofline scaled by each efficiency (the range): in-process (the profile's
    `parallel`: the teacher on one GPU, the run's student on another, the rest idle) and with a
    Ray actor on each GPU the driver does not hold."""
    fitted = budget.fitting(cfg, [H100_MEMORY] * NODE, prompt=prompt)
    if fitted is None:
        raise SystemExit(f"the paper profile does not fit {NODE} x H100 with any knob of the memory plan")
    fit, _, knobs = fitted
    rates = budget.roofline_rates(LLAMA_3B, H100, batch=fit.generation.batch_size,
                                  context=prompt + fit.student.max_new_tokens / 2, full=fit.student.adapter == "full",
                                  kl=fit.student.kl_coef > 0, recompute=fit.student.gradient_checkpointing)
    step = budget.soar_step_work(fit, prompt=prompt, teacher_prompt=teacher_prompt)
    layouts = {"inprocess": fit,
               "ray": budget.override(fit, parallel={"backend": "ray", "workers": NODE - 2, "gpus_per_worker": 1.0})}
    out = {"gpus": NODE, "gpu_memory_gib": H100_MEMORY / budget.GiB, "knobs": knobs, "roofline": rates, "layouts": {}}
    for name, layout in layouts.items():
        plan = budget.memory_plan(layout, [H100_MEMORY] * NODE, prompt=prompt)
        spans = [budget.outer_step_hours(layout, plan, step, student=(rates[0] * e, rates[1] * e),
                                         teacher=(rates[0] * e, rates[1] * e))
                 for e in sorted(efficiency.values(), reverse=True)]  # fastest first
        out["layouts"][name] = {"fits": plan.fits, "placement": plan.placement,
                                "student_slots": spans[0]["student_slots"], "busy_slots": spans[0]["busy_slots"],
                                **{k: [s[k] for s in spans] for k in ("wall_hours", "busy_gpu_hours")},
                                "node_gpu_hours": [s["wall_hours"] * NODE for s in spans],  # the node is held
                                "run_wall_hours": [s["wall_hours"] * fit.soar.outer_steps for s in spans]}
    return out


def paper_projection(cfg, tokenizer) -> dict:
    """GPU-hours of the paper profile's stages at H100 roofline throughputs scaled by the
    efficiency that reproduces the paper's reported SOAR-run cost."""
    rc, ec = cfg.retrain, cfg.evaluate
    prompt = mean_prompt_tokens(tokenizer, data.load_benchmark("math_test", limit=500, seed=0))
    teacher = len(teacher_prompt(tokenizer, cfg.teacher.response_prefix, cfg.teacher.one_shot))
    sampled_per_s, trained_per_s = budget.roofline_rates(
        LLAMA_3B, H100, batch=cfg.generation.batch_size, context=prompt + rc.max_new_tokens / 2,
        full=cfg.student.adapter == "full", kl=cfg.student.kl_coef > 0)
    ideal = lambda w: budget.hours(w, sampled_per_s=sampled_per_s, trained_per_s=trained_per_s)  # noqa: E731
    tests = PAPER_TEST | {b: len(data.load_benchmark(b)) for b in ec.extra}
    work = {"soar_grounded_run": budget.soar_work(cfg, prompt=prompt, teacher_prompt=teacher),
            "soar_intrinsic_run": budget.soar_work(config.load(overrides={"profile": "paper", "soar": {"reward": "intrinsic"}}),
                                                   prompt=prompt, teacher_prompt=teacher),
            "retrain": budget.retrain_work(cfg, prompt=prompt),
            "evaluate": budget.evaluate_work(cfg, tests)}
    one_fresh = (budget.rl_steps(rc.steps, rc.questions_per_step * rc.samples_per_question, rc.max_new_tokens, prompt)
                 + budget.Work(PAPER_TEST["math_test"] * ec.n_samples * ec.max_new_tokens
                               * kept_checkpoints(cfg, "math_test")))
    # the paper's main table: grounded, no-promotion (the same work) and intrinsic runs x 3 seeds
    work["main_table_total"] = (work["soar_grounded_run"] * 6 + work["soar_intrinsic_run"] * 3
                                + work["retrain"] + work["evaluate"])
    # realized share of the roofline, from each cost the paper reports; the two bound the projection
    efficiency = {"soar_run": ideal(work["soar_grounded_run"]) / (sum(PAPER_SOAR_GPU_HOURS) / 2),
                  "fresh_student": ideal(one_fresh) / PAPER_FRESH_GPU_HOURS}
    lo, hi = max(efficiency.values()), min(efficiency.values())
    return {
        "model": cfg.model.name, "hardware": H100.name, "generation_batch": cfg.generation.batch_size,
        "prompt_tokens": prompt, "teacher_prompt_tokens": teacher, "test_problems": tests,
        "outer_steps": cfg.soar.outer_steps,
        "roofline": {"sampled_per_s": sampled_per_s, "trained_per_s": trained_per_s},
        "paper_gpu_hours": {"soar_run": PAPER_SOAR_GPU_HOURS, "fresh_student": PAPER_FRESH_GPU_HOURS},
        "efficiency": efficiency,
        "work": {k: {"sampled": w.sampled, "trained": w.trained} for k, w in work.items()},
        "ideal_gpu_hours": {k: ideal(w) for k, w in work.items()},
        "gpu_hours": {k: [ideal(w) / lo, ideal(w) / hi] for k, w in work.items()},
        "paper_gpu_hours_per_outer_step": [h / cfg.soar.outer_steps for h in PAPER_SOAR_GPU_HOURS],
        "outer_step_roofline": outer_step_roofline(cfg, ideal, prompt=prompt, teacher_prompt=teacher),
        "node": node_placement(cfg, prompt=prompt, teacher_prompt=teacher, efficiency=efficiency),
    }


def outer_step_roofline(cfg, ideal, *, prompt: float, teacher_prompt: float) -> dict:
    """The least one outer step can cost: its work at the H100 roofline (`ideal`), with every
    completion at its cap, split into decoding and training; and the largest share of their caps
    that completions could average (student and teacher alike, in 1% steps) for an outer step to
    fit in 1 H100-hour at the roofline (0 if none)."""
    def work(share: float) -> budget.Work:
        shorter = budget.override(cfg, student={"max_new_tokens": round(cfg.student.max_new_tokens * share)},
                                  teacher={"max_new_tokens": round(cfg.teacher.max_new_tokens * share)})
        return sum(budget.soar_step_work(shorter, prompt=prompt, teacher_prompt=teacher_prompt).values(), budget.Work())

    full = work(1.0)
    return {"hours": ideal(full), "decode_hours": ideal(budget.Work(sampled=full.sampled)),
            "train_hours": ideal(budget.Work(trained=full.trained)),
            "completion_share_for_one_hour": max((s / 100 for s in range(1, 101) if ideal(work(s / 100)) <= 1), default=0.0)}


def main() -> None:
    default = config.load()
    check = work_model_check(default)
    print(f"{default.profile} retrain + evaluate: predicted {check['predicted_s'] / 60:.1f} min, recorded "
          f"{check['recorded_s'] and round(check['recorded_s'] / 60, 1)} min")
    # prompt lengths in a Llama-family BPE tokenizer (the embedded SmolLM2's), not the world's digits
    paper = paper_projection(config.load(overrides={"profile": "paper"}), load_model("smollm2-135m-instruct")[1])
    result = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "device": "cpu", "profile": default.profile, "check": check, "paper": paper}
    out = paths.BENCHMARKS / "paper_projection.json"
    data.write_json(out, result)
    h, e = paper["gpu_hours"], paper["efficiency"]
    span = lambda k: f"{h[k][0]:,.0f}-{h[k][1]:,.0f}"  # noqa: E731
    print(f"paper profile, projected H100-hours: SOAR run {span('soar_grounded_run')}, retrain {span('retrain')}, "
          f"evaluate {span('evaluate')}; roofline share {e['soar_run']:.2f} (SOAR run) / {e['fresh_student']:.2f} "
          f"(fresh student) -> {out}")
    node = paper["node"]
    print(f"one outer step on {node['gpus']} x H100 (memory plan knobs: {', '.join(node['knobs']) or 'none'}): "
          + "; ".join(f"{name}: {v['student_slots']} student GPUs, {v['wall_hours'][0]:.2f}-{v['wall_hours'][1]:.2f} h wall, "
                      f"{v['node_gpu_hours'][0]:.1f}-{v['node_gpu_hours'][1]:.1f} GPU-hours held" for name, v in node["layouts"].items()))


if __name__ == "__main__":
    main()
