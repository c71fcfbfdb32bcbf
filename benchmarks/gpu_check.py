"""GPU check: what only a GPU can show, measured at the paper's shapes on one H100/H200 in under
8 minutes, with torch, transformers and peft alone (no hub, vLLM, TRL or math-verify).

The model is Llama-3.2-3B with random weights (benchmarks/llama-3.2-3b/config.json, the hub's
config), in bf16 with fp32 masters as soar.policy trains it, under the paper profile
(profiles/paper.yaml: full fine-tuning of both roles). Random weights change no speed or memory:
their completions run to the token cap, the work model's own assumption. One role at a time:
- student: one RLOO step on 8 questions x 32 completions of 1024 tokens (soar.policy.update), then
  a rollout of 8 x 32 samples x 1024 tokens (soar.sampling.generate, the HF backend);
- teacher: one RLOO step on g*B*n = 512 pairs of 512 tokens, then a rollout of one prompt x
  generation.batch_size samples x 512 tokens.
Each phase has a time cap (CAPS_S): an RLOO step runs as many micro-batches as fit and is
extrapolated to the whole step, a rollout decodes as many tokens as its cap allows (a short
warm-up times a decode step). Beside each measured peak (torch.cuda.max_memory_allocated) stands
the memory plan's prediction (soar.budget). When the plan says a role does not fit this GPU, the
knobs it names are applied first and recorded. The measured rates then give the projected
GPU-hours of an outer step and of a run (soar.budget's work model), and the wall-clock hours of
an outer step on 8 such GPUs as the plan places the paper profile. Run it from the repository root:

    python benchmarks/gpu_check.py            # on a GPU: writes results/benchmarks/gpu.json
    python benchmarks/gpu_check.py --tiny     # the same code path on the CPU, a toy model, seconds
"""

import argparse
import gc
import json
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import torch

from soar import budget, config, data, paths
from soar.policy import load_policy, make_optimizer, update
from soar.sampling import Sample, generate

MODEL = "random:benchmarks/llama-3.2-3b"
TINY_MODEL = "random:profiles/paper_dry/llama.json"  # Llama-3.2's architecture, 2 layers of width 64
# mean prompt tokens in a Llama-3 BPE: MATH test problems in the chat template, and the teacher
# prompt (results/benchmarks/paper_projection.json)
PROMPTS = {"student": 153, "teacher": 154}
CAPS_S = {"student rollout": 75, "student step": 110, "teacher rollout": 45, "teacher step": 80}
DEADLINE_S = 450  # a phase that could end later is skipped: the whole check stays under 8 minutes
NODE_GPUS, ACTORS = 8, 6  # the node of the projection: teacher, the run's student, 6 Ray actors' students
TINY = {"student": {"questions_per_step": 2, "samples_per_question": 2, "max_new_tokens": 8, "micro_batch": 2},
        "teacher": {"max_new_tokens": 8, "micro_batch": 2}, "soar": {"n": 2, "group_size": 2, "groups_per_step": 1},
        "generation": {"batch_size": 4}}
TINY_PROMPTS = {"student": 16, "teacher": 16}
GiB = budget.GiB


def peak_reset(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(cuda: bool) -> float:
    """Peak tensor memory since the last reset (CUDA), or the process's peak RSS so far (CPU)."""
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


def rollout(policy, *, prompts: int, n: int, prompt_len: int, max_new: int, batch: int, cap_s: float, cuda: bool) -> dict:
    """Decode n samples of `prompts` random prompts at temperature 1, as many tokens as the cap
    allows (at most max_new); tokens/s of the measured call."""
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(10, 10_000, (prompt_len,), generator=g).tolist() for _ in range(prompts)]

    def run(tokens):
        clock = time.perf_counter()
        rows = generate(policy.model, None, ids, n=n, max_new_tokens=tokens, temperature=1.0, seed=0, batch_size=batch,
                        progress=False)
        return time.perf_counter() - clock, sum(len(s.completion_ids) for row in rows for s in row)

    warm_s, _ = run(8)  # kernels, and a bound on a decode step's time (prefill included)
    batches = -(-prompts * n // batch)
    tokens = max(8, min(max_new, int(cap_s / (warm_s / 8) / batches)))
    peak_reset(cuda)
    seconds, decoded = run(tokens)
    return {"prompts": prompts, "samples": n, "prompt_tokens": prompt_len, "max_new_tokens": tokens,
            "of_max_new_tokens": max_new, "seconds": seconds, "tokens": decoded, "tokens_per_s": decoded / seconds,
            "peak_gib": peak_gib(cuda)}


def rl_step(policy, optimizer, scheduler, role_cfg, *, sequences: int, prompt_len: int, new: int, cap_s: float,
            cuda: bool) -> dict:
    """One RLOO step (soar.policy.update) on `sequences` random completions of `new` tokens: as
    many micro-batches as the cap allows after a 2-micro-batch warm-up (which also creates AdamW's
    states), extrapolated to the whole step."""
    g = torch.Generator().manual_seed(1)
    samples = [Sample(0, j, tuple(torch.randint(10, 10_000, (prompt_len,), generator=g).tolist()),
                      tuple(torch.randint(10, 10_000, (new,), generator=g).tolist()), "", False) for j in range(sequences)]
    advantages = torch.randn(sequences, generator=g)
    mb = role_cfg.micro_batch

    def run(count):
        clock = time.perf_counter()
        update(policy, optimizer, scheduler, samples[:count], advantages[:count], kl_coef=role_cfg.kl_coef,
               max_grad_norm=role_cfg.max_grad_norm, micro_batch=mb)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - clock

    warm_s = run(2 * mb)
    total = -(-sequences // mb)
    run_mbs = min(total, max(2, int(cap_s / (warm_s / 2))))
    peak_reset(cuda)
    seconds = run(run_mbs * mb)
    return {"sequences": sequences, "tokens_per_sequence": prompt_len + new, "micro_batch": mb,
            "micro_batches_run": run_mbs, "micro_batches": total, "seconds": seconds,
            "step_s": seconds * total / run_mbs, "trained_tokens_per_s": run_mbs * mb * (prompt_len + new) / seconds,
            "peak_gib": peak_gib(cuda)}


def planned(cfg, role: str, phase: str, *, prompt: float, new: int, cuda: bool) -> float:
    """The plan's GiB for `role` at `phase` ("rollout": with `new` tokens decoded; "update": the
    larger of backward and optimizer step), resident memory included."""
    caps = {"max_new_tokens": new}
    shaped = budget.override(cfg, **{role: caps}, **({"retrain": caps, "evaluate": caps} if role == "student" else {}))
    w = 2 if cuda else 4  # model.dtype auto: bf16 on a GPU, fp32 on the CPU
    m = budget.model_memory(shaped, role, budget.architecture(cfg.model.name), bytes_per_param=w, prompt=prompt)
    need = sum(m.phases["rollout"].values()) if phase == "rollout" else \
        max(sum(m.phases[p].values()) for p in ("backward", "optimizer step"))
    return (m.held + need) / GiB


def role_check(cfg, role: str, prompt: int, deadline: float, cuda: bool) -> dict:
    """The RLOO step, then the rollout (AdamW's states exist by then, as in every inner step but
    the first) of one role, each beside the plan's prediction. A phase that would end past the
    deadline is skipped; one that runs out of GPU memory is recorded as such. The role's memory is
    freed at the end."""
    rc, sc = getattr(cfg, role), cfg.soar
    torch.manual_seed(0)
    clock = time.perf_counter()
    policy = load_policy(cfg.model, rc)
    policy.tokenizer = SimpleNamespace(pad_token_id=0)  # random weights have no tokenizer; update() reads the pad id
    optimizer, scheduler = make_optimizer(policy, lr=rc.lr, warmup_steps=0, total_steps=2)
    out = {"load_s": time.perf_counter() - clock}
    sequences = (rc.questions_per_step * rc.samples_per_question if role == "student"
                 else sc.groups_per_step * sc.group_size * sc.n)
    prompts, n = (rc.questions_per_step, rc.samples_per_question) if role == "student" else (1, cfg.generation.batch_size)
    phases = {
        "step": lambda: rl_step(policy, optimizer, scheduler, rc, sequences=sequences, prompt_len=prompt,
                                new=rc.max_new_tokens, cap_s=CAPS_S[f"{role} step"], cuda=cuda),
        "rollout": lambda: rollout(policy, prompts=prompts, n=n, prompt_len=prompt, max_new=rc.max_new_tokens,
                                   batch=cfg.generation.batch_size, cap_s=CAPS_S[f"{role} rollout"], cuda=cuda),
    }
    for phase, measure in phases.items():
        if time.perf_counter() + CAPS_S[f"{role} {phase}"] > deadline:
            out[phase] = {"skipped": "time"}
            continue
        try:
            out[phase] = measure()
        except torch.OutOfMemoryError as error:
            out[phase] = {"error": f"out of memory: {str(error)[:300]}", "peak_gib": peak_gib(cuda)}
            optimizer.zero_grad(set_to_none=True)
        out[phase]["plan_gib"] = planned(cfg, role, "update" if phase == "step" else "rollout", prompt=prompt,
                                         new=out[phase].get("max_new_tokens", rc.max_new_tokens), cuda=cuda)
    del policy, optimizer, scheduler
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def projection(cfg, capacity: float, prompts: dict, student: dict, teacher: dict) -> dict | None:
    """GPU-hours of an outer step and of a run at the measured rates (soar.budget), and the wall
    hours of an outer step on NODE_GPUS such GPUs: in-process (the profile's parallel) and with
    ACTORS Ray actors, as the memory plan places them."""
    if not all("tokens" in r["rollout"] and "step_s" in r["step"] for r in (student, teacher)):
        return None  # a phase was skipped or ran out of memory
    step = budget.soar_step_work(cfg, prompt=prompts["student"], teacher_prompt=prompts["teacher"])
    rates = {"student": (student["rollout"]["tokens_per_s"], student["step"]["trained_tokens_per_s"]),
             "teacher": (teacher["rollout"]["tokens_per_s"], teacher["step"]["trained_tokens_per_s"])}
    layouts = {"inprocess": cfg, "ray": budget.override(cfg, parallel={"backend": "ray", "workers": ACTORS,
                                                                       "gpus_per_worker": 1.0})}
    node = {}
    for name, layout in layouts.items():
        plan = budget.memory_plan(layout, [capacity] * NODE_GPUS, prompt=prompts["student"])
        hours = budget.outer_step_hours(layout, plan, step, **rates)
        node[name] = {**hours, "node_gpu_hours": hours["wall_hours"] * NODE_GPUS, "plan_fits": plan.fits,
                      "placement": plan.placement}
    busy = node["inprocess"]["busy_gpu_hours"]
    return {"gpu_hours_per_outer_step": busy, "gpu_hours_per_run": busy * cfg.soar.outer_steps,
            "outer_steps": cfg.soar.outer_steps, "rates": rates, "node": node}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the same code path on the CPU with a toy model, in seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default: results/benchmarks/gpu.json; --tiny: a temp file)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        raise SystemExit("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). It measures a GPU: "
                         "run it on one, or pass --tiny for the CPU smoke run of the same code path.")
    start = time.perf_counter()
    deadline = start + DEADLINE_S
    cfg = config.load("params.yaml", {"profile": "paper", "model": {"name": TINY_MODEL if args.tiny else MODEL,
                                                                     "device": "cuda" if cuda else "cpu"},
                                      **(TINY if args.tiny else {})})
    capacity = torch.cuda.get_device_properties(0).total_memory if cuda else budget.host_memory()
    prompts = TINY_PROMPTS if args.tiny else PROMPTS
    # one role at a time on this GPU: the plan of two such GPUs, teacher and student apart
    fitted = budget.fitting(cfg, [capacity] * 2, prompt=prompts["student"])
    if fitted is None:
        raise SystemExit(f"gpu_check: a paper-profile role does not fit {capacity / GiB:.0f} GiB with any knob of the "
                         "memory plan:\n" + budget.memory_plan(cfg, [capacity], prompt=prompts["student"]).summary())
    cfg, _, knobs = fitted
    result = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "device": "cuda" if cuda else "cpu", "gpu": torch.cuda.get_device_name(0) if cuda else None,
              "memory_gib": capacity / GiB, "tiny": args.tiny, "model": cfg.model.name,
              "parameters": budget.architecture(cfg.model.name).params,
              "versions": {m.__name__: m.__version__ for m in map(__import__, ("torch", "transformers", "peft"))},
              "peak_measure": "torch.cuda.max_memory_allocated" if cuda else "peak RSS of the process",
              "knobs": knobs, "caps_s": CAPS_S, "prompt_tokens": prompts}
    for role in ("student", "teacher"):
        result[role] = role_check(cfg, role, prompts[role], deadline, cuda)
        print(f"gpu_check: {role} {json.dumps(result[role])}", flush=True)
    result["projection"] = projection(cfg, capacity, prompts, result["student"], result["teacher"])
    result["wall_s"] = time.perf_counter() - start
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-")) / "gpu_tiny.json" if args.tiny
                       else paths.BENCHMARKS / "gpu.json")
    data.write_json(out, result)
    p = result["projection"]
    print(f"gpu_check: {result['gpu'] or 'cpu'} in {result['wall_s']:.0f} s; knobs: {', '.join(knobs) or 'none'}; "
          + (f"{p['gpu_hours_per_outer_step']:.2f} GPU-hours per outer step, {p['gpu_hours_per_run']:,.0f} per run"
             if p else "no projection (a phase was skipped)") + f" -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
