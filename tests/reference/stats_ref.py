"""Slow twin of fusechat.stages.stats.seed_item_bootstrap: one replicate at a time, in plain loops,
from the same random draws (items, then b's seed rows, then a's)."""
import numpy as np


def seed_item_bootstrap_ref(b, a=None, *, n_boot=2000, alpha=0.05, seed=0):
    b = [list(map(float, row)) for row in np.atleast_2d(np.asarray(b, dtype=np.float64))]
    a = None if a is None else [list(map(float, row))
                                for row in np.atleast_2d(np.asarray(a, dtype=np.float64))]
    rng = np.random.default_rng(seed)
    n = len(b[0])
    items = rng.integers(0, n, size=(n_boot, n))
    rows_b = rng.integers(0, len(b), size=(n_boot, len(b)))
    rows_a = None if a is None else rng.integers(0, len(a), size=(n_boot, len(a)))

    def mean_of(x, rows, drawn):
        total = 0.0
        for r in rows:
            total += sum(x[r][i] for i in drawn) / len(drawn)
        return total / len(rows)

    boots = []
    for k in range(n_boot):
        v = mean_of(b, rows_b[k], items[k])
        if a is not None:
            v -= mean_of(a, rows_a[k], items[k])
        boots.append(v)
    boots = np.array(boots)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    diff = float(np.mean(b)) - (0.0 if a is None else float(np.mean(a)))
    return {"diff": diff, "low": float(lo), "high": float(hi),
            "p_le_0": float((boots <= 0).mean())}
