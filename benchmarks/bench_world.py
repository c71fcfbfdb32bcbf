"""RLOO steps per second of the addition world's student against the tiny profile's SmolLM2-135M
student, in the same run: each is `soar.student.train_student` (the SOAR inner loop) at its own
profile's shapes (questions x samples x tokens per step, adapter, micro-batch), on problems of its
own pool (the world's hard train split; a seeded GSM8K test sample for the 135M model, whose
hard split the default run does not build). Writes results/benchmarks/world.json.
    python benchmarks/bench_world.py [--world-steps 20] [--tiny-steps 2]
"""

import argparse
import platform
import time
from datetime import date

import torch

from soar import config, data, grading, paths
from soar.policy import load_policy
from soar.student import train_student


def steps_per_s(cfg, problems, steps: int, grader) -> dict:
    policy = load_policy(cfg.model, cfg.student)
    train_student(policy, problems, cfg.student, steps=1, seed=1, grader=grader, generation=cfg.generation)  # warm-up
    start = time.perf_counter()
    train_student(policy, problems, cfg.student, steps=steps, seed=0, grader=grader, generation=cfg.generation)
    wall = time.perf_counter() - start
    s = cfg.student
    return {"steps": steps, "wall_s": wall, "steps_per_s": steps / wall, "model": cfg.model.name,
            "shape": {"questions_per_step": s.questions_per_step, "samples_per_question": s.samples_per_question,
                      "max_new_tokens": s.max_new_tokens, "adapter": s.adapter, "micro_batch": s.micro_batch}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-steps", type=int, default=20)
    ap.add_argument("--tiny-steps", type=int, default=2)
    args = ap.parse_args()
    world, tiny = config.load(overrides={"profile": "addition"}), config.load(overrides={"profile": "tiny"})
    hard = data.load_problems(paths.hard_split(world.fail_at_k.pools[0], "train"))
    gsm8k = data.load_benchmark("gsm8k_test", limit=32, seed=0)
    with grading.Grader(timeout=world.grading.timeout_s, workers=world.grading.workers) as grader:
        result = {"world": steps_per_s(world, hard, args.world_steps, grader),
                  "tiny": steps_per_s(tiny, gsm8k, args.tiny_steps, grader)}
    result |= {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "device": "cpu",
               "speedup": result["world"]["steps_per_s"] / result["tiny"]["steps_per_s"]}
    out = paths.BENCHMARKS / "world.json"
    data.write_json(out, result)
    print(f"RLOO steps/s: world {result['world']['steps_per_s']:.2f}, SmolLM2-135M {result['tiny']['steps_per_s']:.4f} "
          f"({result['speedup']:.0f}x) -> {out}")


if __name__ == "__main__":
    main()
