"""The README's and docs' numbers, rendered from results/ (never typed): `python -m soar.report`.

Each block is a markdown table built from one results file; `render` replaces the text between
`<!-- results:NAME -->` and `<!-- /results:NAME -->` in a page (README.md, docs/*.md). A missing results file renders
as a line saying which stage produces it, so the README never shows a stale or invented number.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from soar import paths


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _missing(path: Path, producer: str) -> str:
    return f"_Not produced yet: `{path}` comes from {producer}._"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fail_at_k(root: Path) -> str:
    path = paths.RESULTS / "fail_at_k" / "metrics.json"
    m = _load(root / path)
    if m is None:
        return _missing(path, "the fail_at_k stage")
    rows = [[pool, m["k"], p["problems"], p["hard"], f"{p['hard_fraction']:.0%}", f"{p['sample_accuracy']:.1%}",
             f"{p['boxed_fraction']:.1%}", f"{p['mean_completion_tokens']:.0f}"] for pool, p in m["pools"].items()]
    return _table(["pool", "k", "problems", "0/k (hard)", "hard share", "sample accuracy", "boxed answers",
                   "mean tokens"], rows)


def soar_runs(root: Path) -> str:
    runs = sorted((root / paths.RESULTS / "soar").glob("*/seed*/metrics.json"))
    if not runs:
        return _missing(paths.RESULTS / "soar", "the soar stage")
    rows = []
    for path in runs:
        m = json.loads(path.read_text())
        samples = [json.loads(line) for f in sorted((path.parent / "samples").glob("step_*.jsonl"))
                   for line in f.read_text().splitlines()]
        nonzero = sum(s["grounded"] != 0 for s in samples)
        log = path.parent / "metrics.jsonl"
        steps = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
        judged = [r for r in steps if "student/confirmation_gain" in r]  # soar.confirm: due, then judged
        promotions = (f"{m['promotions']} of {len(judged)} due" if judged else m["promotions"])
        rows.append([f"{path.parent.parent.name}/{path.parent.name}", m["outer_steps"],
                     f"{m['rejection_rate_mean']:.0%}", f"{nonzero} of {len(samples)}",
                     f"{m['reward_mean_all']:+.4f}", f"{m['reward_mean_best']:+.4f}", promotions,
                     f"{m['baseline_score_first']:.4f} → {m['baseline_score_last']:.4f}",
                     f"{m['seconds_per_step']:.0f}"])
    return _table(["run", "outer steps", "teacher rejection rate", "datasets with a nonzero grounded gain",
                   "mean reward", "best step reward", "promotions (confirmed of due)", "baseline Q_R score (first → last step)",
                   "s / outer step"], rows)


def sweep(root: Path) -> str:
    """The tau x n sensitivity runs (sweep stage), one row per grid cell that has run."""
    runs = sorted((root / paths.RESULTS / "sweep").glob("*/metrics.json"))
    if not runs:
        return _missing(paths.RESULTS / "sweep", "the sweep stage")
    rows = []
    for path in runs:
        m = json.loads(path.read_text())
        rows.append([path.parent.name, m["outer_steps"], f"{m['reward_mean_all']:+.4f}", m["promotions"],
                     ", ".join(map(str, m["promotion_steps"])) or "none", f"{m['rejection_rate_mean']:.0%}",
                     f"{m['seconds_per_step']:.0f}"])
    return _table(["cell", "outer steps", "mean teacher reward", "promotions", "promoted at step",
                   "teacher rejection rate", "s / outer step"], rows)


def benchmarks(root: Path) -> str:
    """One table row per benchmark file: what it measured, its result, its date and device."""
    rows = []

    def row(name: str, b: dict, text: str) -> None:
        threads = b["machine"].get("torch_threads", 2) if isinstance(b.get("machine"), dict) else b.get("threads", 2)
        rows.append(f"| {name} | {text} | {b['date']} | {b.get('device', 'cpu').upper()}, {threads} threads |")

    gen = _load(root / paths.BENCHMARKS / "generation.json")
    if gen:
        row("Generation", gen, f"`soar.sampling`'s decode loop {gen['soar_generate']['tokens_per_s']:.0f} tokens/s vs the "
            f"loop it replaced (host sampling, a KV cache grown by concatenation) "
            f"{gen['baseline_loop']['tokens_per_s']:.0f} tokens/s in the same run: **{gen['speedup']:.2f}x** "
            f"(batch {gen['setup']['batch']} = {gen['setup']['prompts']} prompts x {gen['setup']['n']} samples, "
            f"{gen['setup']['tokens']} tokens, V = {gen['setup']['vocab']:,})")
    gr = _load(root / paths.BENCHMARKS / "grading.json")
    if gr:
        row("Grading", gr, f"{gr['grade_many']['answers_per_s']:.0f} answers/s batched vs "
            f"{gr['is_correct_one_at_a_time']['answers_per_s']:.0f} one at a time "
            f"({gr['grade_many']['answers_per_s'] / gr['is_correct_one_at_a_time']['answers_per_s']:.2f}x; "
            f"{gr['grade_many']['fast_path_share']:.0%} settled by the exact fast path; worker pool cold start "
            f"{gr['pool_cold_start_s']:.2f} s)")
    st = _load(root / paths.BENCHMARKS / "outer_step.json")
    if st:
        phases = ", ".join(f"{k} {v:.0f} s ({st['phase_share'][k]:.0%})" for k, v in st["phases_s"].items())
        row("SOAR outer step", st, f"{st['profile']} profile: **{st['step_s']:.0f} s**, {st['step_over_budget']:.0%} of the "
            f"10-minute budget ({phases}); peak RSS {st['peak_rss_mb'] / 1024:.1f} GiB; teacher rejection rate "
            f"{st['rejection_rate']:.0%}")
    il = _load(root / paths.BENCHMARKS / "inner_loop.json")
    if il:
        z = il["sizes"]
        bound = "" if il["trl_finished"] else "more than "
        stopped = "" if il["trl_finished"] else ", stopped unfinished at the time limit"
        row("Student inner loop", il, f"{z['inner_steps']} RLOO steps of {z['questions_per_step']} questions x "
            f"{z['samples_per_question']} samples x {z['max_new_tokens']} tokens (LoRA r = {z['lora_r']}, micro-batch "
            f"{z['micro_batch']}), same run: ours **{il['step_s']['ours']:.0f} s** per step, TRL `RLOOTrainer` "
            f"{bound}{il['step_s']['trl']:.0f} s per step{stopped} (TRL / ours {bound}{il['trl_over_ours']:.1f}x)")
    bs = _load(root / paths.BENCHMARKS / "batched.json")
    if bs:
        z = bs["sizes"]
        row("Batched students", bs, f"{z['students']} LoRA students ({z['datasets']} datasets x r = {z['r']}), "
            f"{z['inner_steps']} RLOO steps of {z['questions_per_step']} x {z['samples_per_question']} x "
            f"{z['max_new_tokens']} tokens each, then greedy Q_R scoring: one after another "
            f"{bs['one_after_another']['wall_s']:.0f} s, all on one base **{bs['batched']['wall_s']:.0f} s** "
            f"(**{bs['speedup']:.2f}x**; training {bs['one_after_another']['train_s']:.0f} -> "
            f"{bs['batched']['train_s']:.0f} s, Q_R scoring {bs['one_after_another']['q_r_s']:.0f} -> "
            f"{bs['batched']['q_r_s']:.0f} s); identical gains: {'yes' if bs['identical_gains'] else 'NO'}")
    ry = _load(root / paths.BENCHMARKS / "ray.json")
    if ry:
        row("Ray executor", ry, f"one outer step ({ry['profile']} profile, {ry['inner_loops']} inner loops): in-process "
            f"**{ry['inprocess']['step_s']:.0f} s**, {ry['workers']} local Ray CPU actors **{ry['ray']['step_s']:.0f} s** "
            f"({ry['ray_over_inprocess']:.2f}x the in-process time, of which {ry['ray']['startup_s']:.0f} s starting "
            f"the actors; {ry['ray_over_inprocess_without_startup']:.2f}x without it); same metrics and datasets: "
            f"{'yes' if ry['identical_results'] else 'NO'}")
    wd = _load(root / paths.BENCHMARKS / "world.json")
    if wd:
        il, u, b = wd["inner_loops"], wd["update"], wd["breakdown"]["exact"]["shares"]
        speed = ", ".join(f"K = {k} {v:.2f}x" for k, v in il["speedup"].items())
        batched = ", ".join(f"K = {k} {v:.2f}x" for k, v in il.get("batched_speedup", {}).items())
        bf16 = ", ".join(f"K = {k} **{v:.2f}x**" for k, v in il.get("batched_bf16_speedup", {}).items())
        one = wd.get("batched_full_students", {}).get("k", {})

        def update(r: dict, dtype: str) -> str:
            text = (f"its update at {r['share_of_' + dtype + '_peak']:.0%} of the 1-thread {dtype} GEMM peak, "
                    f"{r['share_of_shape_peak']:.0%} of its own matmul shapes'")
            if (p := r.get("profile")) and p["gemm_only_share_of_peak"] is not None:  # where the rest of the time goes
                text += (f"; GEMMs {p['gemm_share']:.0%} of its profiled time, attention {p['attention_share']:.0%}, "
                         f"the rest {p['other_share']:.0%} (most: {', '.join(o['op'] for o in p['top_other'][:3])}); "
                         f"its GEMMs alone run at {p['gemm_only_share_of_peak']:.0%} of the peak")
            return text

        alone = ", ".join(f"K = {k} fp32 {r['speedup']:.2f}x ({update(r['update'], 'float32')}), bf16 "
                          f"{r['speedup_bf16']:.2f}x ({update(r['update_bf16'], 'bfloat16')})" for k, r in one.items())
        row("World inner loop", wd, f"per student, over in-process math-verify on 2 threads: the exact grader on 2 "
            f"worker processes {speed}; each worker's students batched as one stacked model (soar.stacked) in fp32 "
            f"{batched} (largest gain difference {max(il['max_gain_difference'].values()):.3f}), with bf16 matmuls "
            f"(parallel.batch_dtype, the default) {bf16} (largest gain difference "
            f"{max(il['max_gain_difference_bf16'].values()):.3f}); batched over one after another on one thread: "
            f"{alone}; a fresh student {wd['fresh_student']['speedup']:.2f}x; one student's update at "
            f"**{u['gflops']:.0f} GFLOP/s**, {u['share_of_fp32_peak']:.0%} of the same run's fp32 GEMM peak "
            f"({wd['gemm_peak_gflops']['float32']:.0f}; bf16 {wd['gemm_peak_gflops']['bfloat16']:.0f}); an inner loop is "
            f"{b['update']:.0%} update, {b['sampling']:.0%} sampling, {b['reward']:.0%} reward; one unbatched bf16 "
            f"student (model.dtype) takes {wd['bf16']['bf16_over_fp32']:.1f}x the fp32 time")
    mem = _load(root / paths.BENCHMARKS / "memory.json")
    if mem:
        def ratios(allocator):
            return ", ".join(f"{c['adapter']}{' + checkpointing' if c['gradient_checkpointing'] else ''} "
                             f"{c['plan_over_measured'][allocator]:.2f}" for c in mem["cases"])
        z = mem["sizes"]
        row("Memory plan", mem, f"`soar.budget`'s plan over the measured peak RSS of {z['steps']} RLOO updates of "
            f"{z['samples_per_step']} x ({z['prompt_tokens']} + {z['max_new_tokens']}) tokens on a random "
            f"{mem['model']['parameters'] / 1e6:.0f}M Llama (fp32): tensors only **{ratios('tensors_only')}**; with "
            f"glibc's default allocator (fragmentation) {ratios('glibc_default')}")
    if not rows:
        return _missing(paths.BENCHMARKS, "`make bench`")
    return "\n".join(["| Benchmark | Result | Date | Device |", "|---|---|---|---|", *rows])


# The comparisons the laptop world's part-2 issue names before its runs: meta-RL did the work if the
# grounded teacher's questions beat the untrained teacher's, the shuffled-reward control's and the
# intrinsic teacher's, and the promotion questions beat training on the hard problems alone.
CONTRASTS = (("grounded_t-curriculum", "base_t-curriculum"), ("grounded_t-curriculum", "shuffled_t-curriculum"),
             ("grounded_t-curriculum", "intrinsic_t-curriculum"), ("pq-curriculum", "hard_only"))


def _resampled(m: dict) -> str:
    """What the evaluate stage's bootstrap resamples (`soar.evaluation._means`)."""
    groups = (m.get("seed_groups") or {}).values()
    nested = len(set(groups)) < len(groups)
    return ("SOAR seeds, then the fresh seeds nested in each, then test problems" if nested
            else "seeds, then test problems")


def contrasts(m: dict) -> dict:
    """{benchmark: {(A, B): {k: {"diff", "ci"}}}}: A - B in pass@k for each pair of CONTRASTS whose
    models were both evaluated, from results/eval/metrics.json's per-seed per-problem scores with
    the evaluate stage's own paired two-level bootstrap (its n_boot and seed groups; the draws of
    vs_hard_only)."""
    from soar.evaluation import _ci, _groups, _means, _paired

    groups = m.get("seed_groups") and {int(s): g for s, g in m["seed_groups"].items()}
    out = {}
    for bench, table in m["benchmarks"].items():
        out[bench] = {}
        for a, b in CONTRASTS:
            if a in table and b in table:
                diffs = {}
                for k in m["ks"]:
                    x = _paired(table, (a, b), k)
                    means = _means(x, m["n_boot"], 0, _groups(table[a]["seeds"], groups))
                    diffs[str(k)] = {"diff": float(x[0].mean() - x[1].mean()), "ci": _ci(means[:, 0] - means[:, 1])}
                out[bench][(a, b)] = diffs
    return out


def main_table(root: Path) -> str:
    path = paths.TABLES / "main.md"
    m = _load(root / paths.RESULTS / "eval" / "metrics.json")
    if m is None or not (root / path).exists():
        return _missing(path, "the evaluate stage")
    lines = [(root / path).read_text().strip(), ""]
    from soar.evaluation import LABELS, ordered

    for bench, shares in m["oracle_share"].items():
        k = str(max(m["ks"]))
        parts = []
        for method in ordered(shares):
            s = shares[method][k]
            if s["value"] is None:
                parts.append(f"{LABELS.get(method, method)} undefined")
            else:
                ci = "n/a" if s["ci"] is None else f"{100 * s['ci'][0]:.0f} to {100 * s['ci'][1]:.0f}"
                parts.append(f"{LABELS.get(method, method)} {100 * s['value']:.0f}% ({ci})")
        if all(shares[method][k]["value"] is None for method in shares):
            lines.append(f"Oracle gain recovered, (M − Hard-Only) / (Oracle − Hard-Only), {bench} pass@{k}: undefined "
                         "for every method, since the Oracle gains nothing over Hard-Only.")
        elif parts:
            lines.append(f"Oracle gain recovered, (M − Hard-Only) / (Oracle − Hard-Only), {bench} pass@{k}, 95% CI; "
                         "undefined where the Oracle gains nothing over Hard-Only: " + "; ".join(parts) + ".")
    some = next(iter(m["benchmarks"].values()))
    row = next(iter(some.values()))
    lines += ["", f"pass@k in %, mean ± SD over {len(row['seeds'])} seeds; {row['problems']} test problems x "
              f"{m['n_samples']} samples each."]
    rt = _load(root / paths.RESULTS / "retrain" / "metrics.json")
    if rt and all("soar_seed" in r for r in rt["runs"]):  # which SOAR run's PQ, teachers and PS each seed learned from
        nested: dict[int, set[int]] = {}
        for r in rt["runs"]:
            nested.setdefault(r["soar_seed"], set()).add(r["seed"])
        lines.append("Seeds are nested (PAPER.md): the fresh students (and SOAR-PS) of seeds "
                     + "; ".join(f"{', '.join(map(str, sorted(f)))} learn from the SOAR runs of seed {s}"
                                 for s, f in sorted(nested.items()))
                     + ", so the CIs over seeds cover the SOAR runs' variance too"
                     + ("; they resample the SOAR seeds first, then the fresh seeds within each (fresh seeds that "
                        "share a SOAR run are not independent replicates)." if m and "SOAR" in _resampled(m) else "."))
    if rt and all("died" in r for r in rt["runs"]):
        from collections import Counter

        dead, total = Counter(r["method"] for r in rt["runs"] if r["died"]), Counter(r["method"] for r in rt["runs"])
        lines.append(("Fresh students that died (learned, then fell to the format credit; each phase of a curriculum "
                      "judged apart; kept in the means above): ")
                     + ("; ".join(f"{LABELS.get(k, k)} {dead[k]} of {total[k]}" for k in ordered(dead)) if dead
                        else f"none of {len(rt['runs'])}") + ".")
    if rt and "wall_s" in rt and "wall_s" in m:
        lines.append(f"Compute (sums of per-run wall times, {rt['cpus']} CPU cores): retrain {rt['wall_s'] / 60:.0f} min "
                     f"({len(rt['runs'])} runs) + evaluate {m['wall_s'] / 60:.0f} min ({m['jobs']} model x seed x "
                     f"benchmark jobs) = **{(rt['wall_s'] + m['wall_s']) / 60:.0f} min**.")
    return "\n".join(lines)


def paper_budget(root: Path) -> str:
    """The paper profile's projected H100-hours (benchmarks/project_paper.py)."""
    path = paths.BENCHMARKS / "paper_projection.json"
    b = _load(root / path)
    if b is None:
        return _missing(path, "`python benchmarks/project_paper.py`")
    p, t, profile = b["paper"], b["check"], b["profile"]
    names = {"soar_grounded_run": "one SOAR run (grounded; no-promotion alike)", "soar_intrinsic_run":
             "one SOAR run (intrinsic)", "retrain": "retrain (every method x pool x seed)", "evaluate": "evaluate",
             "main_table_total": "**the main table**: 3 seeds x 3 SOAR variants + retrain + evaluate"}
    rows = [[names[k], f"{w['sampled'] / 1e9:.2f}", f"{w['trained'] / 1e9:.2f}", f"{p['ideal_gpu_hours'][k]:,.0f}",
             f"{p['gpu_hours'][k][0]:,.0f}–{p['gpu_hours'][k][1]:,.0f}"] for k, w in
            ((k, p["work"][k]) for k in names)]  # stage order, then the total
    e, paper = p["efficiency"], p["paper_gpu_hours"]
    check = (f"not checked (the {profile} retrain/evaluate have not recorded their times)" if t["recorded_s"] is None else
             f"predicted {t['predicted_s'] / 60:.0f} min, recorded {t['recorded_s'] / 60:.0f} min "
             f"({t['predicted_over_recorded']:.2f}x)")
    return "\n".join([
        _table(["stage (paper profile)", "tokens sampled (B)", "tokens trained (B)", "H100-hours at the roofline",
                "projected H100-hours"], rows), "",
        f"- Projected, not measured ({b['date']}): work counted from `profiles/paper.yaml` ({p['model']}, completions "
        f"at their token caps, prompts {p['prompt_tokens']:.0f} tokens); {p['hardware']} roofline "
        f"{p['roofline']['sampled_per_s']:,.0f} sampled and {p['roofline']['trained_per_s']:,.0f} trained tokens/s "
        f"(decode batch {p['generation_batch']}).",
        f"- The range scales the roofline by the share of it the paper's own reported costs imply: "
        f"{e['soar_run']:.0%} from one SOAR run ({paper['soar_run'][0]:,}–{paper['soar_run'][1]:,} GPU-hours) and "
        f"{e['fresh_student']:.0%} from one fresh student with its evaluation ({paper['fresh_student']} GPU-hours).",
        f"- Work model check on CPU ({profile} profile's retrain + evaluate at throughputs measured in the same run): "
        f"{check}.", *roofline_lines(p), *node_lines(p)])


def roofline_lines(p: dict) -> list[str]:
    """The least one outer step of the paper profile can cost (benchmarks/project_paper.py)."""
    r, e = p.get("outer_step_roofline"), p["efficiency"]
    if r is None:
        return []
    share = r["completion_share_for_one_hour"]
    return [f"- The least one outer step can cost: **{r['hours']:.2f} H100-hours** at the roofline with every "
            f"completion at its cap ({r['decode_hours']:.2f} decoding, {r['train_hours']:.2f} training). One "
            f"H100-hour per outer step would need completions averaging at most {share:.0%} of their caps at 100% of "
            f"the roofline; the paper's own costs imply {min(e.values()):.0%}–{max(e.values()):.0%} of it."]


def node_lines(p: dict) -> list[str]:
    """The paper projection's outer step on one node, as the memory plan places it."""
    node = p.get("node")
    if node is None:
        return []
    ip, ray = node["layouts"]["inprocess"], node["layouts"]["ray"]

    def span(xs, digits=1):
        return f"{xs[0]:.{digits}f}–{xs[1]:.{digits}f}"

    knobs = "; ".join(k.split(" (")[0] for k in node["knobs"]) or "none"
    return [f"- One outer step on one node of {node['gpus']} H100 ({node['gpu_memory_gib']:.0f} GiB), as the memory plan "
            f"(`soar.budget`) places it, with the knobs it adds to fit ({knobs}): in-process, teacher and student on "
            f"one GPU each and the other {node['gpus'] - 2} idle, **{span(ip['wall_hours'])} h**; with "
            f"{ray['student_slots']} Ray actors on those GPUs ({ray['busy_slots']} with a share of the students), "
            f"**{span(ray['wall_hours'])} h**, {span(ray['node_gpu_hours'], 0)} GPU-hours held per outer step (the "
            f"paper: {span(p['paper_gpu_hours_per_outer_step'])}, on 4 nodes)."]


def gpu1_budget(root: Path) -> str:
    """The one-GPU profile's projected H100-hours and memory plan (benchmarks/project_gpu1.py)."""
    path = paths.BENCHMARKS / "gpu1_projection.json"
    b = _load(root / path)
    if b is None:
        return _missing(path, "`python benchmarks/project_gpu1.py`")
    p, plan, run, e = b["projection"], b["memory_plan"], b["dvc_exp_run"], b["efficiency"]
    names = {"fail_at_k": "fail@k (the hard sets; once for every run)", "soar_run": "one SOAR run (grounded)",
             "retrain": "retrain (its fresh students: every method x seed)", "evaluate": "evaluate",
             "with_fail_at_k": f"**one run** (the profile's budget: {b['budget_hours']}): fail@k + SOAR run + retrain + "
                               "evaluate"}

    def span(xs):
        return f"{xs[0]:.1f}–{xs[1]:.1f}"

    rows = [[name, f"{p['work'][k]['sampled'] / 1e6:.1f}", f"{p['work'][k]['trained'] / 1e6:.1f}",
             f"{p['ideal_hours'][k]:.2f}", span(p["hours"][k])] for k, name in names.items()]
    runs = ", ".join(f"{n} {v}" for v, n in run["soar_runs"].items())
    tests = ", ".join(f"{k} {v}" for k, v in b["test_problems"].items())
    return "\n".join([
        _table(["stage (gpu1 profile)", "tokens sampled (M)", "tokens trained (M)", "H100-hours at the roofline",
                "projected H100-hours"], rows), "",
        f"- Projected, not measured ({b['date']}): work counted from `profiles/gpu1.yaml` ({b['model']}, completions "
        f"at their token caps, prompts {b['prompt_tokens']:.0f} tokens, test problems at most {tests}: every problem "
        f"fail@k draws taken as hard); {b['hardware']['name']} roofline of each part at its own decode batch, scaled "
        f"by the paper profile's two fitted shares of it ({e['soar_run']:.0%} and {e['fresh_student']:.0%}).",
        f"- Memory plan on one {b['gpu_memory_gib']:.0f} GiB GPU (`soar.budget`): "
        f"{', '.join(f'{r} -> {d}' for r, d in sorted(plan['placement'].items(), reverse=True))}, needs "
        f"{plan['need_gib'][0]:.1f} GiB of "
        f"{plan['usable_gib']:.0f} usable -> {'fits' if plan['fits'] else 'DOES NOT FIT'}.",
        f"- `dvc exp run -S profile=gpu1` runs params.yaml's SOAR matrix ({runs} seeds) and {run['sweep_cells']} "
        f"sweep cells: **{span(run['hours'])} H100-hours**; with `-S 'runs.variants=[grounded]' -S 'runs.seeds=[0]'` "
        f"(the one run gpu1's retrain methods read; not run end to end here) "
        f"**{span(run['grounded_seed0_hours'])}**."])


def gpu_check(root: Path) -> str:
    """The GPU check (benchmarks/gpu_check.py): rollout and RLOO-step speed and peak memory at the
    paper's shapes, beside the memory plan, and the GPU-hours they project."""
    path = paths.BENCHMARKS / "gpu.json"
    g = _load(root / path)
    if g is None:
        return ("_The GPU check has not run yet. On a machine with one H100 or H200 GPU (torch, transformers and "
                "peft suffice; nothing is downloaded), `python benchmarks/gpu_check.py` measures it in under 8 "
                f"minutes and writes `{path}`; then `python -m soar.report` renders it here._")
    rows = []
    for role in ("student", "teacher"):
        o = g[role]["step"]
        if "step_s" in o:
            rows.append([f"{role} RLOO step", f"{o['sequences']} x {o['tokens_per_sequence']} tokens, micro-batch "
                         f"{o['micro_batch']} ({o['micro_batches_run']} of {o['micro_batches']} run)",
                         f"{o['step_s']:.0f} s (whole step)", f"{o['trained_tokens_per_s']:,.0f} trained tokens/s",
                         f"{o['peak_gib']:.1f}", f"{o['plan_gib']:.1f}"])
        else:
            rows.append([f"{role} RLOO step", o.get("error", "skipped: time cap"), "", "",
                         f"{o['peak_gib']:.1f}" if "peak_gib" in o else "", f"{o.get('plan_gib', 0):.1f}"])
        o = g[role]["rollout"]
        if "tokens" in o:
            rows.append([f"{role} rollout", f"{o['prompts']} x {o['samples']} samples x {o['max_new_tokens']} tokens "
                         f"(cap {o['of_max_new_tokens']}), prompts {o['prompt_tokens']}", f"{o['seconds']:.0f} s",
                         f"{o['tokens_per_s']:,.0f} tokens/s", f"{o['peak_gib']:.1f}", f"{o['plan_gib']:.1f}"])
        else:
            rows.append([f"{role} rollout", o.get("error", "skipped: time cap"), "", "",
                         f"{o['peak_gib']:.1f}" if "peak_gib" in o else "", f"{o.get('plan_gib', 0):.1f}"])
    unit = "GiB, max allocated" if g["device"] == "cuda" else "GiB, process peak RSS"
    lines = [_table(["phase", "shape", "time", "throughput", f"peak ({unit})", "memory plan (GiB)"], rows), "",
             f"- {g['gpu'] or 'CPU (--tiny: a toy model, not a measurement)'}, {g['memory_gib']:.0f} GiB, {g['date']}: "
             f"random-weight `{g['model']}` ({g['parameters']:,} parameters), torch "
             f"{g['versions']['torch']}, transformers {g['versions']['transformers']}, peft {g['versions']['peft']}; "
             f"knobs the memory plan added: {', '.join(g['knobs']) or 'none'}."]
    p = g["projection"]
    if p:
        n = p["node"]
        lines.append(f"- Projected at these rates (`soar.budget`'s work model): {p['gpu_hours_per_outer_step']:.2f} "
                     f"GPU-hours of compute per outer step, {p['gpu_hours_per_run']:,.0f} per run ({p['outer_steps']} "
                     f"outer steps). On 8 such GPUs an outer step takes {n['inprocess']['wall_hours']:.2f} h in-process "
                     f"(one student GPU) and {n['ray']['wall_hours']:.2f} h with {n['ray']['student_slots']} Ray actors "
                     f"({n['ray']['busy_slots']} with a share of the students; {n['ray']['node_gpu_hours']:.1f} GPU-hours "
                     "held).")
    return "\n".join(lines)


def analysis(root: Path) -> str:
    path = paths.RESULTS / "analysis" / "metrics.json"
    m, table = _load(root / path), root / paths.TABLES / "questions.md"
    if m is None or not table.exists():
        return _missing(path, "the analyze_questions stage")

    def rho(a):
        if a["rho"] is None:
            return f"undefined ({a['datasets']} datasets with a value, or no variation)"
        ci = "n/a" if a["ci"] is None else f"{a['ci'][0]:+.2f} to {a['ci'][1]:+.2f}"
        return f"{a['rho']:+.2f} (95% CI {ci}; {a['datasets']} datasets)"

    vendi = ", ".join(f"{k} {v['mean']:.2f}" + (f" ± {v['std']:.2f}" if v["std"] else "")
                      for k, v in m["vendi"].items() if v["mean"] is not None)
    sizes = sorted({v["size"] for v in m["vendi"].values() if v["mean"] is not None})
    draws = max((v["draws"] for v in m["vendi"].values()), default=0)
    lines = [f"Judge `{m['judge']}` ({m['judge_version']}). Verdict rows: % of parsed verdicts; re-solve row: "
             "% of questions whose re-solves boxed an answer (count / denominator):", "",
             table.read_text().strip(), "",
             f"- Vendi score ({m['embedder']}; mean ± SD over {draws} draws of {'/'.join(map(str, sizes)) or 'no'} "
             f"questions): {vendi or 'n/a'}"]
    for variant, assoc in m["reward_association"].items():
        lines += [f"- {variant}: teacher reward vs share of well-posed questions per dataset, Spearman: "
                  f"{rho(assoc['well_posed'])}",
                  f"- {variant}: teacher reward vs share whose re-solve agrees, Spearman: {rho(assoc['correct'])}"]
    lines += [f"- Missing column: {x}" for x in m["missing"]]
    return "\n".join(lines)


def world(root: Path) -> str:
    """The addition world's base model, per level: as a student and as a teacher."""
    path = paths.RESULTS / "pretrain" / "metrics.json"
    m = _load(root / path)
    if m is None:
        return _missing(path, "the pretrain stage")
    zero = next(k for k in m["levels"][0] if k.startswith("zero_of_"))
    teacher = {r["topic"]: r for r in m.get("teacher", [])}

    def pct(x):
        return "n/a" if x is None else f"{x:.0%}"

    rows = [[r["level"], pct(r["greedy"]), pct(r["sampled"]), pct(r[zero]),
             pct(teacher.get(f"level {r['level']}", {}).get("share")),
             pct(teacher.get(f"level {r['level']}", {}).get("correct"))] for r in m["levels"]]
    k = zero.removeprefix("zero_of_")
    lines = [_table(["level (carries)", "student: greedy", "student: sampled", f"student: solved 0 of {k}",
                     "teacher: share of its questions", "teacher: answer correct"], rows), "",
             f"{m['parameters']:,} parameters, pretrained in {m['seconds']:.0f} s; student columns: "
             f"{m['levels'][0]['problems']} train-pool problems per level; teacher columns: "
             f"{m.get('teacher_samples', 'n/a')} samples of the teacher prompt at temperature 1 (the rest are "
             "other lengths or ill-posed)."]
    return "\n".join(lines)


def stage_times(root: Path) -> str:
    """Wall time of each stage of the last run, from its executed notebook (papermill's record)."""
    books = sorted((root / paths.RESULTS / "notebooks").glob("0*.ipynb"))
    if not books:
        return _missing(paths.RESULTS / "notebooks", "`dvc repro`")
    groups: dict[str, list[tuple[float, str]]] = {}  # SOAR runs and sweep cells: one row each kind
    for book in books:
        meta = json.loads(book.read_text())["metadata"].get("papermill", {})
        name = book.stem
        if name.startswith("02_train_soar-"):
            name = "02_train_soar (sweep cells)" if "-sweep-" in name else "02_train_soar (SOAR runs)"
        groups.setdefault(name, []).append((meta.get("duration") or 0.0, (meta.get("end_time") or "")[:10]))
    rows = [[name if len(runs) == 1 else f"{name}, {len(runs)}", f"{sum(s for s, _ in runs) / 60:.1f}",
             max(d for _, d in runs)] for name, runs in groups.items()]
    total = sum(s for runs in groups.values() for s, _ in runs)
    rows.append(["**total**", f"**{total / 60:.1f}**", ""])
    sweep = sum(s for s, _ in groups.get("02_train_soar (sweep cells)", []))
    if sweep:  # their outputs are in git and nothing downstream reads their state (docs/pipeline.md)
        rows.append(["total without the sweep cells (what a fresh clone's `dvc repro` runs)", f"{(total - sweep) / 60:.1f}", ""])
    return _table(["stage (executed notebooks)", "minutes", "run on"], rows)


def teachers_parted(root: Path, reference: str = "grounded") -> str:
    """Did the teachers' updates change what they write? Every variant samples its teacher with the
    same seeds at the same step, so a question the grounded teacher writes is, position for
    position, the one another variant's teacher wrote unless their weights differ enough to flip a
    sampled token. The share of identical questions, per other variant: at the first and last outer
    step, mean over the seeds both ran (a run's step files, `results/soar/<variant>/seed<k>/samples`);
    and the first outer step at which the reference teacher's update had any signal (a dataset with
    a nonzero advantage: before it, the update is exactly 0 and the teacher is its start)."""
    def steps(run: Path) -> list[list[dict]]:
        files = sorted((run / "samples").glob("step_*.jsonl"))
        return [list(map(json.loads, f.read_text().splitlines())) for f in files]

    def questions(rows_by_step: list[list[dict]]) -> list[list[str]]:
        return [[q for r in rows for q in r["questions"]] for rows in rows_by_step]

    def first_signal(rows_by_step: list[list[dict]]) -> str:
        signal = [t for t, rows in enumerate(rows_by_step) if any(r.get("advantage", 0) != 0 for r in rows)]
        return f"{signal[0]}" if signal else "none"

    soar_dir = root / paths.RESULTS / "soar"
    ref = {run.name: steps(run) for run in sorted((soar_dir / reference).glob("seed*"))}  # read once
    parts = []
    for other in sorted(p.name for p in soar_dir.glob("*") if p.is_dir() and p.name != reference):
        shares = []  # per seed: the share of identical questions at each step both runs reached
        for seed, rows in ref.items():
            if not (soar_dir / other / seed / "samples").is_dir():
                continue
            a, b = questions(rows), questions(steps(soar_dir / other / seed))
            shares.append([sum(x == y for x, y in zip(qa, qb)) / max(len(qa), 1) for qa, qb in zip(a, b)])
        shares = [s for s in shares if s]
        if shares:
            first, last = (sum(s[i] for s in shares) / len(shares) for i in (0, -1))
            each = ", ".join(f"{s[-1]:.0%}" for s in shares)
            parts.append(f"the {other} teacher's {first:.0%} at the first outer step and {last:.0%} at the last "
                         f"(per seed {each})")
    if not parts:
        return ""
    signals = ", ".join(first_signal(rows) for rows in ref.values())
    return (f"- **Did the teachers part?** Each variant samples its teacher with the same seeds, so two teachers "
            f"write the very same question at a position until their updates have changed a sampled token. Of the "
            f"{reference} teacher's questions, identical to " + "; to ".join(parts) + f". The {reference} teacher's "
            f"first update with any signal (a dataset with a nonzero advantage) came at outer step {signals} of "
            f"{len(next(iter(ref.values())))} (per seed; counting from 0).")


def findings(root: Path) -> str:
    """The questions the default run answers, each from its results file: is the grounded teacher
    reward above 0; does each method beat Hard-Only on the hard test split; what happens to the
    teachers' diversity; how much of the Oracle's gain is recovered."""
    from soar.evaluation import PAPER_MATH
    import numpy as np

    from soar.metrics import aggregate_seeds

    def summary(by_seed: dict[str, list[float]]) -> str:
        """Mean ± SD of the per-seed means, and a two-level bootstrap CI of that mean: each draw
        resamples the seeds, then each drawn seed's own datasets (seeds are the unit of
        replication); with one seed the CI is over its datasets only, and says so."""
        by_seed = {s: np.asarray(v, dtype=float) for s, v in by_seed.items() if v}
        if not by_seed:
            return "no dataset"
        runs = list(by_seed.values())
        seeds = aggregate_seeds([v.mean() for v in runs])
        rng = np.random.default_rng(0)
        draws = [np.mean([(v := runs[i])[rng.integers(0, v.size, v.size)].mean()
                          for i in rng.integers(0, len(runs), len(runs))]) for _ in range(1000)]
        lo, hi = np.quantile(draws, [0.025, 0.975])
        verdict = "above 0" if lo > 0 else "below 0" if hi < 0 else "not distinguishable from 0"
        over = (f"seeds, then their {sum(v.size for v in runs)} datasets" if len(runs) > 1
                else f"its {runs[0].size} datasets, one seed: no seed-level CI")
        floor = ("; no dataset's gain is below 0, so above 0 says only that some "
                 "dataset taught something" if lo > 0 and min(v.min() for v in runs) >= 0 else "")
        return (f"{seeds['mean']:+.3f} ± {seeds['std']:.3f} (mean ± SD over {seeds['n']} "
                f"seed{'s' if seeds['n'] > 1 else ''}; 95% CI over {over}: {lo:+.3f} to {hi:+.3f}, "
                f"**{verdict}**{floor})")

    lines = []
    fk, ev = _load(root / paths.RESULTS / "fail_at_k" / "metrics.json"), _load(root / paths.RESULTS / "eval" / "metrics.json")
    if fk and ev:  # the premise: are the hard problems hard for the base model, and for Hard-Only?
        for pool, f in fk["pools"].items():
            table = ev["benchmarks"].get(pool, {})
            k = str(max(ev["ks"]))
            base, ho = table.get("base"), table.get("hard_only")
            if base is None:
                continue
            line = (f"- **The premise, {pool}**: fail@{fk['k']} keeps {f['hard']} of {f['problems']} problems as hard "
                    f"({f['hard_fraction']:.1%}); on its hard test split ({base['problems']} problems) the base model "
                    f"answers {100 * base['mean']['1']:.1f}% of samples right, pass@{k} {100 * base['mean'][k]:.1f}%")
            if ho is not None:
                line += f"; Hard-Only reaches pass@{k} {100 * ho['mean'][k]:.1f} ± {100 * ho['std'][k]:.1f}%"
            paper = PAPER_MATH["base"][32], PAPER_MATH["hard_only"][32] - PAPER_MATH["base"][32]
            lines.append(line + f" (the paper, MATH fail@128: base pass@32 {paper[0]}%, Hard-Only {paper[1]:+.1f} points).")
    variants = sorted({p.parent.parent.name for p in (root / paths.RESULTS / "soar").glob("*/seed*/samples")})
    for variant in variants:
        before, after = {}, {}  # per seed: grounded gains against the base student, and after a promotion
        for run in sorted((root / paths.RESULTS / "soar" / variant).glob("seed*")):
            log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            first = min([r["step"] for r in log if r.get("promotion")], default=len(log))
            for f in sorted((run / "samples").glob("step_*.jsonl")):
                for r in map(json.loads, f.read_text().splitlines()):
                    (before if r["step"] <= first else after).setdefault(run.name, []).append(r["grounded"])
        if before or after:
            lines.append(f"- **Grounded teacher reward, {variant}** (greedy Q_R accuracy of a student trained on a "
                         f"proposed dataset, minus its baseline's): up to the first promotion "
                         f"{summary(before)}; after it {summary(after)}.")
    parted = teachers_parted(root)
    if parted:
        lines.append(parted)
    m = _load(root / paths.RESULTS / "eval" / "metrics.json")
    if m and m.get("vs_hard_only"):
        from soar.evaluation import LABELS

        k = str(max(m["ks"]))
        for bench, diffs in m["vs_hard_only"].items():
            rows = []
            for model, by_k in diffs.items():
                cells = []
                for kk in ("1", k):
                    d = by_k[kk]
                    sign = "**+**" if d["ci"][0] > 0 else "**−**" if d["ci"][1] < 0 else "="
                    cells.append(f"{100 * d['diff']:+.1f} ({100 * d['ci'][0]:+.1f} to {100 * d['ci'][1]:+.1f}) {sign}")
                rows.append([LABELS.get(model, model), *cells])
            lines += ["", f"Difference to Hard-Only on {bench} (hard test split), pass@k in points, paired "
                      f"bootstrap 95% CI ({_resampled(m)}; **+** / **−**: the CI excludes 0; "
                      "= not shown):", "",
                      _table(["model", "pass@1", f"pass@{k}"], rows)]
    pre = contrasts(m) if m else {}  # one bootstrap per pair: computed once
    if any(pre.values()):
        from soar.evaluation import LABELS

        k = str(max(m["ks"]))
        for bench, pairs in pre.items():
            parts = []
            for (a_, b_), by_k in pairs.items():
                d = by_k[k]
                verdict = ("**above 0**" if d["ci"][0] > 0 else "**below 0**" if d["ci"][1] < 0 else "not shown")
                parts.append(f"{LABELS.get(a_, a_)} − {LABELS.get(b_, b_)} {100 * d['diff']:+.1f} points "
                             f"({100 * d['ci'][0]:+.1f} to {100 * d['ci'][1]:+.1f}: {verdict})")
            if parts:
                lines += ["", f"- **The pre-registered comparisons**, {bench} pass@{k}, paired bootstrap "
                          f"95% CI ({_resampled(m)}): " + "; ".join(parts) + "."]
    a = _load(root / paths.RESULTS / "analysis" / "metrics.json")
    if a:
        vendi = ", ".join(f"{name} {v['mean']:.2f} ± {v['std']:.2f}" for name, v in a["vendi"].items()
                          if v["mean"] is not None)
        lines += ["", f"- **Diversity** (Vendi score, {a['embedder']}, mean ± SD over draws): {vendi or 'n/a'}."]
        within = []
        for variant in variants:
            steps = [r["steps"] for r in a["runs"] if r["variant"] == variant]
            first = [s[0]["diversity"] for s in steps if s and s[0]["diversity"] is not None]
            last = [s[-1]["diversity"] for s in steps if s and s[-1]["diversity"] is not None]
            if first and last:
                within.append(f"{variant} {sum(first) / len(first):.3f} → {sum(last) / len(last):.3f}")
        if within:
            lines.append("- Within-step diversity (mean pairwise distance of one outer step's questions, first → last "
                         "step, mean over seeds): " + ", ".join(within) + ".")
    return "\n".join(lines) if lines else _missing(paths.RESULTS / "soar", "`dvc repro`")


BLOCKS = {"world": world, "stage_times": stage_times, "findings": findings, "fail_at_k": fail_at_k, "soar": soar_runs, "main_table": main_table, "analysis": analysis,
          "sweep": sweep, "benchmarks": benchmarks, "paper_budget": paper_budget, "gpu1_budget": gpu1_budget,
          "gpu_check": gpu_check}


def render(readme: str | Path = "README.md", root: str | Path = ".") -> list[str]:
    """Rewrite every results block of `readme` from `root`/results; returns the names rendered."""
    readme, root = Path(readme), Path(root)
    text = readme.read_text()
    done = []
    for name, block in BLOCKS.items():
        pattern = re.compile(rf"(<!-- results:{name} -->)\n?.*?\n?(<!-- /results:{name} -->)", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda m, b=block(root): f"{m.group(1)}\n{b}\n{m.group(2)}", text)
            done.append(name)
    readme.write_text(text)
    return done


def pages(root: str | Path = ".") -> list[Path]:
    """The pages that carry results blocks: README.md and docs/*.md."""
    root = Path(root)
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    for page in pages(root):
        print(f"{page}: rendered", ", ".join(render(page, root)) or "nothing")
