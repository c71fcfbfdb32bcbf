"""One SOAR outer step with the inner loops in process vs on a local Ray (2 CPU actors), same seed.

The target (scale-out issue): Ray with 2 local workers no slower than in-process on this 2-core
machine for the tiny profile. Both runs start from the same state and seed; the result also
records whether their metric rows and datasets are identical (they must be). The Ray step
includes starting the actors (each loads its own student); `ray.startup_s` says how much of it.
Writes results/benchmarks/ray.json.
    python benchmarks/bench_ray.py [--profile tiny] [--workers 2]
"""

import argparse
import platform
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from soar import config, data, grading, models, parallel, paths
from soar.policy import Policy
from soar.teacher import SoarRun, reward_pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = config.load("params.yaml", {"profile": args.profile})
    d_train = reward_pool(cfg)

    def policy(role):
        return Policy(*models.load_model(cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device),
                      adapter=role.adapter, lora_r=role.lora_r, lora_alpha=role.lora_alpha)

    def one_step(executor, tmp):
        run = SoarRun(policy(cfg.teacher), policy(cfg.student), d_train, cfg, grader=grader,
                      checkpoint=Path(tmp) / "state.pt", fingerprint=config.fingerprint(cfg), executor=executor)
        start = time.perf_counter()
        row, samples = run.meta_step()
        return time.perf_counter() - start, row, samples

    with grading.Grader(timeout=cfg.grading.timeout_s, workers=cfg.grading.workers) as grader:
        with tempfile.TemporaryDirectory() as tmp:
            local_s, local_row, local_samples = one_step(parallel.InProcess(), tmp)
        ray_ex = parallel.RayExecutor(args.workers)
        try:  # the actors start inside the step (Ray itself, one student per actor): startup_s says how long
            with tempfile.TemporaryDirectory() as tmp:
                ray_s, ray_row, ray_samples = one_step(ray_ex, tmp)
        finally:
            ray_ex.close()

    def phases(row):
        return {k.removeprefix("time/").removesuffix("_s"): v for k, v in row.items() if k.startswith("time/")}

    same = ({k: v for k, v in local_row.items() if not k.startswith("time/") and k != "wall_s"}
            == {k: v for k, v in ray_row.items() if not k.startswith("time/") and k != "wall_s"} and local_samples == ray_samples)
    result = {
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "driver_threads": torch.get_num_threads(), "profile": args.profile, "workers": args.workers,
        "inner_loops": cfg.soar.group_size * cfg.soar.groups_per_step * cfg.soar.r,
        "inprocess": {"step_s": local_s, "phases_s": phases(local_row)},
        "ray": {"step_s": ray_s, "phases_s": phases(ray_row), "startup_s": ray_ex.startup_s},
        "ray_over_inprocess": ray_s / local_s,
        "ray_over_inprocess_without_startup": (ray_s - ray_ex.startup_s) / local_s,
        "identical_results": same,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = paths.BENCHMARKS / "ray.json"
    data.write_json(out, result)
    print(f"outer step: in-process {local_s:.0f} s, Ray x{args.workers} {ray_s:.0f} s (startup {ray_ex.startup_s:.0f} s): "
          f"{result['ray_over_inprocess']:.2f}x the in-process time; identical results: {same} -> {out}")


if __name__ == "__main__":
    main()
