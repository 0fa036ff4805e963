"""The streaming top-k (merge_sample.c: one pass guided by a sample) against the exact
multi-pass path and the float64 twins, on tensors big enough to take it (2^21 elements or
more). The two paths must give the same bytes; a sample that misses must fall back."""
import ml_dtypes
import numpy as np
import pytest

from fusechat.merge import merge_tensors
from tests.test_merge_kernels import assert_close, reference

BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPE = (1023, 2053)  # 2.1M elements, just above the streaming minimum; an odd last block
N = SHAPE[0] * SHAPE[1]


@pytest.fixture
def switches():
    from fusechat import _C

    yield _C
    _C.merge_set_streaming(True)
    _C.merge_set_isa("auto")


def inputs(kind, n, dtype, seed=0):
    """base + n models whose deltas have the given character."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(SHAPE) * 0.02).astype(np.float32)
    xs = []
    for j in range(n):
        if kind == "gauss":
            d = rng.standard_normal(SHAPE) * 0.002 * (j + 1)
        elif kind == "quantised":  # few distinct |delta|: thresholds are heavily tied
            d = np.round(rng.standard_normal(SHAPE) * 2) * 0.001
        elif kind == "rows":  # each row its own scale: a sample of runs must see them all
            d = rng.standard_normal(SHAPE) * np.linspace(1e-4, 1.0, SHAPE[0])[:, None]
        elif kind == "sparse":  # mostly zero deltas
            d = rng.standard_normal(SHAPE) * (rng.random(SHAPE) < 0.3)
        elif kind == "nonfinite":
            d = rng.standard_normal(SHAPE) * 0.01
            d.flat[rng.integers(0, N, 50)] = np.inf
            d.flat[rng.integers(0, N, 50)] = -np.inf
            d.flat[rng.integers(0, N, 50)] = np.nan
        xs.append((base + d).astype(dtype))
    return base.astype(dtype), xs


def both_paths(_C, method, base, xs, **params):
    """(streaming result, exact result, (tensors streamed, fallbacks) during the first)."""
    _C.merge_set_streaming(True)
    before = _C.merge_stream_counts()
    got = merge_tensors(method, base, xs, **params)
    after = _C.merge_stream_counts()
    _C.merge_set_streaming(False)
    want = merge_tensors(method, base, xs, **params)
    _C.merge_set_streaming(True)
    return got, want, (after[0] - before[0], after[1] - before[1])


@pytest.mark.parametrize("kind", ["gauss", "quantised", "rows", "sparse", "nonfinite"])
@pytest.mark.parametrize("density", [0.05, 0.6, 0.999])
def test_ties_streaming_gives_the_exact_bytes(kind, density, switches):
    base, xs = inputs(kind, 2, BF16, seed=3)
    params = dict(weight=[0.7, -0.4], density=density, normalize=True)
    got, want, (streamed, fell_back) = both_paths(switches, "ties", base, xs, **params)
    assert streamed + fell_back == 1  # the tensor was big enough to try
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float16), BF16], ids=str)
def test_ties_streaming_three_models_one_dense(dtype, switches):
    # the third model keeps everything (density 1): only two models are sampled
    base, xs = inputs("gauss", 3, dtype, seed=5)
    params = dict(weight=[0.2, 0.5, -0.3], density=[0.3, 0.8, 1.0], normalize=False)
    got, want, (streamed, _) = both_paths(switches, "ties", base, xs, **params)
    assert streamed == 1
    assert got.tobytes() == want.tobytes()


def test_ties_streaming_matches_the_twin(switches):
    base, xs = inputs("gauss", 2, np.dtype(np.float32), seed=11)
    params = dict(weight=[0.6, 0.5], density=[0.4, 0.7])
    before = switches.merge_stream_counts()[0]
    got = merge_tensors("ties", base, xs, **params)
    assert switches.merge_stream_counts()[0] == before + 1
    assert_close(got, reference("ties", base, xs, params), scale=0.01)


def test_ties_streaming_same_bytes_for_threads_and_instruction_sets(switches):
    base, xs = inputs("quantised", 2, BF16, seed=7)
    params = dict(weight=[0.5, 0.5], density=0.5)
    outs = set()
    for isa in ("portable", "avx2", "avx512"):
        try:
            switches.merge_set_isa(isa)
        except ValueError:
            continue
        for threads in (1, 2, 3):
            outs.add(merge_tensors("ties", base, xs, threads=threads, **params).tobytes())
    assert len(outs) == 1


def sampled_positions(numel):
    """Where merge_sample.c samples a tensor (mg_sample_size, mg_sample_keys): runs of 64
    elements centred in equal slices; a boolean mask."""
    size = min(max(numel // 64 // 64 * 64, 32768), 1 << 20)
    runs = size // 64
    starts = (2 * np.arange(runs) + 1) * numel // (2 * runs) - 32
    mask = np.zeros(numel, bool)
    mask[(starts[:, None] + np.arange(64)).ravel()] = True
    return mask


def test_ties_sample_that_misses_falls_back(switches):
    """Big deltas exactly where the sample looks and tiny ones elsewhere: the sampled
    threshold is far too high, the exact counts show it, and the exact passes run."""
    rng = np.random.default_rng(2)
    base = np.zeros(SHAPE, np.float32)
    d = rng.uniform(0.001, 0.002, SHAPE).astype(np.float32)
    sampled = sampled_positions(N).reshape(SHAPE)
    d[sampled] = rng.uniform(1.0, 2.0, np.count_nonzero(sampled))
    xs = [base + d, base - 0.5 * d]
    got, want, (streamed, fell_back) = both_paths(switches, "ties", base, xs, weight=[1.0, 1.0],
                                                  density=0.5)
    assert (streamed, fell_back) == (0, 1)
    assert got.tobytes() == want.tobytes()
    assert_close(got, reference("ties", base, xs, dict(weight=[1.0, 1.0], density=0.5)), scale=1.0)
