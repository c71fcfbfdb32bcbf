"""Evaluation metrics: unbiased pass@k, aggregation over seeds, bootstrap confidence intervals.

Paper: the evaluation protocol (PAPER.md, "Data and evaluation protocol"): pass@k for
k in {1, 4, 8, 16, 32} from 32 samples per test problem, reported as mean +- SD over seeds.
All values here are fractions in [0, 1]; tables and figures multiply by 100 for the paper's %.

pass@k is the unbiased estimator of Chen et al. 2021 (reference implementation: `estimate_pass_at_k`
in openai/human-eval): with n samples of which c are correct,
    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i).
Bootstrapped "best of k" estimates (as in verl) are biased low for k close to n; this is not.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n samples of
    which c are correct, is correct. Exactly 1.0 when n - c < k (every k-subset holds a success)."""
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    # The human-eval product, summed in log space: 1 - prod(x) loses digits when pass@k is small
    # (relative error ~1e-14 at n=1000); -expm1(sum(log1p(.))) stays within a few ulp.
    log_fail = float(np.sum(np.log1p(-k / np.arange(n - c + 1, n + 1, dtype=np.float64))))
    return 0.0 - math.expm1(log_fail)  # 0.0 - ... turns -0.0 (c = 0) into 0.0


def pass_at_k_array(n: int | Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray,
                    k: int) -> np.ndarray:
    """pass_at_k per problem: c is an array of success counts, n a scalar or an array like c.
    Each distinct (n, c) pair is computed once, so the result equals the scalar function exactly."""
    c = np.asarray(c)
    n = np.broadcast_to(np.asarray(n), c.shape)
    for name, a in (("n", n), ("c", c)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    if c.size == 0:
        return np.zeros(c.shape, dtype=np.float64)
    pairs, inverse = np.unique(np.stack([n.ravel(), c.ravel()], axis=1), axis=0, return_inverse=True)
    values = np.array([pass_at_k(int(ni), int(ci), k) for ni, ci in pairs], dtype=np.float64)
    return values[inverse.ravel()].reshape(c.shape)


def mean_pass_at_k(counts: Sequence[int] | np.ndarray, n: int | Sequence[int],
                   ks: Iterable[int]) -> dict[int, float]:
    """{k: mean over problems of pass@k}, as fractions in [0, 1]; counts[i] = successes of
    problem i out of n (or n[i]) samples."""
    counts = np.asarray(counts)
    if counts.size == 0:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return {int(k): float(np.mean(pass_at_k_array(n, counts, k))) for k in ks}


def aggregate_seeds(values: Sequence[float]) -> dict:
    """{'mean', 'std', 'n'} over seeds; std is the sample SD (ddof=1), 0.0 for a single seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of values, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"non-finite value among {x.tolist()}")
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return {"mean": float(np.mean(x)), "std": std, "n": int(x.size)}


def bootstrap_ci(values: Sequence[float], *, stat: Callable = np.mean, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of `stat` over `values` (e.g. per-problem
    pass@k or per-seed scores), resampling with replacement; deterministic for a seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of values, got shape {x.shape}")
    if not 0.0 < alpha < 1.0 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # (n_boot, n) resample indices
    stats = np.array([stat(x[row]) for row in idx], dtype=np.float64)  # (n_boot,)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def wilson_ci(successes: int, n: int, *, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson score 95% interval of a proportion successes / n (None when n = 0). Unlike the
    normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n, which small judged
    samples hit often."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}, {n}")
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def lexical_diversity(texts: list[str]) -> float:
    """Mean pairwise Jaccard distance between the word sets of `texts` (0: all identical, 1: no
    shared word). A cheap per-step diversity log; the embedding-based Vendi score is in analysis."""
    sets = [set(t.lower().split()) for t in texts]
    pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    if not pairs:
        return 0.0
    return sum(1 - len(a & b) / max(len(a | b), 1) for a, b in pairs) / len(pairs)
