"""soar.metrics: pass@k against brute force and exact arithmetic; aggregation; bootstrap CIs."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from soar.metrics import aggregate_seeds, bootstrap_ci, mean_pass_at_k, pass_at_k, pass_at_k_array


def brute_force(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


def exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_equals_enumeration_for_small_n(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            want = float(brute_force(n, c, k))
            assert pass_at_k(n, c, k) == pytest.approx(want, rel=1e-13, abs=1e-15), (n, c, k)


@pytest.mark.parametrize("n", [128, 1000, 1024])
def test_pass_at_k_matches_exact_combinatorics_at_large_n(n):
    # Relative tolerance: small pass@k values (c=1, k=1 -> 1/n) must be accurate too, not just
    # within an absolute 1e-12 of zero.
    ks = sorted({1, 2, 4, 8, 16, 32, 64, 128, n // 2, n - 1, n})
    cs = sorted(set(range(0, 12)) | set(range(0, n + 1, 37)) | {n - 1, n})
    for c in cs:
        for k in ks:
            want = float(exact(n, c, k))
            assert pass_at_k(n, c, k) == pytest.approx(want, rel=1e-12, abs=0), (n, c, k)


@pytest.mark.parametrize("n,c,k,expected,why", [
    (32, 0, 1, 0.0, "no success -> exactly 0"),
    (32, 0, 32, 0.0, "no success even with k = n"),
    (32, 32, 1, 1.0, "all correct"),
    (32, 1, 32, 1.0, "k = n with one success: n - c < k"),
    (32, 31, 2, 1.0, "n - c = 1 < k = 2: every pair holds a success"),
    (32, 8, 1, 0.25, "pass@1 = c / n"),
    (4, 2, 2, 5 / 6, "1 - C(2,2)/C(4,2) = 1 - 1/6"),
])
def test_pass_at_k_edge_cases(n, c, k, expected, why):
    got = pass_at_k(n, c, k)
    assert got == pytest.approx(expected, rel=1e-15, abs=0), why
    if expected in (0.0, 1.0):
        assert got == expected and math.copysign(1, got) == 1, why  # exact, and not -0.0


@pytest.mark.parametrize("n,c,k,exc,why", [
    (10, -1, 1, ValueError, "negative c"),
    (10, 11, 1, ValueError, "c > n"),
    (10, 3, 0, ValueError, "k = 0"),
    (10, 3, 11, ValueError, "k > n: estimator undefined"),
    (0, 0, 1, ValueError, "no samples"),
    (10, 3.0, 1, TypeError, "float count"),
    (10.5, 3, 1, TypeError, "float n"),
])
def test_pass_at_k_errors(n, c, k, exc, why):
    with pytest.raises(exc):
        pass_at_k(n, c, k)


def test_pass_at_k_monotone_in_k_and_c():
    n = 128
    for c in (1, 5, 40):
        vals = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert all(a <= b for a, b in zip(vals, vals[1:]))
    vals = [pass_at_k(n, c, 8) for c in range(n + 1)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))


def test_array_equals_scalar():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 33, size=500)
    for k in (1, 4, 8, 16, 32):
        got = pass_at_k_array(32, counts, k)
        assert got.shape == (500,) and got.dtype == np.float64
        assert np.array_equal(got, [pass_at_k(32, int(c), k) for c in counts])
    ns = rng.integers(16, 40, size=200)
    cs = np.array([rng.integers(0, n + 1) for n in ns])
    want = [pass_at_k(int(n), int(c), 16) for n, c in zip(ns, cs)]
    assert np.array_equal(pass_at_k_array(ns, cs, 16), want)
    assert pass_at_k_array(8, np.array([[0, 8], [1, 2]]), 2).shape == (2, 2)
    assert pass_at_k_array(8, [], 2).shape == (0,)


@pytest.mark.parametrize("n,c,k,exc,why", [
    (8, [0, 9], 1, ValueError, "one count above n"),
    (8, [0.0, 1.0], 1, TypeError, "float counts"),
    ([8, 4], [0, 1, 2], 1, ValueError, "n and c shapes disagree"),
])
def test_array_errors(n, c, k, exc, why):
    with pytest.raises(exc):
        pass_at_k_array(n, c, k)


def test_mean_pass_at_k():
    counts = [0, 0, 1, 16, 32]
    got = mean_pass_at_k(counts, 32, [1, 4, 32])
    assert set(got) == {1, 4, 32}
    assert got[1] == pytest.approx((0 + 0 + 1 / 32 + 0.5 + 1) / 5)
    assert got[32] == pytest.approx(3 / 5)  # every problem with >= 1 success counts at k = n
    assert all(0.0 <= v <= 1.0 for v in got.values())  # fractions, not percentages
    with pytest.raises(ValueError):
        mean_pass_at_k([], 32, [1])
    with pytest.raises(ValueError):
        mean_pass_at_k([1, 2], 32, [64])


@pytest.mark.parametrize("values,mean,std", [
    ([0.2], 0.2, 0.0),
    ([1.0, 3.0], 2.0, math.sqrt(2.0)),  # ddof=1: population SD would be 1.0
    ([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 5.0, math.sqrt(32 / 7)),
])
def test_aggregate_seeds(values, mean, std):
    got = aggregate_seeds(values)
    assert got == {"mean": pytest.approx(mean), "std": pytest.approx(std), "n": len(values)}


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [[1.0, 2.0]]])
def test_aggregate_seeds_errors(values):
    with pytest.raises(ValueError):
        aggregate_seeds(values)


def test_bootstrap_ci():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 0.1, size=400)
    lo, hi = bootstrap_ci(x, seed=0)
    assert lo < x.mean() < hi
    se = x.std(ddof=1) / math.sqrt(x.size)  # the normal-theory 95% interval is +- 1.96 se
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(x, seed=0) == (lo, hi)  # deterministic
    assert bootstrap_ci(x, seed=1) != (lo, hi)
    lo90, hi90 = bootstrap_ci(x, seed=0, alpha=0.1)
    assert lo < lo90 < hi90 < hi  # narrower at lower confidence
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    mlo, mhi = bootstrap_ci(x, stat=np.median, n_boot=200)
    assert mlo < np.median(x) < mhi


@pytest.mark.parametrize("kwargs", [
    {"values": []}, {"values": [1.0], "alpha": 0.0}, {"values": [1.0], "n_boot": 0}])
def test_bootstrap_ci_errors(kwargs):
    with pytest.raises(ValueError):
        bootstrap_ci(**kwargs)


def test_lexical_diversity_bounds():
    from soar.metrics import lexical_diversity

    assert lexical_diversity(["a b c", "a b c"]) == 0.0  # identical questions
    assert lexical_diversity(["a b", "c d"]) == 1.0  # no shared word
    assert lexical_diversity(["a b", "a c"]) == pytest.approx(2 / 3)  # 1 - {a} / {a, b, c}
    assert lexical_diversity(["only one"]) == 0.0
