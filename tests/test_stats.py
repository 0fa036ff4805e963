"""Bootstrap intervals against the normal approximation, and paired-comparison invariants."""
import numpy as np
import pytest

from fusechat.stages.stats import bootstrap_ci, paired_bootstrap, seed_item_bootstrap


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


def test_seed_item_bootstrap_matches_its_slow_twin():
    from reference.stats_ref import seed_item_bootstrap_ref

    rng = np.random.default_rng(3)
    a = rng.random((3, 40))
    b = rng.random((4, 40)) + 0.05
    for args in ((b, a), (b, None), (b[:1], a[:1])):
        got = seed_item_bootstrap(*args, n_boot=300, seed=7)
        want = seed_item_bootstrap_ref(*args, n_boot=300, seed=7)
        for k in want:
            assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_seed_variance_widens_what_item_resampling_alone_misses():
    """Training seeds that move a model by more than its items vary: paired item bootstraps
    of single runs (or of seed means) exclude zero, the seed-aware interval does not."""
    rng = np.random.default_rng(4)
    items = rng.normal(0, 1, 200)
    a = items + np.array([[-0.15], [0.0], [0.15]])        # baseline: 3 seeds
    b = items + np.array([[-0.05], [0.1], [0.25]])        # +0.1 on average, seed spread 0.3
    b = b + rng.normal(0, 0.01, b.shape)
    item_only = [paired_bootstrap(a[s], b[s]) for s in range(3)]
    assert all(r["low"] > 0 or r["high"] < 0 for r in item_only)  # each run "significant"
    means = paired_bootstrap(a.mean(0), b.mean(0))
    assert means["low"] > 0
    seed_aware = seed_item_bootstrap(b, a)
    assert seed_aware["diff"] == pytest.approx(b.mean() - a.mean())
    assert seed_aware["low"] < 0 < seed_aware["high"]
    # with identical seeds the seed draw changes nothing: the item-paired interval comes back
    same = seed_item_bootstrap(np.repeat(b[1:2], 3, 0), np.repeat(a[1:2], 3, 0))
    assert same["low"] > 0


def test_seed_item_bootstrap_refuses_unpaired_items():
    with pytest.raises(ValueError, match="same items"):
        seed_item_bootstrap(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(ValueError, match="non-empty"):
        seed_item_bootstrap(np.zeros((0, 5)))
