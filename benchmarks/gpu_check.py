"""GPU check: what only a GPU can show, measured at the paper's shapes on one H100/H200 in under
8 minutes, with torch, transformers and peft alone (no hub, TRL or math-verify; vLLM if installed).

The model is Llama-3.2-3B with random weights (benchmarks/llama-3.2-3b/config.json, the hub's
config), in bf16 with fp32 masters as soar.policy trains it, under the paper profile
(profiles/paper.yaml: full fine-tuning of both roles). Random weights change no speed or memory.
Prompts and completions vary in length as in a run, so batches carry real padding (a batch of
equal lengths takes a cheaper attention path): prompts uniform over half to 1.5x the mean length;
about half the completions stop early (a set of token ids is made EOS for the random model, sized
so that half reach the cap), the rest run to it; an RLOO step's completions alternate between the
cap and uniform lengths below it. One role at a time:
- student: one RLOO step on 8 questions x 32 completions of up to 1024 tokens (soar.policy.update),
  then a rollout of 8 x 32 samples x up to 1024 tokens (soar.sampling.generate, the HF backend);
- teacher: one RLOO step on g*B*n = 512 pairs of up to 512 tokens, then a rollout of one prompt x
  generation.batch_size samples x up to 512 tokens.
Each phase has a time cap (CAPS_S): an RLOO step runs as many micro-batches as fit and is
extrapolated to the whole step; a rollout is timed at two completion caps with the same seeds (a
sample's tokens do not depend on the cap), so their difference is the decode steps between them,
prefill excluded, and the full rollout is extrapolated from it (`extrapolate`). Beside each
measured peak (torch.cuda.max_memory_allocated) stands the memory plan's prediction (soar.budget).
When the plan says a role does not fit this GPU, the knobs it names are applied first and
recorded. The measured rates then give the projected GPU-hours of an outer step and of a run
(soar.budget's work model), and the wall-clock hours of an outer step on 8 such GPUs as the plan
places the paper profile. Where vLLM is installed (requirements-gpu.txt), a last phase starts the
generation.backend vllm engine on a small random Llama and times a generate, the weight loads
after an update and after a promotion, the reference's generate, and a second engine beside the
first (teacher and student each have one). The result file is written
after every phase, so a run cut short keeps what it measured. Run it from the repository root:

    python benchmarks/gpu_check.py                        # on a GPU: writes results/benchmarks/gpu.json
    python benchmarks/gpu_check.py --tiny --device cuda   # smoke: a toy model on the GPU, seconds
    python benchmarks/gpu_check.py --tiny                 # the same code path on the CPU, seconds
"""

import argparse
import gc
import importlib.util
import json
import platform
import resource
import sys
import tempfile
import time
import traceback
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
CAPS_S = {"student rollout": 75, "student step": 110, "teacher rollout": 45, "teacher step": 80, "vllm": 90}
DEADLINE_S = 450  # a phase that could end later is skipped: the whole check stays under 8 minutes
NODE_GPUS, ACTORS = 8, 6  # the node of the projection: teacher, the run's student, 6 Ray actors' students
TINY = {"student": {"questions_per_step": 2, "samples_per_question": 2, "max_new_tokens": 8, "micro_batch": 2},
        "teacher": {"max_new_tokens": 8, "micro_batch": 2}, "soar": {"n": 2, "group_size": 2, "groups_per_step": 1},
        "generation": {"batch_size": 4}}
TINY_PROMPTS = {"student": 16, "teacher": 16}
GiB = budget.GiB


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


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


def prompt_ids(count: int, mean: int, g: torch.Generator) -> list[list[int]]:
    """`count` random prompts of lengths uniform over [mean / 2, 3 mean / 2]: batches are padded."""
    lengths = torch.randint(mean // 2, mean * 3 // 2 + 1, (count,), generator=g).tolist()
    return [torch.randint(10, 10_000, (n,), generator=g).tolist() for n in lengths]


def stop_early(model, max_new: int) -> None:
    """Make about half of the random model's completions end before max_new: as many top token
    ids EOS as give a step a stop chance p with (1 - p)^max_new = 1/2 under near-uniform sampling
    (random weights). The tokens decoded are counted, not assumed."""
    vocab = model.config.vocab_size
    k = max(1, round(vocab * (1 - 0.5 ** (1 / max_new))))
    model.generation_config.eos_token_id = list(range(vocab - k, vocab))


def extrapolate(short: tuple[int, float, int], long: tuple[int, float, int], cap: int) -> tuple[float, float]:
    """(seconds, tokens) of a rollout with completions capped at `cap`, from two timed runs with the
    same seeds, each (completion cap, seconds, tokens decoded): their difference is the decode steps
    from the short cap to the long one (prefill and the steps before cancel), taken as the cost of
    every later step. A run at `cap` itself is returned as measured."""
    (n1, s1, t1), (n2, s2, t2) = short, long
    if n2 >= cap:
        return s2, t2
    return s1 + (cap - n1) * (s2 - s1) / (n2 - n1), t1 + (cap - n1) * (t2 - t1) / (n2 - n1)


def rollout(policy, *, prompts: int, n: int, prompt_len: int, max_new: int, batch: int, cap_s: float, cuda: bool) -> dict:
    """Decode n samples of `prompts` random prompts at temperature 1 with completions capped at
    max_new: timed at a short cap and at the longest the time cap allows, extrapolated to max_new."""
    ids = prompt_ids(prompts, prompt_len, torch.Generator().manual_seed(0))
    stop_early(policy.model, max_new)

    def run(tokens):
        sync(cuda)
        clock = time.perf_counter()
        rows = generate(policy.model, None, ids, n=n, max_new_tokens=tokens, temperature=1.0, seed=0, batch_size=batch,
                        progress=False)
        sync(cuda)
        return tokens, time.perf_counter() - clock, sum(len(s.completion_ids) for row in rows for s in row)

    short = max(1, min(8, max_new // 4))
    run(short)  # warm-up: kernels, the allocator's pools
    first = run(short)
    probe = run(2 * short)  # a first bound on a decode step's time, to size the long run
    step_s = max((probe[1] - first[1]) / short, 1e-6)
    long_cap = max(2 * short, min(max_new, short + int((cap_s - first[1]) / step_s)))
    peak_reset(cuda)
    long = probe if long_cap == 2 * short else run(long_cap)
    peak = peak_gib(cuda)
    seconds, tokens = extrapolate(first, long, max_new)
    return {"prompts": prompts, "samples": n, "prompt_tokens": prompt_len, "max_new_tokens": long[0],
            "of_max_new_tokens": max_new,
            "short_run": {"max_new_tokens": first[0], "seconds": first[1], "tokens": first[2]},
            "long_run": {"max_new_tokens": long[0], "seconds": long[1], "tokens": long[2]},
            "decode_step_s": (long[1] - first[1]) / (long[0] - first[0]), "seconds": seconds, "tokens": tokens,
            "extrapolated": long[0] < max_new, "tokens_per_s": tokens / seconds, "peak_gib": peak}


def rl_step(policy, optimizer, scheduler, role_cfg, *, sequences: int, prompt_len: int, new: int, cap_s: float,
            cuda: bool) -> dict:
    """One RLOO step (soar.policy.update) on `sequences` random completions (every other one at the
    cap `new`, the rest uniform below it, so each micro-batch is padded to the longest): as many
    micro-batches as the cap allows after a 2-micro-batch warm-up (which also creates AdamW's
    states), extrapolated to the whole step."""
    g = torch.Generator().manual_seed(1)
    prompts = prompt_ids(sequences, prompt_len, g)
    lengths = [new if j % 2 == 0 else int(torch.randint(1, new + 1, (), generator=g)) for j in range(sequences)]
    samples = [Sample(0, j, tuple(p), tuple(torch.randint(10, 10_000, (k,), generator=g).tolist()), "", False)
               for j, (p, k) in enumerate(zip(prompts, lengths))]
    advantages = torch.randn(sequences, generator=g)
    mb = role_cfg.micro_batch

    def run(count):
        sync(cuda)
        clock = time.perf_counter()
        update(policy, optimizer, scheduler, samples[:count], advantages[:count], kl_coef=role_cfg.kl_coef,
               max_grad_norm=role_cfg.max_grad_norm, micro_batch=mb)
        sync(cuda)
        return time.perf_counter() - clock

    warm_s = run(2 * mb)
    total = -(-sequences // mb)
    run_mbs = min(total, max(2, int(cap_s / (warm_s / 2))))
    peak_reset(cuda)
    seconds = run(run_mbs * mb)
    trained = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples[: run_mbs * mb])
    return {"sequences": sequences, "tokens_per_sequence": round(trained / min(sequences, run_mbs * mb)),
            "max_tokens_per_sequence": max(len(s.prompt_ids) + len(s.completion_ids) for s in samples),
            "micro_batch": mb, "micro_batches_run": run_mbs, "micro_batches": total, "seconds": seconds,
            "step_s": seconds * total / run_mbs, "trained_tokens_per_s": trained / seconds, "peak_gib": peak_gib(cuda)}


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


def role_check(cfg, role: str, prompt: int, deadline: float, cuda: bool, save) -> dict:
    """The RLOO step, then the rollout (AdamW's states exist by then, as in every inner step but
    the first) of one role, each beside the plan's prediction; save(out) after each. A phase that
    would end past the deadline is skipped; one that runs out of GPU memory is recorded as such.
    The role's memory is freed at the end."""
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
        if "error" in out[phase]:  # out of the handler: its traceback no longer holds the phase's tensors
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()  # the cached blocks, for the next phase
        out[phase]["plan_gib"] = planned(cfg, role, "update" if phase == "step" else "rollout", prompt=prompt,
                                         new=out[phase].get("of_max_new_tokens", rc.max_new_tokens), cuda=cuda)
        save(out)
    del policy, optimizer, scheduler
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def vllm_check(cfg) -> dict:
    """generation.backend vllm (soar.sampling's in-process engine) on a small random Llama (head
    dim 64, which vLLM's attention kernels take) under full fine-tuning: each of engine start with
    a generate, a generate after an RLOO update (the weights loaded in place), after a promotion,
    of the reference, of a second engine in the process and of the first again, timed; an error
    is recorded, not raised."""
    from tokenizers import Tokenizer, models  # noqa: PLC0415  (transformers' own dependency)
    from transformers import LlamaConfig, PreTrainedTokenizerFast  # noqa: PLC0415

    from soar import sampling  # noqa: PLC0415

    out: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-vllm-") as folder:
            vocab = 16_384  # above prompt_ids' token ids
            LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                        tie_word_embeddings=True, dtype="bfloat16").save_pretrained(folder)
            words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
            tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", pad_token="t0", eos_token="t2")
            small = budget.override(cfg, model={"name": f"random:{folder}"},
                                    student={"adapter": "full", "gradient_checkpointing": False})
            policy = load_policy(small.model, small.student)
            policy.tokenizer = tok
            optimizer, scheduler = make_optimizer(policy, lr=1e-5, warmup_steps=0, total_steps=2)
            ids = prompt_ids(4, 32, torch.Generator().manual_seed(2))

            def timed(name, model):
                clock = time.perf_counter()
                rows = generate(model, tok, ids, n=4, max_new_tokens=32, seed=0, backend="vllm", progress=False)
                out[name] = {"seconds": time.perf_counter() - clock,
                             "tokens": sum(len(s.completion_ids) for row in rows for s in row)}

            timed("engine start and generate", policy.model)
            samples = [Sample(0, j, tuple(p), tuple(range(10, 42)), "", False) for j, p in enumerate(ids)]
            update(policy, optimizer, scheduler, samples, torch.tensor([1.0, -1.0, 0.5, -0.5]), kl_coef=0.001,
                   max_grad_norm=1.0)
            timed("generate after an update", policy.model)
            policy.merge(policy.state())
            timed("generate after a promotion", policy.model)
            with policy.reference() as reference:
                timed("generate of the reference", reference)
            other = load_policy(small.model, small.student)  # a second engine, as teacher and student have
            timed("second engine start and generate", other.model)
            timed("first engine after the second started", policy.model)
            out["engines"] = len(sampling._ENGINES)
    except Exception:  # noqa: BLE001  (the first run on real vLLM: what failed is the result)
        out["error"] = traceback.format_exc()[-2000:]
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
    parser.add_argument("--tiny", action="store_true", help="a toy model at toy sizes, in seconds (a smoke run)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda (--tiny: cpu); --tiny --device cuda is the GPU smoke run")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default: results/benchmarks/gpu.json; --tiny: a temp file)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device == "cpu" and not args.tiny:
        raise SystemExit("gpu_check: the paper-shape check measures a GPU; --tiny runs a toy model on the CPU")
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). It measures a GPU: "
                         "run it on one, or pass --tiny for the CPU smoke run of the same code path.")
    start = time.perf_counter()
    deadline = start + DEADLINE_S
    cfg = config.load("params.yaml", {"profile": "paper", "model": {"name": TINY_MODEL if args.tiny else MODEL,
                                                                     "device": device},
                                      **(TINY if args.tiny else {})})
    capacity = torch.cuda.get_device_properties(0).total_memory if cuda else budget.host_memory()
    prompts = TINY_PROMPTS if args.tiny else PROMPTS
    # one role at a time on this GPU: the plan of two such GPUs, teacher and student apart
    fitted = budget.fitting(cfg, [capacity] * 2, prompt=prompts["student"])
    if fitted is None:
        raise SystemExit(f"gpu_check: a paper-profile role does not fit {capacity / GiB:.0f} GiB with any knob of the "
                         "memory plan:\n" + budget.memory_plan(cfg, [capacity], prompt=prompts["student"]).summary())
    cfg, _, knobs = fitted
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-")) / "gpu_tiny.json" if args.tiny
                       else paths.BENCHMARKS / "gpu.json")
    result = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "device": device, "gpu": torch.cuda.get_device_name(0) if cuda else None,
              "memory_gib": capacity / GiB, "tiny": args.tiny, "model": cfg.model.name,
              "parameters": budget.architecture(cfg.model.name).params,
              "versions": {m.__name__: m.__version__ for m in map(__import__, ("torch", "transformers", "peft"))},
              "peak_measure": "torch.cuda.max_memory_allocated" if cuda else "peak RSS of the process",
              "knobs": knobs, "caps_s": CAPS_S, "prompt_tokens": prompts, "complete": False}

    def save(role=None, part=None):
        if role is not None:
            result[role] = part
        result["wall_s"] = time.perf_counter() - start
        data.write_json(out, result)

    for role in ("student", "teacher"):
        save(role, role_check(cfg, role, prompts[role], deadline, cuda, lambda part, role=role: save(role, part)))
        print(f"gpu_check: {role} {json.dumps(result[role])}", flush=True)
    if not cuda:
        result["vllm"] = {"skipped": "no GPU"}
    elif importlib.util.find_spec("vllm") is None:
        result["vllm"] = {"skipped": "vllm is not installed (requirements-gpu.txt)"}
    elif time.perf_counter() + CAPS_S["vllm"] > deadline:
        result["vllm"] = {"skipped": "time"}
    else:
        result["vllm"] = vllm_check(cfg)
    print(f"gpu_check: vllm {json.dumps(result['vllm'])}", flush=True)
    result["projection"] = projection(cfg, capacity, prompts, result["student"], result["teacher"])
    result["complete"] = True
    save()
    p = result["projection"]
    print(f"gpu_check: {result['gpu'] or 'cpu'} in {result['wall_s']:.0f} s; knobs: {', '.join(knobs) or 'none'}; "
          + (f"{p['gpu_hours_per_outer_step']:.2f} GPU-hours per outer step, {p['gpu_hours_per_run']:,.0f} per run"
             if p else "no projection (a phase was skipped)") + f" -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
