"""CUDA kernels against the CPU kernels on the same inputs. Skipped without a GPU; the
_C_cuda module is still imported (CI compiles it) to check it loads without a driver."""
import ml_dtypes
import numpy as np
import pytest

import fusechat
from fusechat import _backend

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}

available, reason = fusechat.cuda_available(with_reason=True)
needs_gpu = pytest.mark.skipif(not available, reason=f"no CUDA: {reason}")


def test_availability_reports_a_reason():
    assert isinstance(available, bool)
    assert (reason == "") == available
    if not available:
        with pytest.raises(fusechat.CudaError, match="CUDA"):
            _backend.cuda_module()


@needs_gpu
@pytest.mark.parametrize("src", FLOATS, ids=str)
@pytest.mark.parametrize("dst", FLOATS, ids=str)
def test_cuda_convert_matches_cpu(src, dst):
    cuda = _backend.cuda_module()
    rng = np.random.default_rng(0)
    u = UINT[src.itemsize]
    if src.itemsize == 2:
        x = np.arange(65536, dtype=np.uint16).view(src)
    else:
        x = rng.integers(0, np.iinfo(u).max, size=1 << 20, dtype=u, endpoint=True).view(src)
    got = cuda.convert(x, dst)
    want = fusechat.convert(x, dst)
    np.testing.assert_array_equal(got.view(UINT[dst.itemsize]), want.view(UINT[dst.itemsize]))
