"""SCE's streaming path (csrc/core/merge_sce.c): tensors of at least MG_SAMPLE_MIN = 2**21
elements with 0 < select_topk < 1 read the inputs once, keeping the positions whose variance
key is at or above a threshold guessed from a sample (csrc/core/merge_sample.c) and taking
the exact top-k among those; when the guess fails they take the exact three-pass path.
Either way the result must be the float64 twin's (tests/reference/merge_ref.py) and the same
bytes for every thread count and instruction set."""
import ml_dtypes
import numpy as np
import pytest

from fusechat.merge import merge_tensors
from tests.reference import merge_ref as ref
from tests.test_merge_kernels import assert_close, available_isas, isa_switch  # noqa: F401
from tests.test_merge_streaming import sampled_positions

BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPE = (1031, 2053)  # 2,116,643 elements: past 2**21, not a multiple of any block size
def gaussian(shape, dtype, seed=0, n=5):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    xs = [base + rng.standard_normal(shape) * s for s in (0.1, 0.2, 0.05, 0.3, 0.15)[:n]]
    return base.astype(dtype), [x.astype(dtype) for x in xs]


def quantised(shape, seed=1):
    """Deltas exactly from {-2, ..., 2} / 64 for 4 models (the base on a grid of 1/16, so
    the float32 subtraction is exact): the variance takes a few dozen values, so the k-th
    largest is tied with tens of thousands of positions."""
    rng = np.random.default_rng(seed)
    base = (np.round(rng.standard_normal(shape) * 16) / 16).astype(np.float32)
    xs = [base + rng.integers(-2, 3, shape).astype(np.float32) / 64 for _ in range(4)]
    return base, xs


def twin(base, xs, topk, mask_deltas):
    with np.errstate(all="ignore"):
        return ref.sce(base, xs, topk, mask_deltas)


def check_twin(base, xs, topk, mask_deltas, streams):
    """The twin's result; the same bytes as the exact passes (merge_set_streaming(False));
    and the streaming attempt ended as expected (streams: True streamed, False fell back)."""
    from fusechat import _C

    before = _C.merge_stream_counts()
    got = merge_tensors("sce", base, xs, select_topk=topk, mask_deltas=mask_deltas)
    after = _C.merge_stream_counts()
    assert (after[0] - before[0], after[1] - before[1]) == ((1, 0) if streams else (0, 1))
    assert got.dtype == base.dtype and got.shape == base.shape
    assert_close(got, twin(base, xs, topk, mask_deltas), 4 * float(np.max(np.abs(base))))
    try:
        _C.merge_set_streaming(False)
        exact = merge_tensors("sce", base, xs, select_topk=topk, mask_deltas=mask_deltas)
    finally:
        _C.merge_set_streaming(True)
    assert got.tobytes() == exact.tobytes()
    return got


def check_bytes(base, xs, topk, mask_deltas, isa_switch):
    """One set of bytes for threads 1, 2, 3 and every instruction-set build."""
    outs = {}
    for isa in available_isas(isa_switch):
        isa_switch(isa)
        for threads in (1, 2, 3):
            outs[isa, threads] = merge_tensors("sce", base, xs, select_topk=topk, threads=threads,
                                               mask_deltas=mask_deltas).tobytes()
    assert len(set(outs.values())) == 1, [k for k in outs if outs[k] != outs["portable", 1]]


@pytest.mark.parametrize("mask_deltas", [True, False])
@pytest.mark.parametrize("dtype,topk", [(np.dtype(np.float32), 0.1), (BF16, 0.05),
                                        (np.dtype(np.float32), 0.25)], ids=str)
def test_streaming_matches_twin(dtype, topk, mask_deltas, isa_switch):
    base, xs = gaussian(SHAPE, dtype)
    check_twin(base, xs, topk, mask_deltas, streams=True)
    check_bytes(base, xs, topk, mask_deltas, isa_switch)


@pytest.mark.parametrize("mask_deltas", [True, False])
def test_tied_threshold(mask_deltas, isa_switch):
    """The k-th largest variance is shared by many positions, some kept (the lowest indices)
    and some not: the candidates must hold all of them and the tie must be cut at the same
    element as in the whole tensor."""
    base, xs = quantised(SHAPE)
    topk = 0.1
    var = np.var(np.stack([x - base for x in xs]).astype(np.float64), axis=0).astype(np.float32)
    k = int(np.count_nonzero(var) * topk)
    kth = np.sort(var.ravel())[::-1][k - 1]
    assert np.count_nonzero(var > kth) < k < np.count_nonzero(var >= kth)  # a real tie
    got = check_twin(base, xs, topk, mask_deltas, streams=True)
    if mask_deltas:  # the tied positions kept are exactly the first ones in index order
        tied = np.flatnonzero(var.ravel() == kth)
        quota = k - np.count_nonzero(var > kth)
        moved = got.ravel()[tied] != base.ravel()[tied]
        assert not moved[quota:].any() and moved[:quota].sum() > quota // 2
    check_bytes(base, xs, topk, mask_deltas, isa_switch)


@pytest.mark.parametrize("mask_deltas", [True, False])
@pytest.mark.parametrize("layout", ["band_above_threshold", "too_many_candidates"])
def test_unrepresentative_sample_falls_back(layout, mask_deltas, isa_switch):
    """Layouts where the sample lies (it reads only sampled_positions): the result must still
    be the twin's.
    - band_above_threshold: the sampled runs have deltas 100 times larger than the rest, so
      the sample's band sits inside their variances; the whole tensor's k = 10% of 2**21
      positions cannot all come from the 1.5% sampled ones, so fewer than k positions reach
      the band's lower end and the exact path runs.
    - too_many_candidates: the sampled runs are the quiet ones; the band's lower end lies
      among small variances, which 97% of the tensor exceeds: far more candidates than the
      buffer (sized from the sample) holds, so the attempt is abandoned mid-pass."""
    base, _ = gaussian(SHAPE, np.float32, n=1)
    sampled = sampled_positions(base.size).reshape(SHAPE)
    loud = sampled if layout == "band_above_threshold" else ~sampled
    scale = np.where(loud, 1.0, 0.01)
    rng = np.random.default_rng(5)
    xs = [(base + rng.standard_normal(SHAPE) * scale * s).astype(np.float32) for s in (0.1, 0.2, 0.3)]
    check_twin(base, xs, 0.1, mask_deltas, streams=False)
    check_bytes(base, xs, 0.1, mask_deltas, isa_switch)


@pytest.mark.parametrize("special", [np.inf, np.nan])
@pytest.mark.parametrize("where", ["sampled", "elsewhere"])
def test_nonfinite_delta_matches_twin(special, where):
    """An inf/NaN delta makes every weight NaN (it enters the sums of squares unless masked,
    and a masked one is 0 * inf): the streaming pass flags it and the exact path gives the
    twin's NaNs. In a sampled run or outside the sample: the flag does not depend on it."""
    base, xs = gaussian(SHAPE, np.float32, n=3)
    sampled = np.flatnonzero(sampled_positions(base.size))
    pos = sampled[1000] if where == "sampled" else sampled[1000] + 500
    xs[1].ravel()[pos] = special
    for mask_deltas in (True, False):
        with np.errstate(all="ignore"):
            got = merge_tensors("sce", base, xs, select_topk=0.1, mask_deltas=mask_deltas)
        want = twin(base.astype(np.float64), [x.astype(np.float64) for x in xs], 0.1, mask_deltas)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isinf(got), np.isinf(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_deltas", [True, False])
@pytest.mark.parametrize("topk", [1e-7, 2e-6, 0.29, 0.999])
def test_extreme_fractions(topk, mask_deltas, isa_switch):
    """1e-7: k == 0 (nothing kept: B itself with mask_deltas, uniform weights without);
    2e-6: k == 2 (both stream); 0.29 and 0.999: with the band's margin more than 30% of the
    positions would be candidates, so the exact path runs from the start."""
    base, xs = gaussian(SHAPE, np.float32, seed=2, n=4)
    got = check_twin(base, xs, topk, mask_deltas, streams=topk < 0.01)
    if topk == 1e-7 and mask_deltas:
        np.testing.assert_array_equal(got, base)
    check_bytes(base, xs, topk, mask_deltas, isa_switch)
