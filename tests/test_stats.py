"""Bootstrap intervals against the normal approximation, and paired-comparison invariants."""
import numpy as np
import pytest

from fusechat.stats import bootstrap_ci, paired_bootstrap


def test_bootstrap_ci_matches_normal_approximation():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=2000)
    est, lo, hi = bootstrap_ci(x, n_boot=4000)
    assert est == pytest.approx(x.mean())
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert lo == pytest.approx(est - half, abs=0.25 * half)
    assert hi == pytest.approx(est + half, abs=0.25 * half)


def test_paired_bootstrap_cancels_item_difficulty():
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0, 5, size=300)  # huge between-item spread
    a = difficulty + rng.normal(0, 0.1, 300)
    b = a + 0.2                              # b better by exactly 0.2 on every item
    r = paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(0.2) and r["low"] > 0.19 and r["p_le_0"] == 0.0
    same = paired_bootstrap(a, a)
    assert same["diff"] == 0.0 and same["low"] == 0.0 and same["high"] == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap([1, 2], [1, 2, 3])
