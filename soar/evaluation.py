"""The main table (PAPER.md, "Results to compare against"): pass@k of every method on every
benchmark from per-sample outputs, mean +- SD over seeds, bootstrap 95% CIs, and the share of
the Oracle's gain over Hard-Only that a method recovers.

Input is what the evaluate stage writes per (benchmark, model, seed): one record per test problem
and evaluated checkpoint with n and successes (`soar.student.Evaluation.records`). A problem's
pass@k is averaged over the checkpoints of its run's window, then over seeds; CIs are two-level
bootstraps, seeds then test problems (paired across methods: the same draws for each), so a
comparison carried by one seed is not called shown. Where seeds are nested (PAPER.md: several fresh
seeds learn from one SOAR run), the draws resample the SOAR seeds first, then the fresh seeds within
each, so one SOAR run's luck cannot pass for an effect. Values are fractions; tables show %.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from soar.metrics import aggregate_seeds, pass_at_k

BASE, PS = "base", "ps"  # rows that are not fresh students: the base model and the Promoted Student
# Display names, in the order of the paper's table (rows, legends and bars follow it).
LABELS = {"base": "Base model", "ps": "SOAR-PS",
          "pq-curriculum": "SOAR-PQ (curriculum)", "pq-mixed": "SOAR-PQ (mixed)",
          "grounded_t-curriculum": "Grounded-T (curriculum)", "grounded_t-mixed": "Grounded-T (mixed)",
          "grounded_t_no_promotion-curriculum": "Grounded-T without promotion (curriculum)",
          "grounded_t_no_promotion-mixed": "Grounded-T without promotion (mixed)",
          "base_t-curriculum": "Base-T (curriculum)", "base_t-mixed": "Base-T (mixed)",
          "intrinsic_t-curriculum": "Intrinsic-T (curriculum)", "intrinsic_t-mixed": "Intrinsic-T (mixed)",
          "shuffled_t-curriculum": "Shuffled-T (curriculum)", "shuffled_t-mixed": "Shuffled-T (mixed)",
          "hard_only": "Hard-Only", "hard_only-g128": "Hard-Only, group 128",
          "oracle": "Oracle", "oracle-128": "Oracle, 128 random real questions"}


def ordered(models) -> list[str]:
    """Model ids in table order (LABELS), unknown ones last by name: metrics.json stores keys
    sorted, which is not the order a reader expects."""
    order = list(LABELS)
    return sorted(models, key=lambda m: (order.index(m) if m in order else len(order), m))
# PAPER.md, MATH fail@128 test, pass@k in % (Llama-3.2-3B-Instruct): the reference column of
# results/tables/paper_vs_ours.md. Keyed by our method names.
PAPER_MATH = {
    "base": {1: 0.3, 4: 1.0, 8: 2.0, 16: 3.9, 32: 7.5},
    "hard_only": {1: 0.5, 4: 1.7, 8: 3.2, 16: 5.7, 32: 9.6},
    "hard_only-g128": {1: 1.4, 4: 3.9, 8: 6.1, 16: 8.9, 32: 12.4},
    "pq-curriculum": {1: 1.7, 4: 5.3, 8: 8.5, 16: 13.0, 32: 18.9},
    "ps": {1: 1.0, 4: 3.8, 8: 6.8, 16: 11.5, 32: 18.1},
    "grounded_t-curriculum": {1: 1.6, 4: 5.1, 8: 8.4, 16: 13.1, 32: 19.1},
    "intrinsic_t-curriculum": {1: 1.0, 4: 3.3, 8: 5.7, 16: 9.2, 32: 14.1},
    "oracle": {1: 2.7, 4: 7.6, 8: 11.5, 16: 16.4, 32: 22.0},
}
PAPER_ORACLE_SHARE = {"math": 0.75, "harp": 0.50}


def problem_pass_at_k(records: Sequence[Mapping], ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """{problem id: {k: pass@k}} from one run's records, averaged over its evaluated checkpoints."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for k in ks:
            acc[r["id"]][k].append(pass_at_k(r["n"], r["successes"], k))
    return {pid: {k: float(np.mean(v)) for k, v in by_k.items()} for pid, by_k in acc.items()}


def summarize(runs: Mapping[str, Mapping[int, Sequence[Mapping]]], ks: Sequence[int], *, n_boot: int = 1000,
              seed: int = 0, groups: Mapping[int, int] | None = None) -> dict:
    """Per model of one benchmark: pass@k per seed, mean/std over seeds, and a two-level bootstrap
    95% CI (seeds, then test problems; `_means`, with `groups`) of the mean pass@k; plus the
    per-seed per-problem values the CIs and the Oracle share resample. runs: {model: {seed: records}}."""
    out = {}
    for model, by_seed in runs.items():
        per_seed = {s: problem_pass_at_k(recs, ks) for s, recs in by_seed.items()}
        ids = sorted(set.intersection(*(set(p) for p in per_seed.values())))
        if not ids:
            raise ValueError(f"{model}: no test problem is shared by all seeds")
        per_seed_problem = {k: [[per_seed[s][i][k] for i in ids] for s in sorted(per_seed)] for k in ks}  # (S, P)
        per_problem = {k: np.mean(per_seed_problem[k], axis=0).tolist() for k in ks}
        seed_means = {k: [float(np.mean([per_seed[s][i][k] for i in ids])) for s in sorted(per_seed)] for k in ks}
        out[model] = {
            "seeds": sorted(per_seed), "problems": len(ids), "ids": ids,
            "per_seed": {str(k): seed_means[k] for k in ks},
            **{stat: {str(k): aggregate_seeds(seed_means[k])[stat] for k in ks} for stat in ("mean", "std")},
            "ci": {str(k): _ci(_means(np.array([per_seed_problem[k]]), n_boot, seed, _groups(per_seed, groups))[:, 0])
                   for k in ks},
            "per_problem": {str(k): per_problem[k] for k in ks},
            "per_seed_problem": {str(k): per_seed_problem[k] for k in ks},
        }
    return out


def oracle_share(table: Mapping[str, Mapping], ks: Sequence[int], *, n_boot: int = 1000, seed: int = 0,
                 groups: Mapping[int, int] | None = None) -> dict:
    """(M - Hard-Only) / (Oracle - Hard-Only) for every other fresh-student method M, with a
    paired two-level bootstrap CI (seeds, then test problems; `_means`). None where the Oracle
    gains nothing over Hard-Only (the share is undefined); `undefined_draws` counts such draws."""
    if "oracle" not in table or "hard_only" not in table:
        return {}
    out = {}
    for m in table:
        if m in ("oracle", "hard_only"):
            continue
        out[m] = {}
        for k in ks:
            x = _paired(table, (m, "hard_only", "oracle"), k)  # (3, S, P)
            value = _share(x.mean(axis=(1, 2)))
            shares = np.array([_share(d) for d in _means(x, n_boot, seed, _groups(table[m]["seeds"], groups))],
                              dtype=float)
            finite = shares[np.isfinite(shares)]
            out[m][str(k)] = {"value": None if not np.isfinite(value) else float(value),
                              "ci": [float(q) for q in np.quantile(finite, [0.025, 0.975])] if finite.size else None,
                              "undefined_draws": int(n_boot - finite.size)}
    return out


def vs_hard_only(table: Mapping[str, Mapping], ks: Sequence[int], *, n_boot: int = 1000, seed: int = 0,
                 groups: Mapping[int, int] | None = None) -> dict:
    """M - Hard-Only in pass@k for every other model M (the question "does it beat Hard-Only on
    the hard test split?"), with a paired two-level bootstrap 95% CI: seeds, then test problems,
    the same draws for both (`_means`)."""
    if "hard_only" not in table:
        return {}
    out = {}
    for m in table:
        if m == "hard_only":
            continue
        out[m] = {}
        for k in ks:
            x = _paired(table, (m, "hard_only"), k)  # (2, S, P)
            means = _means(x, n_boot, seed, _groups(table[m]["seeds"], groups))  # (n_boot, 2)
            out[m][str(k)] = {"diff": float(x[0].mean() - x[1].mean()), "ci": _ci(means[:, 0] - means[:, 1])}
    return out


def _share(means: np.ndarray) -> float:
    m, ho, oracle = means
    return (m - ho) / (oracle - ho) if oracle - ho > 1e-12 else float("nan")


def _paired(table: Mapping[str, Mapping], models: Sequence[str], k: int) -> np.ndarray:
    """(models, S, P) per-seed per-problem pass@k of models evaluated on the same seeds and problems."""
    seeds = [table[m]["seeds"] for m in models]
    if any(s != seeds[0] for s in seeds):
        raise ValueError(f"paired models need the same seeds, got {dict(zip(models, seeds))}")
    return np.array([table[m]["per_seed_problem"][str(k)] for m in models], dtype=float)


def _groups(seeds, groups: Mapping[int, int] | None) -> list[int] | None:
    """The group (SOAR seed) of each of `seeds`, in sorted order as `_paired` stacks them."""
    return None if groups is None else [groups[int(s)] for s in sorted(seeds)]


def _means(x: np.ndarray, n_boot: int, seed: int, groups: Sequence[int] | None = None) -> np.ndarray:
    """Two-level bootstrap of (rows, S, P) values: each draw resamples the seeds, then the test
    problems, with replacement, the same seeds and problems for every row (paired); returns the
    (n_boot, rows) means. Seeds are the unit of replication (a fresh student's seed moves its
    score by tens of points here), problems the unit of the test set.

    groups (one per seed): nested seeds, the SOAR seed each fresh seed learned from. Seeds of one
    group share its SOAR run, so they are not independent replicates: a draw then resamples the
    groups, then the seeds within each drawn group (a cluster bootstrap). Without groups, or with
    one seed a group, it is the plain seed resample (the same draws)."""
    rng = np.random.default_rng(seed)
    _, n_seeds, n_problems = x.shape
    members = None
    if groups is not None and len(set(groups)) < n_seeds:
        members = [np.flatnonzero(np.asarray(groups) == g) for g in dict.fromkeys(groups)]
    out = np.empty((n_boot, x.shape[0]))
    for b in range(n_boot):
        if members is None:
            s = rng.integers(0, n_seeds, n_seeds)
        else:
            drawn = [members[i] for i in rng.integers(0, len(members), len(members))]
            s = np.concatenate([m[rng.integers(0, len(m), len(m))] for m in drawn])
        p = rng.integers(0, n_problems, n_problems)
        out[b] = x[:, s][:, :, p].mean(axis=(1, 2))
    return out


def _ci(draws: np.ndarray) -> list[float]:
    return [float(q) for q in np.quantile(draws, [0.025, 0.975])]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def main_table(metrics: Mapping) -> str:
    """Markdown in the paper's layout: rows are methods, columns benchmark x pass@k,
    'mean ± SD' in % over seeds."""
    ks = metrics["ks"]
    benches = list(metrics["benchmarks"])
    models = ordered(dict.fromkeys(m for b in benches for m in metrics["benchmarks"][b]))
    head = "| Method | " + " | ".join(f"{b} @{k}" for b in benches for k in ks) + " |"
    lines = [head, "|---" * (1 + len(benches) * len(ks)) + "|"]
    for m in models:
        cells = []
        for b in benches:
            row = metrics["benchmarks"][b].get(m)
            cells += [f"{_pct(row['mean'][str(k)])} ± {_pct(row['std'][str(k)])}" if row else "" for k in ks]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_vs_ours(metrics: Mapping, *, label: str) -> str:
    """Our pass@k on the first benchmark beside the paper's MATH numbers, at the ks both have."""
    bench = next(iter(metrics["benchmarks"]))
    ks = [k for k in metrics["ks"] if k in (1, 4, 8, 16, 32)]
    some = next(iter(metrics["benchmarks"][bench].values()))
    lines = [f"Ours: {label}, `{bench}` hard test, {some['problems']} problems x {metrics['n_samples']} samples, "
             f"{len(some['seeds'])} seeds. Paper: Llama-3.2-3B-Instruct, MATH fail@128 test, 360 problems x 32 "
             "samples (PAPER.md). Both in % (pass@k, mean over seeds).", "",
             "| Method | " + " | ".join(f"ours @{k} | paper @{k}" for k in ks) + " |",
             "|---" * (1 + 2 * len(ks)) + "|"]
    for m, row in metrics["benchmarks"][bench].items():
        paper = PAPER_MATH.get(m, {})
        cells = [f"{_pct(row['mean'][str(k)])} | {paper.get(k, '—')}" for k in ks]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    share = metrics.get("oracle_share", {}).get(bench, {}).get("pq-curriculum")
    if share:
        k = str(max(int(x) for x in share))
        lines += ["", f"Oracle gain recovered by SOAR-PQ (curriculum) at pass@{k}: ours "
                  f"{_pct(share[k]['value'])}% (95% CI {share[k]['ci'] and [round(100 * c, 1) for c in share[k]['ci']]}),"
                  f" paper {100 * PAPER_ORACLE_SHARE['math']:.0f}% (MATH)."]
    return "\n".join(lines) + "\n"


def metrics(records: Mapping[str, Mapping[str, Mapping[int, Sequence[Mapping]]]], ks: Sequence[int], *,
            n_samples: int, n_boot: int = 1000, seed: int = 0, groups: Mapping[int, int] | None = None) -> dict:
    """results/eval/metrics.json from {benchmark: {model: {seed: records}}}: the summary of
    every model on every benchmark, the Oracle shares and every model's difference to Hard-Only.
    groups: {fresh seed: the SOAR seed it learned from} (`soar.retrain.soar_seeds`), for the CIs."""
    ks = [int(k) for k in ks]
    if max(ks) > n_samples:
        raise ValueError(f"evaluate.ks {ks} has a k above evaluate.n_samples = {n_samples}")
    groups = None if groups is None else {int(s): int(g) for s, g in groups.items()}
    benches = {b: summarize(runs, ks, n_boot=n_boot, seed=seed, groups=groups) for b, runs in records.items()}
    # compute spent sampling, summed over the (benchmark, model, seed) jobs, whether this run or an
    # earlier one made them (each job's records carry its wall time)
    jobs = [recs for runs in records.values() for by_seed in runs.values() for recs in by_seed.values()]
    return {"ks": ks, "n_samples": n_samples, "n_boot": n_boot, "benchmarks": benches,
            "seed_groups": None if groups is None else {str(s): g for s, g in sorted(groups.items())},
            **{name: {b: f(t, ks, n_boot=n_boot, seed=seed, groups=groups) for b, t in benches.items()}
               for name, f in (("oracle_share", oracle_share), ("vs_hard_only", vs_hard_only))},
            "jobs": len(jobs), "wall_s": sum(float(recs[0].get("wall_s", 0.0)) for recs in jobs if recs)}


def write_tables(metrics_: Mapping, *, label: str) -> None:
    """results/tables/main.md and paper_vs_ours.md (atomic writes)."""
    from soar import paths
    from soar.data import atomic_write

    for name, text in (("main.md", main_table(metrics_)), ("paper_vs_ours.md", paper_vs_ours(metrics_, label=label))):
        with atomic_write(paths.TABLES / name) as f:
            f.write(text)
