"""Wall time of one SOAR outer step by phase, and peak memory (tiny profile on CPU by default).

Runs `SoarRun.meta_step` on the hard train split written by the fail_at_k stage (or, before that
stage has run, a seeded GSM8K sample) with the resolved params, and reports each phase's seconds
and its share of the step, against the 10-minute budget of the tiny profile.
Writes results/benchmarks/outer_step.json.
    python benchmarks/bench_outer_step.py [--profile tiny] [--variant grounded] [--steps 1]
"""

import argparse
import platform
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from soar import config, data, grading, models, paths
from soar.policy import Policy
from soar.teacher import SoarRun

BUDGET_S = 600  # the tiny profile's target for one outer step on 2 cores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--variant", default="grounded")
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = config.load("params.yaml", {"profile": args.profile}, variant=args.variant)
    splits = [paths.hard_split(p, "train") for p in cfg.fail_at_k.pools]
    if all(s.exists() for s in splits):
        d_train, source = [p for s in splits for p in data.load_problems(s)], "hard train split"
    else:
        d_train, source = data.load_benchmark("gsm8k_test", limit=64, seed=0), "gsm8k_test sample (no hard split yet)"

    def policy(role):
        return Policy(*models.load_model(cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device),
                      adapter=role.adapter, lora_r=role.lora_r, lora_alpha=role.lora_alpha)

    rows = []
    with grading.Grader(timeout=cfg.grading.timeout_s, workers=cfg.grading.workers) as grader, \
            tempfile.TemporaryDirectory() as tmp:
        run = SoarRun(policy(cfg.teacher), policy(cfg.student), d_train, cfg, grader=grader,
                      checkpoint=Path(tmp) / "state.pt", fingerprint=config.fingerprint(cfg))
        for _ in range(args.steps):
            start = time.perf_counter()
            row, _ = run.meta_step()
            row["time/step_s"] = time.perf_counter() - start
            rows.append(row)
    step_s = sum(r["time/step_s"] for r in rows) / len(rows)
    phases = {k.removeprefix("time/").removesuffix("_s"): sum(r[k] for r in rows) / len(rows)
              for k in rows[0] if k.startswith("time/") and k != "time/step_s"}
    result = {
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "profile": args.profile, "variant": args.variant, "d_train": source,
        "sizes": {"n": cfg.soar.n, "g": cfg.soar.group_size, "groups": cfg.soar.groups_per_step, "r": cfg.soar.r,
                  "q_r": cfg.soar.q_r, "inner_steps": cfg.student.steps,
                  "inner_batch": [cfg.student.questions_per_step, cfg.student.samples_per_question],
                  "teacher_tokens": cfg.teacher.max_new_tokens, "student_tokens": cfg.student.max_new_tokens},
        "steps_measured": len(rows),
        "step_s": step_s,
        "phases_s": phases,
        "phase_share": {k: v / step_s for k, v in phases.items()},
        "step_over_budget": step_s / BUDGET_S,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rejection_rate": sum(r["teacher/rejection_rate"] for r in rows) / len(rows),
    }
    out = paths.BENCHMARKS / "outer_step.json"
    data.write_json(out, result)
    print(f"one outer step: {step_s:.0f} s ({result['step_over_budget']:.2f} of the {BUDGET_S} s budget); "
          + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + f"; peak RSS {result['peak_rss_mb']:.0f} MB -> {out}")


if __name__ == "__main__":
    main()
