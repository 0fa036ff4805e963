"""fusechat.convert (C, multithreaded) against NumPy and ml_dtypes, bit for bit, and against
an exact Fraction-based twin where those libraries round twice (F64 -> BF16)."""
import warnings

import ml_dtypes
import numpy as np
import pytest

import fusechat
from reference.fp_ref import f64_to_bf16_bits, f64_to_f16_bits

BF16 = np.dtype(ml_dtypes.bfloat16)
F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
FLOATS = [F16, BF16, F32, F64]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(a):
    return a.view(UINT[a.dtype.itemsize])


def special_values(dtype):
    """Every pattern for 16-bit types; edge patterns plus random bits for wider ones."""
    if dtype.itemsize == 2:
        return np.arange(65536, dtype=np.uint16).view(dtype)
    rng = np.random.default_rng(0)
    u = UINT[dtype.itemsize]
    rand = rng.integers(0, np.iinfo(u).max, size=200000, dtype=u, endpoint=True)
    if dtype == F32:
        edges = [0, 0x80000000, 1, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7f800001, 0x7fc00000,
                 0xffc12345, 0x7fbfffff, 0x33000000, 0x33000001, 0x477ff000, 0x477fefff,
                 0x3f808000, 0x3f818000, 0x00400000, 0x007fffff]
    else:
        edges = [0, 1 << 63, 1, 0x7fefffffffffffff, 0x7ff0000000000000, 0xfff0000000000000,
                 0x7ff0000000000001, 0x7ff8000000000000, 0xfff8000012345678,
                 0x3ff0100000000000, 0x3ff0100000000001, 0x3ff0080000000000]
    # plus normal-range values near rounding boundaries of the 16-bit formats
    near = (rng.standard_normal(100000) * np.exp2(rng.integers(-30, 20, 100000))).astype(dtype)
    return np.concatenate([np.array(edges, dtype=u).view(dtype), rand.view(dtype), near])


def numpy_cast(x, dst):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x.astype(dst)


@pytest.mark.parametrize("src", FLOATS, ids=str)
@pytest.mark.parametrize("dst", FLOATS, ids=str)
def test_convert_matches_reference_bit_for_bit(src, dst):
    x = special_values(src)
    got = fusechat.convert(x, dst)
    assert got.dtype == dst and got.shape == x.shape
    if src == F64 and dst in (BF16, F16):
        # NumPy rounds F64 -> F16 once, like us; ml_dtypes rounds F64 -> BF16 through F32,
        # so check every finite value against the exact twin instead
        ref_fn = f64_to_bf16_bits if dst == BF16 else f64_to_f16_bits
        finite = np.flatnonzero(np.isfinite(x))
        pick = finite[:: max(1, len(finite) // 20000)]
        want = np.array([ref_fn(float(v)) for v in x[pick]], dtype=np.uint16)
        np.testing.assert_array_equal(bits(got[pick]), want)
        if dst == BF16:
            nan = np.isnan(x)
            assert np.all(np.isnan(got[nan].astype(np.float32)))
            np.testing.assert_array_equal(np.signbit(got[~nan].astype(F32)), np.signbit(x[~nan]))
            return
    want = numpy_cast(x, dst)
    np.testing.assert_array_equal(bits(got), bits(want))


def test_convert_is_independent_of_thread_count():
    x = np.random.default_rng(1).standard_normal(3_000_017).astype(np.float32)
    one = fusechat.convert(x, BF16, threads=1)
    for t in (2, 3, 8):
        np.testing.assert_array_equal(bits(fusechat.convert(x, BF16, threads=t)), bits(one))


def test_convert_shapes_and_layouts():
    x = np.random.default_rng(2).standard_normal((37, 113)).astype(np.float32)
    np.testing.assert_array_equal(bits(fusechat.convert(x.T, BF16)), bits(x.T.astype(BF16)))
    np.testing.assert_array_equal(bits(fusechat.convert(x[:, ::3], F16)),
                                  bits(x[:, ::3].astype(F16)))
    assert fusechat.convert(np.float32(1.5).reshape(()), F64).shape == ()
    assert fusechat.convert(np.zeros((0, 5), np.float32), BF16).shape == (0, 5)
    # unaligned input (a view at an odd byte offset)
    raw = np.zeros(4 * 1000 + 1, np.uint8)
    un = raw[1:].view(np.float32)
    un[:] = np.arange(1000, dtype=np.float32) / 7
    np.testing.assert_array_equal(bits(fusechat.convert(un, BF16)), bits(un.astype(BF16)))


def test_convert_rejects_bad_arguments():
    with pytest.raises(TypeError, match="int32"):
        fusechat.convert(np.zeros(3, np.int32), F32)
    with pytest.raises(TypeError, match="dtype"):
        fusechat.convert(np.zeros(3, np.float32), "I32")
    with pytest.raises(TypeError, match="not a dtype"):
        fusechat.convert(np.zeros(3, np.float32), object())
    with pytest.raises(TypeError, match="ndarray"):
        fusechat._C.convert([1.0, 2.0], F32)
    # lists and scalars are accepted by the Python layer (as float64)
    np.testing.assert_array_equal(fusechat.convert([1.0, 2.5], BF16).astype(F32), [1.0, 2.5])
    # input never modified
    x = np.arange(10, dtype=np.float32)
    x0 = x.copy()
    fusechat.convert(x, BF16)
    np.testing.assert_array_equal(x, x0)
