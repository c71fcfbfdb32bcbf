"""One function per figure, one style. Reads plain numbers (from results/), writes PNG and PDF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: notebooks and DVC stages write files
import matplotlib.pyplot as plt  # noqa: E402

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


def _finish(fig, path: str | Path | None):
    """Save when a path is given (DVC stages), else just return the figure (inline in notebooks)."""
    if path is None:
        fig.tight_layout()
        return fig
    return _save(fig, path)


def teacher_reward(runs: dict[str, dict[int, list[dict]]], path: str | Path | None = None):
    """Fig. 19: mean teacher reward per outer step for each variant; every seed faded, the mean
    across seeds bold, promotions marked on the seed curves. runs: variant -> seed -> metric rows."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for color, (variant, seeds) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], runs.items()):
            curves = []
            for rows in seeds.values():
                steps = [r["step"] for r in rows]
                reward = [r["teacher/reward_mean"] for r in rows]
                curves.append(dict(zip(steps, reward)))
                ax.plot(steps, reward, color=color, alpha=0.25, lw=1)
                promoted = [(r["step"], r["teacher/reward_mean"]) for r in rows if r.get("promotion")]
                if promoted:
                    ax.scatter(*zip(*promoted), color=color, marker="^", s=30, zorder=3)
            common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            mean = [sum(c[s] for c in curves) / len(curves) for s in common]
            ax.plot(common, mean, color=color, lw=2, label=f"{variant} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("outer step")
        ax.set_ylabel("teacher reward (mean over datasets)")
        ax.set_title("Teacher reward; ▲ promotion")
        ax.legend(fontsize=8)
        return _finish(fig, path)


def retrain_rewards(curves: dict[tuple, list[dict]], path: str | Path | None = None):
    """Fresh students' training reward per step, one colour per method (seeds faded, mean bold);
    curves: (pool, method, seed) -> metric rows of the retrain stage."""
    with plt.rc_context(STYLE):
        pools = sorted({p for p, _, _ in curves})
        fig, axes = plt.subplots(1, len(pools), figsize=(6 * len(pools), 3.5), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, pool in zip(axes[0], pools):
            methods = list(dict.fromkeys(m for p, m, _ in curves if p == pool))
            for color, method in zip(colors * 3, methods):
                runs = [rows for (p, m, _), rows in curves.items() if p == pool and m == method]
                for rows in runs:
                    ax.plot([r["step"] for r in rows], [r["student/reward_mean"] for r in rows], color=color,
                            alpha=0.25, lw=1)
                steps = sorted(set.intersection(*({r["step"] for r in rows} for rows in runs)))
                mean = [sum(next(r["student/reward_mean"] for r in rows if r["step"] == s) for rows in runs) / len(runs)
                        for s in steps]
                ax.plot(steps, mean, color=color, lw=2, label=method)
            ax.set_xlabel("RLOO step")
            ax.set_ylabel("training reward (shaped)")
            ax.set_title(f"Fresh students on {pool}")
            ax.legend(fontsize=7)
        return _finish(fig, path)


def pass_at_k_curves(metrics: dict, path: str | Path | None = None):
    """pass@k against k (log axis) per method, one panel per benchmark, with the bootstrap 95% CI
    as a band."""
    with plt.rc_context(STYLE):
        benches = list(metrics["benchmarks"])
        fig, axes = plt.subplots(1, len(benches), figsize=(5.5 * len(benches), 3.8), squeeze=False)
        ks = metrics["ks"]
        for ax, bench in zip(axes[0], benches):
            for model, row in metrics["benchmarks"][bench].items():
                mean = [100 * row["mean"][str(k)] for k in ks]
                lo, hi = zip(*[[100 * c for c in row["ci"][str(k)]] for k in ks])
                (line,) = ax.plot(ks, mean, marker="o", ms=3, label=model)
                ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.12)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xlabel("k")
            ax.set_ylabel("pass@k (%)")
            ax.set_title(bench)
            ax.legend(fontsize=7)
        return _finish(fig, path)
