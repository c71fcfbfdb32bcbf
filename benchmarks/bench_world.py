"""The laptop world's inner loop at the machine's limit (the SOAR stage's cost: g x B x r students per
outer step). In one run, on this machine's 2 cores:
- the same run's GEMM peak, fp32 and bf16, and the achieved GFLOP/s of one RLOO update (FLOPs
  counted by torch's FlopCounterMode, not estimated);
- where an inner loop's time goes (sampling, reward, update, Q_R scoring), in-process;
- K = 1, 4, 8 inner loops of one teacher step (16 questions each, Q_R of 128), the old path
  (in-process on 2 threads, math-verify's Grader) against the new one (the world's exact grader,
  parallel.backend processes: 2 workers of one thread), and the batched one (the same 2 workers,
  each training its share of the K students at once as one soar.stacked.Students), in fp32 and
  with bf16 matmuls (parallel.batch_dtype), per student; with the gains of all (the same students,
  up to float round-off: fp32's or bf16's);
- in one process on ONE thread, K inner loops one after another against K batched full students
  (fp32 and bf16), with the batched update's GFLOP/s against the same run's 1-thread GEMM peak of
  its dtype and against its own shapes' peak, and a profile of where its time goes (GEMMs,
  attention, the rest);
- one fresh student (the retrain stage's sizes) alone in-process against two at once on the
  worker processes, per student;
- one inner loop with the student in bf16 (fp32 masters), against fp32.
Writes results/benchmarks/world.json.
    python benchmarks/bench_world.py [--ks 1 4 8]
`--batched-only`: the 1-thread comparison alone, merged into world.json (`batched_full_students`).
"""

import argparse
import platform
import time
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode

from soar import addition, config, data, grading, parallel, paths
from soar.data import seed_from
from soar.policy import load_policy, make_optimizer, update
from soar.sampling import generate
from soar.student import train_student
from soar.teacher import InnerJob, inner_loops


def gemm_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def datasets(k: int) -> tuple[list[list[data.Problem]], list[data.Problem]]:
    """k teacher-sized datasets (16 train-pool questions of levels 2-4) and a Q_R of 128."""
    pool = [p for p in addition.pool("addition_train") if p.metadata["level"] >= 2]
    return [pool[16 * i : 16 * (i + 1)] for i in range(k)], pool[-128:]


def update_rate(cfg) -> dict:
    """One RLOO update of an inner step's 64 completions: FLOPs counted, seconds timed (best of 5)."""
    policy = load_policy(cfg.model, cfg.student)
    questions, _ = datasets(1)
    prompts = [addition.student_prompt_parts()[0] + q.problem + addition.student_prompt_parts()[1]
               for q in questions[0][:8]]
    samples = [s for row in generate(policy.model, policy.tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                                     n=8, max_new_tokens=cfg.student.max_new_tokens, seed=0, progress=False) for s in row]
    optimizer, scheduler = make_optimizer(policy, lr=0.0, warmup_steps=0, total_steps=100)
    advantages = torch.linspace(-1, 1, len(samples))

    def one():
        update(policy, optimizer, scheduler, samples, advantages, kl_coef=cfg.student.kl_coef,
               max_grad_norm=1.0, micro_batch=cfg.student.micro_batch)

    one()
    with FlopCounterMode(display=False) as counter:
        one()
    best = min(_timed(one) for _ in range(5))
    return {"flops": counter.get_total_flops(), "seconds": best, "gflops": counter.get_total_flops() / best / 1e9,
            "completions": len(samples), "tokens": sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def breakdown(cfg, grader) -> dict:
    """Seconds of one inner loop (8 RLOO steps) in each part, in-process on 2 threads."""
    import soar.student as student

    parts = {"sampling": 0.0, "reward": 0.0, "update": 0.0}
    originals = (student.generate, student.grading.student_rewards, student.update)

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            parts[name] += time.perf_counter() - start
            return out
        return wrapper

    student.generate, student.update = timed("sampling", originals[0]), timed("update", originals[2])
    student.grading.student_rewards = timed("reward", originals[1])
    try:
        policy, (sets, q_r) = load_policy(cfg.model, cfg.student), datasets(1)
        start = time.perf_counter()
        train_student(policy, sets[0], cfg.student, steps=cfg.student.steps, seed=0, grader=grader,
                      generation=cfg.generation)
        total = time.perf_counter() - start
    finally:
        student.generate, student.grading.student_rewards, student.update = originals
    parts["other"] = total - sum(parts.values())
    return {"total_s": total, "parts_s": parts, "shares": {k: v / total for k, v in parts.items()}}


def inner_loops_per_student(cfg, k: int, executor, grader, extra_steps: int = 0) -> dict:
    """k inner loops (with extra_steps more RLOO steps each) on `executor`: seconds per student."""
    sets, q_r = datasets(k)
    jobs = [InnerJob(X, q_r, 0.0, extra_steps, seed_from(7, i), 0) for i, X in enumerate(sets)]
    local = parallel.Worker(load_policy(cfg.model, cfg.student) if isinstance(executor, parallel.InProcess) else None,
                            grader, cfg)
    executor.map(inner_loops, [jobs[:1]] * executor.slots, local=local)  # warm: workers started, first call paid
    size = -(-len(jobs) // executor.slots)
    start = time.perf_counter()
    shares = executor.map(inner_loops, [jobs[i : i + size] for i in range(0, len(jobs), size)], local=local)
    wall = time.perf_counter() - start
    return {"k": k, "wall_s": wall, "per_student_s": wall / k, "gains": [r["gain"] for s in shares for r in s]}


def shape_peak(model_cfg, k: int, tokens: int, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of the batched update's own matmuls (K students' bmm of `tokens` rows each through
    every linear layer: q, k, v, o, gate, up, down and the tied head), forward shapes, on this
    thread: the rate matmuls of these widths reach at best, which a 1024-wide GEMM overstates."""
    h, i, v = model_cfg.hidden_size, model_cfg.intermediate_size, model_cfg.vocab_size
    shapes = [(h, h)] * 4 + [(h, i)] * 2 + [(i, h), (h, v)]  # (in, out) per linear layer
    xs = [(torch.randn(k, tokens, a, dtype=dtype), torch.randn(k, a, b, dtype=dtype)) for a, b in shapes]
    flops = sum(2 * k * tokens * a * b for a, b in shapes) * repeats

    def run():
        for _ in range(repeats):
            for x, w in xs:
                torch.bmm(x, w)

    run()
    return flops / min(_timed(run) for _ in range(3)) / 1e9


GEMM_OPS = ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm", "aten::matmul", "aten::linear")
ATTENTION = ("scaled_dot_product", "flash_attention")


def update_profile(fn, flops: float, peak: float) -> dict:
    """Where one update's time goes, by torch.profiler's self CPU time per operator: GEMMs, attention
    (SDPA forward and backward) and the rest (norms, RoPE, activations, casts, the optimizer,
    autograd's bookkeeping), with the largest of the rest; and the rate the update would reach if
    everything but its GEMMs took no time (its counted FLOPs over its GEMMs' time), as a share of
    the GEMM peak: what cutting the non-GEMM work alone could buy. The profiler slows small
    operators more than large ones, so the non-GEMM share is an upper bound."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(ops.values())
    gemm = sum(t for k, t in ops.items() if k in GEMM_OPS)
    attention = sum(t for k, t in ops.items() if any(a in k for a in ATTENTION))
    rest = sorted(((t, k) for k, t in ops.items() if k not in GEMM_OPS and not any(a in k for a in ATTENTION)),
                  reverse=True)
    return {"profiled_s": total, "gemm_share": gemm / total, "attention_share": attention / total,
            "other_share": 1 - (gemm + attention) / total,
            "top_other": [{"op": k, "share": t / total} for t, k in rest[:6]],
            "gemm_only_share_of_peak": flops / gemm / 1e9 / peak if gemm else None}


def batched_full_students(ks) -> dict:
    """One thread, one process: K inner loops one after another against K batched full students
    (the same jobs, gains compared), and the batched update's counted FLOPs per second."""
    from soar import stacked
    from soar.prompts import student_messages

    torch.set_num_threads(1)
    exact = addition.ExactGrader()
    peaks = {"float32": gemm_gflops(torch.float32), "bfloat16": gemm_gflops(torch.bfloat16)}
    out: dict = {"threads": 1, "gemm_peak_gflops_float32": peaks["float32"], "gemm_peak_gflops_bfloat16": peaks["bfloat16"],
                 "k": {}}
    for k in ks:
        configs = {"one_at_a_time": config.load(overrides={"profile": "addition", "parallel": {"batch_students": 1}})}
        for name, dtype in (("batched", "float32"), ("batched_bf16", "bfloat16")):
            configs[name] = config.load(overrides={"profile": "addition",
                                                   "parallel": {"batch_students": k, "batch_dtype": dtype}})
        sets, q_r = datasets(k)
        jobs = [InnerJob(X, q_r, 0.0, 0, seed_from(7, i), 0) for i, X in enumerate(sets)]
        student = load_policy(configs["batched"].model, configs["batched"].student)
        row = {}
        for name, c in configs.items():
            inner_loops(parallel.Worker(student, exact, c), jobs[:1])  # warm
            start = time.perf_counter()
            results = inner_loops(parallel.Worker(student, exact, c), jobs)
            row[name] = {"per_student_s": (time.perf_counter() - start) / k, "gains": [r["gain"] for r in results]}
        row["speedup"] = row["one_at_a_time"]["per_student_s"] / row["batched"]["per_student_s"]
        row["speedup_bf16"] = row["one_at_a_time"]["per_student_s"] / row["batched_bf16"]["per_student_s"]
        row["same_gains"] = row["one_at_a_time"]["gains"] == row["batched"]["gains"]
        row["max_gain_difference_bf16"] = max(abs(a - b) for a, b in zip(row["one_at_a_time"]["gains"],
                                                                         row["batched_bf16"]["gains"]))
        # the batched update of one inner step (k students x 64 completions): FLOPs counted, time best of 3
        for dtype, key in ((torch.float32, "update"), (torch.bfloat16, "update_bf16")):
            with student.reference() as base:
                students = stacked.Students(base, k, dtype=dtype)
            prompts = [student_messages(q.problem) for X in sets for q in X[:8]]  # step 0's sizes: 8 questions each
            samples = generate(students, student.tokenizer, prompts, n=8, max_new_tokens=configs["batched"].student.max_new_tokens,
                               seed=0, adapters=[i // 8 for i in range(len(prompts))], progress=False)
            own = [[s for row_ in samples[8 * i : 8 * (i + 1)] for s in row_] for i in range(k)]
            optimizer, scheduler = make_optimizer(students, lr=0.0, warmup_steps=0, total_steps=100)
            advantages = [torch.linspace(-1, 1, 64)] * k

            def one():
                students.update(optimizer, scheduler, own, advantages, kl_coef=0.0, max_grad_norm=1.0)

            one()
            with FlopCounterMode(display=False) as counter:
                one()
            best = min(_timed(one) for _ in range(3))
            tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in own[0])  # one student's rows
            peak, name = shape_peak(base.config, k, tokens, dtype=dtype), str(dtype).removeprefix("torch.")
            rate = counter.get_total_flops() / best / 1e9
            row[key] = {"flops": counter.get_total_flops(), "seconds": best, "gflops": rate,
                        f"share_of_{name}_peak": rate / peaks[name], "shape_peak_gflops": peak,
                        "share_of_shape_peak": rate / peak,
                        "profile": update_profile(one, counter.get_total_flops(), peaks[name])}
        out["k"][k] = row
        print(f"K={k}: one at a time {row['one_at_a_time']['per_student_s']:.2f} s/student, batched fp32 "
              f"{row['batched']['per_student_s']:.2f} ({row['speedup']:.2f}x, same gains: {row['same_gains']}), bf16 "
              f"{row['batched_bf16']['per_student_s']:.2f} ({row['speedup_bf16']:.2f}x, gains within "
              f"{row['max_gain_difference_bf16']:.3f}); update fp32 {row['update']['gflops']:.0f} GFLOP/s "
              f"({row['update']['share_of_shape_peak']:.0%} of its shapes' peak), bf16 {row['update_bf16']['gflops']:.0f} "
              f"({row['update_bf16']['share_of_shape_peak']:.0%})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--batched-only", action="store_true",
                    help="only the 1-thread one-at-a-time vs batched full students comparison (merged into world.json)")
    args = ap.parse_args()
    if args.batched_only:
        out = paths.BENCHMARKS / "world.json"
        result = data.read_json(out) if out.exists() else {}
        result["batched_full_students"] = {"date": date.today().isoformat(), **batched_full_students(args.ks)}
        data.write_json(out, result)
        return
    torch.set_num_threads(2)
    cfg = config.load(overrides={"profile": "addition", "parallel": {"batch_students": 1}})  # the unbatched paths
    result = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": 2,
              "gemm_peak_gflops": {"float32": gemm_gflops(torch.float32), "bfloat16": gemm_gflops(torch.bfloat16)},
              "update": update_rate(cfg)}
    result["update"]["share_of_fp32_peak"] = result["update"]["gflops"] / result["gemm_peak_gflops"]["float32"]
    with grading.Grader(timeout=cfg.grading.timeout_s, workers=1) as math_verify:
        result["breakdown"] = {"math_verify": breakdown(cfg, math_verify), "exact": breakdown(cfg, addition.ExactGrader())}
        old = {k: inner_loops_per_student(cfg, k, parallel.InProcess(), math_verify) for k in args.ks}
    new, batched, batched_bf16 = {}, {}, {}
    for k in args.ks:
        # processes: one student after another on each worker; batched: each worker's share of the
        # K students as one soar.stacked.Students (parallel.batch_students = its share), fp32 or bf16
        for out_, size, dtype in ((new, 1, "float32"), (batched, -(-k // 2), "float32"),
                                  (batched_bf16, -(-k // 2), "bfloat16")):
            ex = parallel.ProcessExecutor(2)
            try:
                c = config.load(overrides={"profile": "addition", "parallel": {"batch_students": size, "batch_dtype": dtype}})
                out_[k] = inner_loops_per_student(c, k, ex, None)
            finally:
                ex.close()
    result["inner_loops"] = {
        "old": old, "new": new, "batched": batched, "batched_bf16": batched_bf16,
        "speedup": {k: old[k]["per_student_s"] / new[k]["per_student_s"] for k in args.ks},
        "batched_speedup": {k: old[k]["per_student_s"] / batched[k]["per_student_s"] for k in args.ks},
        "batched_bf16_speedup": {k: old[k]["per_student_s"] / batched_bf16[k]["per_student_s"] for k in args.ks},
        "same_gains": {k: old[k]["gains"] == new[k]["gains"] == batched[k]["gains"] for k in args.ks},
        "max_gain_difference": {k: max(abs(a - b) for r in (new, batched) for a, b in zip(old[k]["gains"], r[k]["gains"]))
                                for k in args.ks},
        "max_gain_difference_bf16": {k: max(abs(a - b) for a, b in zip(old[k]["gains"], batched_bf16[k]["gains"]))
                                     for k in args.ks}}
    # a fresh student: the retrain stage's step count (the inner loop's sizes otherwise)
    extra = cfg.retrain.steps - cfg.student.steps
    with grading.Grader(timeout=cfg.grading.timeout_s, workers=1) as math_verify:
        alone = inner_loops_per_student(cfg, 1, parallel.InProcess(), math_verify, extra)
    ex = parallel.ProcessExecutor(2)
    try:
        two = inner_loops_per_student(cfg, 2, ex, None, extra)
    finally:
        ex.close()
    result["fresh_student"] = {"steps": cfg.retrain.steps, "alone_inprocess_s": alone["per_student_s"],
                               "two_on_processes_per_student_s": two["per_student_s"],
                               "speedup": alone["per_student_s"] / two["per_student_s"]}
    bf16 = config.load(overrides={"profile": "addition", "model": {"dtype": "bfloat16"}, "parallel": {"batch_students": 1}})
    exact = addition.ExactGrader()
    result["bf16"] = {"float32_s": breakdown(cfg, exact)["total_s"], "bfloat16_s": breakdown(bf16, exact)["total_s"]}
    result["bf16"]["bf16_over_fp32"] = result["bf16"]["bfloat16_s"] / result["bf16"]["float32_s"]
    result["batched_full_students"] = {"date": result["date"], **batched_full_students(args.ks)}
    out = paths.BENCHMARKS / "world.json"
    data.write_json(out, result)
    s, s16 = result["inner_loops"]["batched_speedup"], result["inner_loops"]["batched_bf16_speedup"]
    print(f"inner loop per student, batched on processes over old: fp32 {', '.join(f'K={k} {v:.2f}x' for k, v in s.items())}, "
          f"bf16 {', '.join(f'K={k} {v:.2f}x' for k, v in s16.items())}; update "
          f"{result['update']['gflops']:.0f} GFLOP/s of a {result['gemm_peak_gflops']['float32']:.0f} fp32 peak; "
          f"bf16 {result['bf16']['bf16_over_fp32']:.1f}x the fp32 time -> {out}")


if __name__ == "__main__":
    main()
