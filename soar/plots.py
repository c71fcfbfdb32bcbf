"""One function per figure, one style. Reads plain numbers (from results/), writes PNG and PDF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: notebooks and DVC stages write files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

STYLE = {"figure.dpi": 120, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "font.size": 10}


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"))
    fig.savefig(path.with_suffix(".pdf"))
    return path.with_suffix(".png")


def fail_at_k_histogram(counts_by_pool: dict[str, Sequence[int]], k: int, path: str | Path) -> Path:
    """Histogram of per-problem successes out of k; the 0/k bar is the hard set."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        bins = [x - 0.5 for x in range(k + 2)]
        for pool, counts in counts_by_pool.items():
            ax.hist(list(counts), bins=bins, alpha=0.6, label=f"{pool} ({sum(c == 0 for c in counts)} hard)")
        ax.set_xlabel(f"successes out of k = {k}")
        ax.set_ylabel("problems")
        ax.set_title("fail@k filter: the 0/k bar is kept")
        ax.legend()
        return _save(fig, path)


def pretrain(loss: Sequence[float], skill: Sequence[dict], path: str | Path | None = None):
    """The world's base model: its pretraining loss, and its skill per level (number of carries):
    greedy and sampled accuracy, and the share of problems fail@k would keep."""
    with plt.rc_context(STYLE):
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
        a.plot(range(1, len(loss) + 1), loss, lw=0.8)
        a.set_xlabel("pretraining step")
        a.set_ylabel("loss (completion tokens)")
        a.set_yscale("log")
        levels = [r["level"] for r in skill]
        zero = next(k for k in skill[0] if k.startswith("zero_of_"))
        for key, label in (("greedy", "greedy accuracy"), ("sampled", "sampled accuracy (T = 1)"),
                           (zero, f"solved 0 of {zero.removeprefix('zero_of_')}")):
            b.plot(levels, [r[key] for r in skill], marker="o", label=label)
        b.set_xlabel("level (number of carries)")
        b.set_ylabel("share of problems")
        b.set_ylim(-0.03, 1.03)
        b.xaxis.set_major_locator(MaxNLocator(integer=True))
        b.legend(fontsize=8)
        fig.suptitle("the addition world's base model")
        return _finish(fig, path)


def design_world(candidates: dict[str, dict], probe: dict, path: str | Path | None = None):
    """The world's design exploration (train pool only): each candidate base model's skill per
    level while it pretrains (greedy), and, on the chosen one, the hard problems' greedy accuracy
    as fresh students train on one level each, or on hard problems only."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(candidates) + 1, figsize=(3.4 * (len(candidates) + 1), 3.2))
        for ax, (name, c) in zip(axes, candidates.items()):
            steps = [r["step"] for r in c["snapshots"]]
            for level in range(len(c["snapshots"][0]["greedy"])):
                ax.plot(steps, [r["greedy"][level] for r in c["snapshots"]], marker=".", label=f"level {level}")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("pretraining step")
            ax.set_ylim(-0.03, 1.03)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))  # five narrow panels: few ticks
        axes[0].set_ylabel("greedy accuracy (train pool)")
        axes[0].legend(fontsize=7)
        ax = axes[-1]
        for arm in dict.fromkeys(r["arm"] for r in probe["rows"]):
            rows = [r for r in probe["rows"] if r["arm"] == arm]
            ax.plot([r["step"] for r in rows], [r["hard_greedy"] for r in rows], marker="o", label=arm)
        ax.set_title(f"chosen base: hard problems ({probe['measured']} measured)", fontsize=9)
        ax.set_xlabel("student RLOO step")
        ax.set_ylabel("greedy accuracy on hard problems")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, title="trained on", title_fontsize=7)
        fig.suptitle("designing the addition world (train pool only)")
        return _finish(fig, path)


def _finish(fig, path: str | Path | None):
    """Save PNG and PDF when a path is given (the figures stage). Returns the PNG as an IPython
    Image, which executed notebooks keep as image/png (Agg draws nothing by itself)."""
    from io import BytesIO

    from IPython.display import Image

    if path is not None:
        png = _save(fig, path)
        plt.close(fig)
        return Image(filename=str(png))
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image(data=buf.getvalue(), format="png")


def _seeds_and_mean(ax, curves: Sequence[dict], color, label: str) -> None:
    """Each seed's curve ({x: y}) faded, and their mean over the x every seed has, bold."""
    curves = [c for c in curves if c]
    for c in curves:
        ax.plot(list(c), list(c.values()), color=color, alpha=0.25, lw=1)
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    ax.plot(common, [sum(c[x] for c in curves) / len(curves) for x in common], color=color, lw=2,
            label=f"{label} ({len(curves)} seed{'s' * (len(curves) != 1)})")


def teacher_reward(runs: dict[str, dict[int, list[dict]]], path: str | Path | None = None):
    """Fig. 19: mean teacher reward per outer step for each variant; every seed faded, the mean
    across seeds bold, promotions marked on the seed curves. runs: variant -> seed -> metric rows."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for color, (variant, seeds) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], runs.items()):
            for rows in seeds.values():
                promoted = [(r["step"], r["teacher/reward_mean"]) for r in rows if r.get("promotion")]
                if promoted:
                    ax.scatter(*zip(*promoted), color=color, marker="^", s=30, zorder=3)
            _seeds_and_mean(ax, [{r["step"]: r["teacher/reward_mean"] for r in rows} for rows in seeds.values()],
                            color, variant)
        ax.axhline(0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("outer step")
        ax.set_ylabel("teacher reward (mean over datasets)")
        ax.set_title("Teacher reward; ▲ promotion")
        ax.legend(fontsize=8)
        return _finish(fig, path)


def retrain_rewards(curves: dict[tuple, list[dict]], path: str | Path | None = None):
    """Fresh students' training reward per step, one colour per method (seeds faded, mean bold);
    curves: (pool, method, seed) -> metric rows of the retrain stage."""
    from soar.evaluation import LABELS, ordered

    with plt.rc_context(STYLE):
        pools = sorted({p for p, _, _ in curves})
        fig, axes = plt.subplots(1, len(pools), figsize=(6 * len(pools), 3.5), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, pool in zip(axes[0], pools):
            methods = ordered(dict.fromkeys(m for p, m, _ in curves if p == pool))
            for color, method in zip(colors * 3, methods):
                _seeds_and_mean(ax, [{r["step"]: r["student/reward_mean"] for r in rows}
                                     for (p, m, _), rows in curves.items() if p == pool and m == method], color,
                                LABELS.get(method, method))
            ax.set_xlabel("RLOO step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("training reward (shaped)")
            ax.set_title(f"Fresh students on {pool}")
            ax.legend(fontsize=7)
        return _finish(fig, path)


def pass_at_k_curves(metrics: dict, path: str | Path | None = None):
    """pass@k against k (log axis) per method, one panel per benchmark, with the bootstrap 95% CI
    as a band."""
    from soar.evaluation import LABELS, ordered

    with plt.rc_context(STYLE):
        benches = list(metrics["benchmarks"])
        fig, axes = plt.subplots(1, len(benches), figsize=(5.5 * len(benches), 3.8), squeeze=False)
        ks = metrics["ks"]
        for ax, bench in zip(axes[0], benches):
            rows = metrics["benchmarks"][bench]
            for model in ordered(rows):
                row = rows[model]
                mean = [100 * row["mean"][str(k)] for k in ks]
                lo, hi = zip(*[[100 * c for c in row["ci"][str(k)]] for k in ks])
                (line,) = ax.plot(ks, mean, marker="o", ms=3, label=LABELS.get(model, model))
                ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.12)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xlabel("k")
            ax.set_ylabel("pass@k (%)")
            ax.set_title(bench)
            ax.legend(fontsize=7)
        return _finish(fig, path)


def _errors(values: Sequence[float], cis: Sequence) -> tuple[list[float], list[float]]:
    """yerr below and above each value from its interval (None: no bar); clipped at 0, since an
    interval need not contain its point estimate (round-off, ratio CIs) and matplotlib rejects
    negative error bars."""
    lo = [max(0.0, v - c[0]) if c else 0.0 for v, c in zip(values, cis)]
    hi = [max(0.0, c[1] - v) if c else 0.0 for v, c in zip(values, cis)]
    return lo, hi


def _columns(names) -> list[str]:
    """Teacher variants in the paper's column order (metrics.json stores keys sorted)."""
    from soar.analysis import POOLS

    order = [label for label, _, _ in POOLS]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _ci_bars(ax, x, shares: Sequence[dict], width: float, label: str, color=None):
    """Bars of shares (in %) with their 95% CIs; a missing share (no data) is drawn as 'n/a'."""
    vals = [100 * (s["share"] or 0.0) for s in shares]
    lo, hi = _errors(vals, [[100 * c for c in s["ci"]] if s["ci"] else None for s in shares])
    bars = ax.bar(x, vals, width, yerr=[lo, hi], capsize=2, label=label, color=color)
    for xi, s in zip(x, shares):
        if s["share"] is None:
            ax.text(xi, 1, "n/a", ha="center", fontsize=7)
    return bars


def question_verdicts(metrics: dict, path: str | Path | None = None):
    """Paper's question-analysis table as bars: well-posed, correct (judge) and re-solve agreement
    per teacher variant (left); the judge's error taxonomy (right). Wilson 95% CIs."""
    from soar.prompts import ERROR_TYPES

    variants = metrics["variants"]
    names = _columns(variants)
    x = np.arange(len(names))
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
        if not names:
            _empty(left, "no questions to judge")
            _empty(right, "")
            return _finish(fig, path)
        measures = [("well_posed", "well-posed"), ("correct", "correct (judge)"),
                    ("resolve_correct", "re-solve majority agrees")]
        for i, (key, label) in enumerate(measures):
            _ci_bars(left, x + (i - 1) * 0.27, [variants[v][key] for v in names], 0.27, label)
        left.set_xticks(x, [f"{v}\n({variants[v]['parsed']}/{variants[v]['questions']} parsed)" for v in names],
                        fontsize=8)
        left.set_ylabel("% (of parsed verdicts; re-solve: of boxed)")
        left.set_ylim(0, 105)
        left.legend(fontsize=7)
        left.set_title(f"Judge: {metrics['judge']}")
        errors = [e for e in ERROR_TYPES if e != "none"]
        for i, e in enumerate(errors):
            _ci_bars(right, x + (i - 1.5) * 0.2, [variants[v]["errors"][e] for v in names], 0.2, e)
        right.set_xticks(x, names, fontsize=8)
        right.set_ylabel("% of parsed verdicts")
        right.set_ylim(0, 105)
        right.legend(fontsize=7)
        right.set_title("Error taxonomy")
        return _finish(fig, path)


def vendi_bars(metrics: dict, path: str | Path | None = None):
    """Vendi score per teacher variant: mean over draws of a fixed number of questions, with the
    2.5-97.5% range of the draws."""
    vendi = {k: v for k, v in metrics["vendi"].items() if v["mean"] is not None}
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        if not vendi:
            _empty(ax, "no teacher has 2 or more questions")
            return _finish(fig, path)
        names = _columns(vendi)
        means = [vendi[n]["mean"] for n in names]
        ax.bar(names, means, yerr=_errors(means, [vendi[n]["ci"] for n in names]), capsize=3)
        sizes = sorted({vendi[n]["size"] for n in names})
        ax.set_ylabel("Vendi score (effective # of distinct questions)")
        ax.set_title(f"Diversity: {metrics['embedder']}, {'/'.join(map(str, sizes))} questions per draw")
        return _finish(fig, path)


def curriculum_drift(metrics: dict, path: str | Path | None = None):
    """Per SOAR run, across outer steps: the subject mix of the teacher's questions (nearest MATH
    subject centroid), their length and equation density, and their diversity; promotions dashed."""
    runs = metrics["runs"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(max(1, len(runs)), 2, figsize=(11, 3.2 * max(1, len(runs))), squeeze=False)
        if not runs:
            _empty(axes[0][0], "no SOAR run has samples")
            _empty(axes[0][1], "")
            return _finish(fig, path)
        for (mix, shape), run in zip(axes, runs):
            steps = [s["step"] for s in run["steps"]]
            subjects = list(run["steps"][0]["subjects"]) if run["steps"] else []
            mix.stackplot(steps, [[s["subjects"].get(sub, 0.0) for s in run["steps"]] for sub in subjects],
                          labels=subjects, alpha=0.85)
            mix.set_ylim(0, 1)
            mix.set_ylabel("share of questions")
            mix.set_title(f"{run['variant']} seed {run['seed']}: topic mix")
            shape.plot(steps, [s["equation_density"] for s in run["steps"]], marker="o", ms=3, label="equation density")
            shape.plot(steps, [s["diversity"] for s in run["steps"]], marker="s", ms=3,
                       label="diversity (mean cosine distance)")
            shape.set_ylim(0, 1)
            words = shape.twinx()
            words.plot(steps, [s["length"] for s in run["steps"]], color="grey", ls=":", marker="^", ms=3,
                       label="length (words)")
            words.set_ylabel("words")
            shape.set_title("question shape")
            for ax in (mix, shape):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                for p in run["promotions"]:
                    ax.axvline(p, color="k", ls="--", lw=0.8)
                ax.set_xlabel("outer step")
            lines = shape.get_legend_handles_labels()
            more = words.get_legend_handles_labels()
            shape.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
        if runs:
            axes[0][0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _finish(fig, path)


def question_kinds(metrics: dict, path: str | Path | None = None):
    """What each teacher writes, outer step by outer step: per kind of question (the world's exact
    topics, or nearest MATH subjects), the share of each variant's questions, mean over seeds with
    a band of one SD, and the base teacher's share (Base-T) as a dashed line. A teacher that learns
    moves away from the dashed line; the shuffled control shows how far update noise alone goes."""
    runs, base = metrics["runs"], metrics.get("topics", {}).get("Base-T", {})
    kinds = list(dict.fromkeys(k for r in runs for s in r["steps"] for k in s["subjects"]))
    kinds = [k for k in kinds if base.get(k, 0) >= 0.02
             or any(s["subjects"].get(k, 0) >= 0.02 for r in runs for s in r["steps"])]
    with plt.rc_context(STYLE):
        cols = min(3, max(1, len(kinds)))
        rows = -(-max(1, len(kinds)) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3 * rows), squeeze=False, sharex=True)
        flat = [ax for row in axes for ax in row]
        if not kinds:
            _empty(flat[0], "no SOAR run has samples")
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        variants = list(dict.fromkeys(r["variant"] for r in runs))
        for ax, kind in zip(flat, kinds):
            for color, variant in zip(colors, variants):
                curves = [{s["step"]: s["subjects"].get(kind, 0.0) for s in r["steps"] if s["subjects"]}
                          for r in runs if r["variant"] == variant]
                curves = [c for c in curves if c]
                steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
                if not steps:
                    continue
                values = np.array([[c[x] for x in steps] for c in curves])
                mean, sd = values.mean(0), values.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
                ax.plot(steps, mean, color=color, lw=2, label=f"{variant} ({len(curves)} seeds)")
                ax.fill_between(steps, mean - sd, mean + sd, color=color, alpha=0.18, lw=0)
            if kind in base:
                ax.axhline(base[kind], color="k", ls="--", lw=1, label="base teacher")
            ax.set_title(kind)
            ax.set_ylim(bottom=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in flat[len(kinds):] if kinds else flat[1:]:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("outer step")
        for row in axes:
            row[0].set_ylabel("share of questions")
        if kinds:
            flat[0].legend(fontsize=7)
        fig.suptitle("What each teacher writes, per outer step (mean ± SD over seeds)")
        return _finish(fig, path)


def step_diversity(metrics: dict, path: str | Path | None = None):
    """Fig. 20 (right): diversity of each step's questions over training (mean pairwise cosine
    distance of their embeddings), grounded vs intrinsic; seeds faded, mean bold."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        variants = list(dict.fromkeys(r["variant"] for r in metrics["runs"]))
        for color, variant in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], variants):
            _seeds_and_mean(ax, [{s["step"]: s["diversity"] for s in r["steps"] if s["diversity"] is not None}
                                 for r in metrics["runs"] if r["variant"] == variant], color, variant)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("outer step")
        ax.set_ylabel("mean pairwise cosine distance")
        ax.set_title("Question diversity over training")
        ax.legend(fontsize=8)
        return _finish(fig, path)


def main_table_bars(metrics: dict, path: str | Path | None = None):
    """The main table as bars: pass@k at the largest k per method, one panel per benchmark;
    error bars are the evaluate stage's bootstrap 95% CI (soar.evaluation._means), dots the seeds."""
    from soar.evaluation import LABELS, ordered

    k = str(max(metrics["ks"]))
    benches = list(metrics["benchmarks"])
    with plt.rc_context(STYLE):
        width = max([len(b) for b in metrics["benchmarks"].values()] + [4])
        fig, axes = plt.subplots(1, max(1, len(benches)), figsize=(1.0 + 0.8 * width * max(1, len(benches)), 3.8),
                                 squeeze=False)
        for ax, bench in zip(axes[0], benches):
            rows = metrics["benchmarks"][bench]
            names = ordered(rows)
            means = [100 * rows[n]["mean"][k] for n in names]
            err = _errors(means, [[100 * c for c in rows[n]["ci"][k]] for n in names])
            ax.bar(range(len(names)), means, yerr=err, capsize=3, color="#9ecae1")
            for i, n in enumerate(names):
                seeds = [100 * v for v in rows[n]["per_seed"][k]]
                ax.scatter([i] * len(seeds), seeds, color="k", s=8, zorder=3)
            ax.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names], rotation=35, ha="right", fontsize=8)
            ax.set_ylabel(f"pass@{k} (%)")
            ax.set_title(f"{bench}: pass@{k}, 95% CI")
        return _finish(fig, path)


def oracle_share(metrics: dict, path: str | Path | None = None):
    """Share of the Oracle's gain over Hard-Only that each method recovers, per benchmark and k,
    with the evaluate stage's paired bootstrap CIs (soar.evaluation._means); undefined shares (the
    Oracle gains nothing) are said, not drawn."""
    from soar.evaluation import LABELS, ordered

    benches = list(metrics["oracle_share"])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, max(1, len(benches)), figsize=(6 * max(1, len(benches)), 3.5), squeeze=False)
        if not benches:
            _empty(axes[0][0], "no Oracle and Hard-Only runs to compare")
        for ax, bench in zip(axes[0], benches):
            shares = metrics["oracle_share"][bench]
            ks = metrics["ks"]
            drawn = 0
            for method in ordered(shares):
                by_k = shares[method]
                pts = [(int(k), 100 * by_k[str(k)]["value"], by_k[str(k)]["ci"]) for k in ks
                       if by_k[str(k)]["value"] is not None]
                if not pts:
                    continue
                drawn += 1
                x, y, ci = zip(*pts)
                err = _errors(y, [[100 * c for c in c_] if c_ else None for c_ in ci])
                ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=LABELS.get(method, method))
            ax.axhline(100, color="k", ls=":", lw=0.8)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xlabel("k")
            ax.set_ylabel("Oracle gain recovered (%)")
            ax.set_title(f"{bench}: (M − Hard-Only) / (Oracle − Hard-Only)")
            if drawn:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "undefined at every k:\nthe Oracle gains nothing over Hard-Only (or no Oracle run)",
                        ha="center", va="center", transform=ax.transAxes)
        return _finish(fig, path)


def baseline_across_promotions(runs: dict[str, dict[int, list[dict]]], pq: dict[str, dict[int, list[dict]]],
                               path: str | Path | None = None, *, chars: int = 90):
    """Fig. 6: the baseline student's score on D_train (Q_R) at every outer step of each run, with
    promotions marked and one of the questions promoted there quoted beside the marker.
    runs: variant -> seed -> metric rows; pq: variant -> seed -> PQ records (with promoted_at)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 4))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for color, (variant, seeds) in zip(colors, runs.items()):
            for seed, rows in seeds.items():
                steps = [r["step"] for r in rows]
                ax.plot(steps, [r["student/baseline_score"] for r in rows], color=color, marker="o", ms=3,
                        label=f"{variant} seed {seed}")
                for r in rows:
                    if not r.get("promotion"):
                        continue
                    ax.axvline(r["step"], color=color, ls="--", lw=0.8)
                    promoted = [q for q in pq.get(variant, {}).get(seed, []) if q.get("promoted_at") == r["step"]]
                    if promoted:
                        text = promoted[0]["problem"]
                        text = text if len(text) <= chars else text[: chars - 1] + "…"
                        right = r["step"] > (steps[0] + steps[-1]) / 2  # keep the label inside the axes
                        ax.annotate(f"promoted: {text}", (r["step"], r["student/baseline_score"]), fontsize=7,
                                    xytext=(-5 if right else 5, 12), textcoords="offset points", wrap=True,
                                    ha="right" if right else "left",
                                    bbox={"boxstyle": "round", "fc": "white", "ec": color, "alpha": 0.9})
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("outer step")
        ax.set_ylabel("baseline student score on Q_R")
        ax.set_title("Baseline student across promotions (dashed)")
        ax.legend(fontsize=7)
        return _finish(fig, path)


def sensitivity(grid: dict[tuple[float, int], list[dict]], path: str | Path | None = None):
    """Fig. 17 (tau and n sensitivity), from the sweep stage: per (tau, n) cell, the mean teacher
    reward over outer steps and the promotions made (annotated heatmaps), and each cell's reward
    per outer step with its promotions. grid: (tau, n) -> metric rows of that run."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), squeeze=False)
        done = {cell: rows for cell, rows in grid.items() if rows}
        if not done:
            for ax in axes[0]:
                _empty(ax, "no sweep run has finished a step" if ax is axes[0][0] else "")
            return _finish(fig, path)
        taus, ns = sorted({t for t, _ in grid}), sorted({n for _, n in grid})
        panels = (("mean teacher reward", lambda rows: sum(r["teacher/reward_mean"] for r in rows) / len(rows), "{:.3f}"),
                  ("promotions", lambda rows: rows[-1]["promotions"], "{:.0f}"))
        for ax, (title, value, fmt) in zip(axes[0], panels):
            cells = [[value(done[(t, n)]) if (t, n) in done else float("nan") for n in ns] for t in taus]
            image = ax.imshow(cells, cmap="viridis", aspect="auto", origin="lower")
            for i, row in enumerate(cells):
                for j, v in enumerate(row):
                    ax.text(j, i, "not run" if v != v else fmt.format(v), ha="center", va="center", color="w",
                            fontsize=9, bbox={"facecolor": "k", "alpha": 0.3, "lw": 0})
            ax.set_xticks(range(len(ns)), [str(n) for n in ns])
            ax.set_yticks(range(len(taus)), [str(t) for t in taus])
            ax.set_xlabel("dataset size n")
            ax.set_ylabel("promotion threshold τ")
            ax.set_title(title)
            ax.grid(False)
            fig.colorbar(image, ax=ax, shrink=0.8)
        ax = axes[0][2]
        for (t, n), rows in sorted(done.items()):  # one line style per tau: cells that differ only in
            # tau share the seed, so their lines coincide until a promotion separates them
            line, = ax.plot([r["step"] for r in rows], [r["teacher/reward_mean"] for r in rows], marker="o",
                            ls=("-", "--", ":", "-.")[taus.index(t) % 4], lw=max(0.8, 2.5 - 0.7 * taus.index(t)),
                            label=f"τ={t}, n={n}")
            promoted = [(r["step"], r["teacher/reward_mean"]) for r in rows if r.get("promotion")]
            if promoted:
                ax.scatter(*zip(*promoted), color=line.get_color(), marker="^", s=60, zorder=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("outer step")
        ax.set_ylabel("teacher reward")
        ax.set_title("Reward per step; ▲ promotion")
        ax.legend(fontsize=7)
        return _finish(fig, path)
