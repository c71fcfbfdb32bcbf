"""Batched students: the inner loops of one teacher step with their students trained one after
another (parallel.batch_students 1) vs all at once on one base (mixed-adapter batches), same
process, same seeds, in the same run.

The students are those of one tiny outer step with r students per dataset: 2 teacher datasets
(the first two of results/soar/grounded/seed0 step 0, or GSM8K problems before that stage has
run) x r, each trained for the profile's inner steps and scored greedily on Q_R. Reports wall
time per mode split into training and Q_R scoring, the speedup, and whether the gains (hence
the teacher's rewards) are identical. Writes results/benchmarks/batched.json.
    python benchmarks/bench_batched.py [--profile tiny] [--r 2]
"""

import argparse
import platform
import resource
import time
from datetime import date

import torch

from soar import config, data, grading, paths
from soar.parallel import Worker
from soar.policy import load_policy
from soar.teacher import InnerJob, inner_loops, q_r_score, reward_pool


def teacher_datasets(n: int) -> tuple[list[list[data.Problem]], str]:
    first = paths.RESULTS / "soar" / "grounded" / "seed0" / "samples" / "step_000000.jsonl"
    if first.exists():
        rows = data.read_jsonl(first)[:2]
        return ([[data.Problem(id=f"x{k}/{i}", problem=q, answer=a) for i, (q, a) in enumerate(zip(r["questions"], r["answers"]))]
                 for k, r in enumerate(rows)], "teacher datasets 0 and 1 of soar/grounded/seed0 step 0")
    pool = data.load_benchmark("gsm8k_test", limit=2 * n, seed=0)
    return [pool[:n], pool[n:]], "gsm8k_test problems (no soar run yet)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--r", type=int, default=2, help="students per dataset (2 datasets)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    over = {"profile": args.profile, "soar": {"r": args.r}}
    students = 2 * args.r
    cfgs = {1: config.load("params.yaml", over),
            students: config.load("params.yaml", {**over, "parallel": {"batch_students": students}})}
    cfg = cfgs[1]
    datasets, source = teacher_datasets(cfg.soar.n)
    pool = reward_pool(cfg)
    q_r = data.sample_problems(pool, min(cfg.soar.q_r, len(pool)), seed=(cfg.seed, 0, 1))  # step 0's Q_R
    student = load_policy(cfg.model, cfg.student)
    runs = {}
    with grading.Grader(timeout=cfg.grading.timeout_s, workers=cfg.grading.workers) as grader:
        with student.reference() as base:
            baseline = q_r_score(base, student.tokenizer, q_r, cfg, grader=grader)
        jobs = [InnerJob(X, q_r, baseline, 0, seed, j) for seed, X in enumerate(datasets) for j in range(args.r)]
        for size, c in cfgs.items():
            start = time.perf_counter()
            results = inner_loops(Worker(student, grader, c), jobs)
            runs[size] = {"wall_s": time.perf_counter() - start, "train_s": sum(r["train_s"] for r in results),
                          "q_r_s": sum(r["eval_s"] for r in results), "gains": [r["gain"] for r in results]}
            print(f"batch_students {size}: {runs[size]['wall_s']:.1f} s")
    s = cfg.student
    result = {
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(), "threads": 2,
        "device": "cpu", "profile": args.profile, "datasets": source,
        "sizes": {"students": students, "datasets": 2, "r": args.r, "inner_steps": s.steps,
                  "questions_per_step": s.questions_per_step, "samples_per_question": s.samples_per_question,
                  "max_new_tokens": s.max_new_tokens, "q_r": len(q_r), "lora_r": s.lora_r},
        "one_after_another": {k: v for k, v in runs[1].items() if k != "gains"},
        "batched": {k: v for k, v in runs[students].items() if k != "gains"},
        "speedup": runs[1]["wall_s"] / runs[students]["wall_s"],
        "identical_gains": runs[1]["gains"] == runs[students]["gains"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = paths.BENCHMARKS / "batched.json"
    data.write_json(out, result)
    print(f"{students} students: one after another {runs[1]['wall_s']:.1f} s, batched {runs[students]['wall_s']:.1f} s "
          f"({result['speedup']:.2f}x); identical gains: {result['identical_gains']} -> {out}")


if __name__ == "__main__":
    main()
