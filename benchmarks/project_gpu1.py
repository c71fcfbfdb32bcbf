"""GPU-hours of the one-GPU profile (profiles/gpu1.yaml), projected as the paper profile's are
(benchmarks/project_paper.py), with no model loaded: the work of each stage counted from the
resolved gpu1 config, at the H100 roofline for Llama-3.2-1B's shape (its shipped config.json),
each part at its own decode batch (`soar.budget.projection`), scaled by the two shares of the
roofline that project_paper.py fits to the paper's reported costs. Prompt lengths are the paper
projection's: the same MATH and teacher prompts, counted there.
Evaluated problem counts are upper bounds: every problem fail@k draws is taken to be hard.
Also the memory plan on one H100 80GB, and the whole `dvc exp run -S profile=gpu1`: the SOAR
matrix of params.yaml (`runs`) and the tau x n sweep cells besides the one run.
Reads results/benchmarks/paper_projection.json (run project_paper.py first); writes
results/benchmarks/gpu1_projection.json.
    python benchmarks/project_gpu1.py
"""

from datetime import date

from project_paper import H100, H100_MEMORY

from soar import budget, config, data, paths

PROFILE = "gpu1"
BUDGET_HOURS = 8  # what the profile is sized for: one SOAR run and its fresh students on one GPU


def gpu1_projection(paper: dict) -> dict:
    """The gpu1 profile's projection; `paper`: the paper projection (its prompts and fitted shares)."""
    cfg = config.load(paths.ROOT / "params.yaml", {"profile": PROFILE})
    prompt, teacher_prompt = paper["prompt_tokens"], paper["teacher_prompt_tokens"]
    efficiency = list(paper["efficiency"].values())
    sizes = {name: len(data.load_benchmark(name)) for name in (*cfg.fail_at_k.pools, *cfg.evaluate.extra)}
    tests = budget.most_test_problems(cfg, sizes)

    def project(c) -> dict:
        return budget.projection(c, H100, prompt=prompt, teacher_prompt=teacher_prompt, pool_sizes=sizes,
                                 test_problems=tests, efficiency=efficiency)

    stages = project(cfg)
    plan = budget.memory_plan(cfg, [H100_MEMORY])  # as the notebooks plan it (prompts at their padded length)
    # `dvc exp run -S profile=gpu1` runs every SOAR run of params.yaml's matrix and the sweep's cells
    runs = {v: project(config.load(paths.ROOT / "params.yaml", {"profile": PROFILE}, variant=v))["hours"]["soar_run"]
            for v in cfg.runs.variants}
    cells = [project(config.load(paths.ROOT / "params.yaml", {"profile": PROFILE, "soar": {"tau": tau, "n": n}},
                                 variant="sweep"))["hours"]["soar_run"] for tau in cfg.sweep.taus for n in cfg.sweep.ns]
    h, shares = stages["hours"], range(len(efficiency))
    # with -S 'runs.variants=[grounded]' -S 'runs.seeds=[0]': the one run the gpu1 methods read
    one = [h["with_fail_at_k"][i] + sum(c[i] for c in cells) for i in shares]
    matrix = [one[i] - h["soar_run"][i] + len(cfg.runs.seeds) * sum(r[i] for r in runs.values()) for i in shares]
    return {"date": date.today().isoformat(), "profile": PROFILE, "model": cfg.model.name,
            "hardware": {"name": H100.name, "flops": H100.flops, "bandwidth": H100.bandwidth},
            "gpu_memory_gib": H100_MEMORY / budget.GiB, "budget_hours": BUDGET_HOURS,
            "prompt_tokens": prompt, "teacher_prompt_tokens": teacher_prompt, "pool_sizes": sizes,
            "test_problems": tests, "efficiency": paper["efficiency"], "projection": stages,
            "memory_plan": {"fits": plan.fits, "placement": plan.placement,
                            "need_gib": [d.need / budget.GiB for d in plan.devices],
                            "usable_gib": budget.USABLE * H100_MEMORY / budget.GiB},
            "dvc_exp_run": {"soar_runs": {v: len(cfg.runs.seeds) for v in runs}, "sweep_cells": len(cells),
                            "soar_run_hours": runs, "sweep_cell_hours": cells, "hours": matrix,
                            "grounded_seed0_hours": one}}


def main() -> None:
    paper = data.read_json(paths.BENCHMARKS / "paper_projection.json")["paper"]
    result = gpu1_projection(paper)
    out = paths.BENCHMARKS / "gpu1_projection.json"
    data.write_json(out, result)
    h, plan, run = result["projection"]["hours"], result["memory_plan"], result["dvc_exp_run"]
    span = lambda k: f"{h[k][0]:.1f}-{h[k][1]:.1f}"  # noqa: E731
    print(f"gpu1 profile, projected H100-hours: fail@k {span('fail_at_k')}, one SOAR run {span('soar_run')}, "
          f"retrain {span('retrain')}, evaluate {span('evaluate')}; one run + its fresh students + evaluate "
          f"{span('one_run')} ({span('with_fail_at_k')} with fail@k); dvc exp run with params.yaml's SOAR matrix "
          f"{run['hours'][0]:.1f}-{run['hours'][1]:.1f}, with its grounded seed-0 run alone "
          f"{run['grounded_seed0_hours'][0]:.1f}-{run['grounded_seed0_hours'][1]:.1f}. Memory plan on one "
          f"{result['gpu_memory_gib']:.0f} GiB GPU: {plan['placement']}, needs {plan['need_gib'][0]:.1f} of "
          f"{plan['usable_gib']:.0f} GiB usable -> {'fits' if plan['fits'] else 'DOES NOT FIT'}; -> {out}")


if __name__ == "__main__":
    main()
