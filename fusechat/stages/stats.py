"""Confidence intervals by bootstrap, plain and paired.

Small improvements from fusion need significance tests (the paper's reviewers asked for
them): a paired bootstrap resamples the same items for both models, so per-item difficulty
cancels and the interval is on the difference itself.
"""
import numpy as np


def bootstrap_ci(values, *, n_boot=2000, alpha=0.05, seed=0, stat=np.mean):
    """(estimate, low, high) of stat(values) with a percentile bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("values: a non-empty 1-d sequence is required")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    boots = stat(v[idx], axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(stat(v)), float(lo), float(hi)


def paired_bootstrap(a, b, *, n_boot=2000, alpha=0.05, seed=0):
    """Difference mean(b) - mean(a) over paired items, with its interval and the bootstrap
    probability that the difference is <= 0 (a one-sided p-value for "b is better").

    Returns dict(diff, low, high, p_le_0).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a, b: paired non-empty 1-d sequences of equal length required, "
                         f"got shapes {a.shape} and {b.shape}")
    d = b - a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(d.mean()), "low": float(lo), "high": float(hi),
            "p_le_0": float((boots <= 0).mean())}


def seed_item_bootstrap(b, a=None, *, n_boot=2000, alpha=0.05, seed=0):
    """A bootstrap interval that sees training-seed variance as well as item variance.

    ``b`` [S_b, n] holds per-item scores of one model trained with S_b training seeds (one
    row per seed, the same n held-out items in every row); ``a`` [S_a, n], if given, the
    baseline's, on the same items. Each replicate draws n items with replacement (the same
    draw for both models: the comparison stays paired on items) and, independently for each
    model, S rows with replacement among its seeds; the statistic is the mean of b's drawn
    rows over the drawn items, minus a's. So a difference that one training seed's luck
    could make shows up as a wide interval, which resampling items alone (paired_bootstrap)
    cannot show. With one seed per model it is the item bootstrap.

    Draw order (the reference twin in tests/reference/stats_ref.py follows it): items
    [n_boot, n], then b's seed rows [n_boot, S_b], then a's [n_boot, S_a].
    Returns dict(diff, low, high, p_le_0, seeds_b, seeds_a) (diff: the plain mean, or the
    difference of plain means, over all seeds and items).
    """
    b = _seed_matrix(b, "b")
    a = None if a is None else _seed_matrix(a, "a")
    if a is not None and a.shape[1] != b.shape[1]:
        raise ValueError(f"a, b: scores on the same items required, got {a.shape[1]} and "
                         f"{b.shape[1]} items")
    rng = np.random.default_rng(seed)
    n = b.shape[1]
    items = rng.integers(0, n, size=(n_boot, n))

    def replicate_means(x):
        rows = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
        per_seed = x[:, items].mean(axis=2)  # [S, n_boot]: each seed's mean on the drawn items
        return np.take_along_axis(per_seed.T, rows, axis=1).mean(axis=1)

    boots = replicate_means(b)
    diff = b.mean()
    if a is not None:
        boots = boots - replicate_means(a)
        diff = diff - a.mean()
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(diff), "low": float(lo), "high": float(hi),
            "p_le_0": float((boots <= 0).mean()), "seeds_b": int(b.shape[0]),
            "seeds_a": 0 if a is None else int(a.shape[0])}


def _seed_matrix(x, name):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name}: a non-empty [seeds, items] array is required, got shape "
                         f"{x.shape}")
    return x
