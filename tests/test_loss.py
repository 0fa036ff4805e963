"""fusechat.loss (C kernels) against the float64 twins in tests/reference/loss_ref.py, on odd
shapes (V = 1271, N prime), every logits dtype, and the edge cases of losses.md 10."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusechat.loss import fusion_loss, hf_shift_labels, topk_and_ce
from reference.loss_ref import fusion_loss_ref, topk_ce_ref

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BF16]
# |got - ref| <= RTOL * |ref| + ATOL * scale: the gradient is rounded once to the dtype
RTOL = {"float32": 2e-6, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
ATOL = {"float32": 1e-9, "float16": 6e-8, "bfloat16": 1e-9}
N, V = 37, 1271


def make(n=N, v=V, k=10, dtype=np.float32, seed=0, scale=3.0, ignore_frac=0.2, empty_rows=()):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, v)) * scale).astype(dtype)
    y = rng.integers(0, v, n)
    y[rng.random(n) < ignore_frac] = -100
    ids = np.stack([rng.choice(v, k, replace=False) for _ in range(n)]).astype(np.int32)
    pad = rng.random((n, k)) < 0.25  # padding anywhere in the row
    ids[pad] = -1
    for r in empty_rows:
        ids[r] = -1
    vals = (rng.standard_normal((n, k)) * 2).astype(np.float32)
    return z, y, ids, vals


def check(res, ref, dtype):
    loss, row_loss, grad = ref
    assert res.loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(res.row_loss, row_loss, rtol=1e-5, atol=1e-5)
    g = res.grad.astype(np.float64).reshape(grad.shape)
    assert np.all(np.isfinite(g))
    err = np.abs(g - grad)
    bound = RTOL[dtype.name] * np.abs(grad) + ATOL[dtype.name] + 2e-7 * np.abs(grad).max()
    bad = np.argwhere(err > bound)
    assert bad.size == 0, f"{dtype}: first mismatch at {bad[0]}: {g[tuple(bad[0])]} vs " \
                          f"{grad[tuple(bad[0])]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 7, 64])
@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_against_twin(dtype, k, kind):
    z, y, ids, vals = make(k=k, dtype=dtype, seed=k, empty_rows=(2, 11))
    res = fusion_loss(z, y, ids, vals, kind=kind, lm_weight=0.9)
    ref = fusion_loss_ref(z.astype(np.float64), y, ids, vals, kind=kind, lm_weight=0.9)
    check(res, ref, dtype)
    assert res.n_supervised == int(np.sum(y != -100))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("lm_weight", [0.0, 0.3, 1.0])
def test_temperature_and_weights(temperature, lm_weight):
    z, y, ids, vals = make(seed=3)
    res = fusion_loss(z, y, ids, vals, temperature=temperature, lm_weight=lm_weight)
    check(res, fusion_loss_ref(z, y, ids, vals, temperature=temperature, lm_weight=lm_weight),
          np.dtype(np.float32))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction):
    z, y, ids, vals = make(seed=4)
    res = fusion_loss(z, y, ids, vals, reduction=reduction)
    check(res, fusion_loss_ref(z, y, ids, vals, reduction=reduction), np.dtype(np.float32))
    if reduction == "none":
        assert res.loss == pytest.approx(res.row_loss.sum(dtype=np.float64), rel=1e-7)


def test_global_normalizer():
    """Gradient accumulation: two micro-batches with one global count equal one batch."""
    z, y, ids, vals = make(seed=5)
    whole = fusion_loss(z, y, ids, vals)
    n_total = whole.n_supervised
    parts = [fusion_loss(z[s], y[s], ids[s], vals[s], normalizer=n_total)
             for s in (slice(0, 20), slice(20, None))]
    assert parts[0].loss + parts[1].loss == pytest.approx(whole.loss, rel=1e-6)
    np.testing.assert_allclose(np.concatenate([p.grad for p in parts]), whole.grad, rtol=1e-6,
                               atol=1e-12)
    check(parts[0], fusion_loss_ref(z[:20], y[:20], ids[:20], vals[:20], normalizer=n_total),
          np.dtype(np.float32))


def test_fallback_target():
    z, y, ids, vals = make(seed=6, empty_rows=(1, 4, 9))
    _, _, fids, fvals = make(seed=7, k=5, empty_rows=(4,))  # row 4: gold one-hot
    res = fusion_loss(z, y, ids, vals, fallback_ids=fids, fallback_values=fvals)
    check(res, fusion_loss_ref(z, y, ids, vals, fids, fvals), np.dtype(np.float32))


def test_no_target_is_plain_ce():
    z, y, _, _ = make(seed=8)
    res = fusion_loss(z, y, lm_weight=0.4)
    ce = fusion_loss(z, y, lm_weight=1.0)
    assert res.loss == pytest.approx(ce.loss, rel=1e-6)
    check(res, fusion_loss_ref(z, y, lm_weight=1.0), np.dtype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_ignored_rows_give_zero(dtype):
    z, _, ids, vals = make(dtype=dtype, seed=9)
    y = np.full(N, -100)
    res = fusion_loss(z, y, ids, vals)
    assert res.loss == 0.0 and res.n_supervised == 0
    assert np.all(res.grad.astype(np.float32) == 0) and np.all(res.row_loss == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extreme_logits(dtype):
    z, y, ids, vals = make(dtype=np.float32, seed=10)
    z = np.where(np.random.default_rng(1).random(z.shape) < 0.5, -1e4, 1e4).astype(dtype)
    z[:, :3] = np.array([1e4, 9999, -1e4], dtype=np.float32).astype(dtype)
    res = fusion_loss(z, y, ids, vals)
    assert np.isfinite(res.loss) and np.all(np.isfinite(res.grad.astype(np.float32)))
    check(res, fusion_loss_ref(z.astype(np.float64), y, ids, vals), dtype)


def test_float64_path_is_exact():
    """F64 logits (accepted for gradient checks) run in double end to end."""
    z, y, ids, vals = make(seed=21)
    z = z.astype(np.float64)
    res = fusion_loss(z, y, ids, vals, temperature=0.8, kind="kl")
    loss, row_loss, grad = fusion_loss_ref(z, y, ids, vals, temperature=0.8, kind="kl")
    assert res.loss == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(res.grad, grad, rtol=1e-12, atol=1e-17)


def test_one_entry_targets():
    z, y, ids, vals = make(k=1, seed=11)
    check(fusion_loss(z, y, ids, vals), fusion_loss_ref(z, y, ids, vals), np.dtype(np.float32))


def test_minus_inf_logits_outside_target():
    """Masked vocabulary entries (-inf) get probability 0 and a zero gradient."""
    z, y, ids, vals = make(seed=12, ignore_frac=0.0)
    z[:, -50:] = -np.inf
    ids[ids >= V - 50] = -1
    y = np.minimum(y, V - 51)
    res = fusion_loss(z, y, ids, vals)
    assert np.all(res.grad[:, -50:] == 0)
    check(res, fusion_loss_ref(z, y, ids, vals), np.dtype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_and_loss_only(dtype):
    z, y, ids, vals = make(dtype=dtype, seed=13)
    z0 = z.copy()
    out = fusion_loss(z, y, ids, vals)
    np.testing.assert_array_equal(z, z0)  # the input is untouched
    only = fusion_loss(z, y, ids, vals, grad=False)
    assert only.grad is None and only.loss == out.loss
    inpl = fusion_loss(z, y, ids, vals, inplace=True)
    assert inpl.grad is z and inpl.loss == out.loss
    np.testing.assert_array_equal(z.view(np.uint8), out.grad.view(np.uint8))


def test_thread_count_does_not_change_bits():
    z, y, ids, vals = make(n=101, seed=14)
    a = fusion_loss(z, y, ids, vals, threads=1)
    b = fusion_loss(z, y, ids, vals, threads=3)
    assert a.loss == b.loss
    np.testing.assert_array_equal(a.grad, b.grad)


def test_leading_dims_and_hf_shift():
    rng = np.random.default_rng(15)
    z = rng.standard_normal((3, 7, 50)).astype(np.float32)
    labels = rng.integers(0, 50, (3, 7))
    labels[0, :3] = -100
    shifted = hf_shift_labels(labels)
    assert np.all(shifted[:, -1] == -100) and np.all(shifted[:, :-1] == labels[:, 1:])
    res = fusion_loss(z, shifted, lm_weight=1.0)
    assert res.grad.shape == z.shape and np.all(res.grad[:, -1] == 0)
    check(res, fusion_loss_ref(z.reshape(-1, 50), shifted.reshape(-1), lm_weight=1.0),
          np.dtype(np.float32))


@pytest.mark.parametrize("mutate, match", [
    (lambda y, i, v: i.__setitem__((5, 0), V), "target_ids row 5 entry 0: id 1271"),
    (lambda y, i, v: i.__setitem__((6, 1), -2), "target_ids row 6 entry 1: id -2"),
    (lambda y, i, v: i.__setitem__((7, slice(0, 2)), 3), "target_ids row 7: id 3 appears twice"),
    (lambda y, i, v: (i.__setitem__((8, 0), 4), v.__setitem__((8, 0), np.nan)),
     "target_values row 8 entry 0 .id 4.: value nan"),
    (lambda y, i, v: y.__setitem__(9, V + 5), "labels row 9: label 1276"),
    (lambda y, i, v: y.__setitem__(10, -1), "labels row 10: label -1"),
])
def test_validation_names_argument_and_row(mutate, match):
    z, y, ids, vals = make(seed=16, ignore_frac=0.0)
    mutate(y, ids, vals)
    with pytest.raises(ValueError, match=match):
        fusion_loss(z, y, ids, vals)


def test_validation_switch():
    z, y, ids, vals = make(seed=17)
    vals[3, 0] = np.inf
    ids[3, 0] = 5
    with pytest.raises(ValueError, match="not finite"):
        fusion_loss(z, y, ids, vals)
    fusion_loss(z, y, ids, vals, validate=False)  # the caller vouches for the values
    ids[4, 0] = V + 1  # ranges are checked even then: the kernel indexes with them
    with pytest.raises(ValueError, match="row 4"):
        fusion_loss(z, y, ids, vals, validate=False)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(lm_weight=1.5), ValueError, "lm_weight"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(kind="js"), ValueError, "kind"),
    (dict(reduction="batchmean"), ValueError, "reduction"),
    (dict(normalizer=0.0), ValueError, "normalizer"),
])
def test_bad_options(kwargs, exc, match):
    z, y, ids, vals = make(n=5, seed=18)
    with pytest.raises(exc, match=match):
        fusion_loss(z, y, ids, vals, **kwargs)


def test_bad_shapes_and_dtypes():
    z, y, ids, vals = make(n=5, seed=19)
    with pytest.raises(TypeError, match="float32, float16, bfloat16 or float64"):
        fusion_loss(z.astype(np.int32), y, ids, vals)
    with pytest.raises(ValueError, match="labels has 4 entries"):
        fusion_loss(z, y[:4], ids, vals)
    with pytest.raises(ValueError, match="same shape"):
        fusion_loss(z, y, ids, vals[:, :3])
    with pytest.raises(ValueError, match="target_ids has 4 rows"):
        fusion_loss(z, y, ids[:4], vals[:4])


# ---------------------------------------------------------------------------------------
# top-k + CE


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 10, 64])
def test_topk_against_twin_and_argsort(dtype, k):
    rng = np.random.default_rng(k)
    z = (rng.standard_normal((N, V)) * 4).astype(dtype)
    z[3] = np.round(z[3].astype(np.float32))  # many ties
    y = rng.integers(0, V, N)
    y[[0, 5]] = -100
    offs = np.array([0, 10, 10, 30, N])  # an empty sequence
    t = topk_and_ce(z, y, k, seq_offsets=offs)
    ids, vals, ce, seq_ce, seq_has = topk_ce_ref(z.astype(np.float64), y, k, offs)
    np.testing.assert_array_equal(t.ids, ids)
    np.testing.assert_array_equal(t.logits, vals.astype(np.float32))
    # independent: numpy's stable argsort on the negated values
    order = np.argsort(-z.astype(np.float64), axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(t.ids, order)
    np.testing.assert_allclose(t.token_ce, ce, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(t.seq_ce, seq_ce, rtol=2e-6)
    np.testing.assert_array_equal(t.seq_has, seq_has)
    assert t.seq_has[1] == 0 and t.seq_ce[1] == 0


def test_topk_minus_inf_rows_and_nan():
    z = np.zeros((4, 20), np.float32)
    z[0] = -np.inf                      # all -inf: ids 0..k-1, CE NaN like torch
    z[1, 5:] = -np.inf                  # masked vocabulary
    z[2, 7] = np.nan                    # NaN ranks first, as in torch.topk
    z[3] = np.arange(20)[::-1]
    y = np.array([3, 2, 1, 0])
    t = topk_and_ce(z, y, 6)
    assert list(t.ids[0]) == [0, 1, 2, 3, 4, 5] and np.all(t.logits[0] == -np.inf)
    assert np.isnan(t.token_ce[0])
    assert list(t.ids[1][:5]) == [0, 1, 2, 3, 4] and np.all(t.logits[1][5:] == -np.inf)
    assert t.token_ce[1] == pytest.approx(np.log(5))
    assert t.ids[2][0] == 7 and np.isnan(t.logits[2][0]) and np.isnan(t.token_ce[2])
    assert list(t.ids[3]) == [0, 1, 2, 3, 4, 5]


def test_topk_3d_shift_and_no_labels():
    rng = np.random.default_rng(20)
    z = rng.standard_normal((2, 6, 30)).astype(np.float32)
    labels = rng.integers(0, 30, (2, 6))
    labels[1] = -100  # second sequence has no supervised token
    t = topk_and_ce(z, labels, 3, shift=True)
    sh = hf_shift_labels(labels)
    _, _, ce, seq_ce, seq_has = topk_ce_ref(z.reshape(-1, 30), sh.reshape(-1), 3, [0, 6, 12])
    np.testing.assert_allclose(t.token_ce.reshape(-1), ce, rtol=1e-6)
    assert t.ids.shape == (2, 6, 3) and list(t.seq_has) == [1, 0] and t.seq_ce[1] == 0
    assert t.seq_ce[0] == pytest.approx(seq_ce[0], rel=1e-6)
    only = topk_and_ce(z, None, 3)
    np.testing.assert_array_equal(only.ids, t.ids)
    assert only.token_ce is None


def test_topk_bad_arguments():
    z = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match="k = 9"):
        topk_and_ce(z, None, 9)
    with pytest.raises(ValueError, match="labels row 1: label 8"):
        topk_and_ce(z, np.array([0, 8, 1]), 2)
    with pytest.raises(ValueError, match="seq_offsets"):
        topk_and_ce(z, np.array([0, 1, 1]), 2, seq_offsets=[0, 2])


# ---------------------------------------------------------------------------------------
# property: any shape, padding pattern and option against the twin


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), v=st.integers(2, 700), k=st.integers(1, 12),
       lm_weight=st.floats(0, 1), temperature=st.floats(0.25, 4),
       kind=st.sampled_from(["ce", "kl"]), reduction=st.sampled_from(["mean", "sum", "none"]),
       seed=st.integers(0, 2**32 - 1))
def test_property_against_twin(n, v, k, lm_weight, temperature, kind, reduction, seed):
    rng = np.random.default_rng(seed)
    k = min(k, v)
    z = (rng.standard_normal((n, v)) * rng.uniform(0.1, 20)).astype(np.float32)
    y = rng.integers(0, v, n)
    y[rng.random(n) < 0.3] = -100
    ids = np.stack([rng.choice(v, k, replace=False) for _ in range(n)]).astype(np.int32)
    ids[rng.random((n, k)) < 0.3] = -1
    vals = (rng.standard_normal((n, k)) * 3).astype(np.float32)
    res = fusion_loss(z, y, ids, vals, lm_weight=lm_weight, temperature=temperature, kind=kind,
                      reduction=reduction)
    check(res, fusion_loss_ref(z, y, ids, vals, lm_weight=lm_weight, temperature=temperature,
                               kind=kind, reduction=reduction), np.dtype(np.float32))
