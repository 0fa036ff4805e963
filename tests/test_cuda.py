"""CUDA kernels against the CPU kernels on the same inputs (marked `cuda`: skipped without a
GPU, failed under FUSECHAT_REQUIRE_CUDA=1); without a GPU: the reasons cuda_available()
gives, the FUSECHAT_CUDA_HOME build variable and the FUSECHAT_REQUIRE_CUDA switch. The torch
loss on the GPU: test_cuda_loss.py."""
import ml_dtypes
import numpy as np
import pytest

import fusechat
from fusechat import _backend

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}

available, reason = fusechat.cuda_available(with_reason=True)
needs_gpu = pytest.mark.cuda  # skipped without a GPU, failed under FUSECHAT_REQUIRE_CUDA=1


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


@needs_gpu
def test_cuda_convert_keeps_nan_payloads():
    """F64 -> F32 and F32/BF16 -> F64 keep sign and payload (quiet bit set) like the CPU;
    a float cast on the GPU would return one canonical NaN."""
    cuda = _backend.cuda_module()
    f64 = np.array([0x7ff0000000000001, 0xfff0000012345678, 0x7ff8000000000000,
                    0x7ffdeadbeef00000, 0xfff7ffffffffffff], np.uint64).view(np.float64)
    f32 = np.array([0x7f800001, 0xffc12345, 0x7fbfffff, 0xff800001], np.uint32).view(np.float32)
    b16 = np.array([0x7f81, 0xffc1, 0x7fbf], np.uint16).view(BF16)
    for x, dst in ((f64, np.dtype(np.float32)), (f32, np.dtype(np.float64)),
                   (b16, np.dtype(np.float64))):
        got, want = cuda.convert(x, dst), fusechat.convert(x, dst)
        u = UINT[dst.itemsize]
        np.testing.assert_array_equal(got.view(u), want.view(u))
        assert len(set(want.view(u).tolist())) == len(x)  # the payloads differ


# ---------------------------------------------------------------------------------------
# without a GPU: the availability reasons, the build variable, the REQUIRE switch


def test_reason_names_the_driver_floor():
    r = _backend.cuda_reason(0, "CUDA driver version is insufficient", 13000, 12080,
                             "570.124.06")
    assert r.startswith("the NVIDIA driver 570.124.06 is older than this build needs (>= 580, "
                        "for CUDA 13.0)")
    assert "FUSECHAT_CUDA_HOME" in r
    r = _backend.cuda_reason(0, "insufficient", 13000, 12020, None)
    assert "driver for CUDA 12.2 is older than this build needs (>= 580" in r
    assert "(>= 525.60.13, for CUDA 12.8)" in _backend.cuda_reason(0, "", 12080, 12040)
    assert _backend.cuda_reason(0, "insufficient", 13000, 0).startswith("no NVIDIA driver")
    assert _backend.cuda_reason(0, "no CUDA-capable device is detected", 13000, 13000) == \
        "no CUDA device found (no CUDA-capable device is detected)"
    assert _backend.cuda_reason(2, "", 13000, 13010) == ""


def test_this_machine_reason_is_specific():
    """Without a GPU the reason says which of build, driver or device is missing."""
    if available:
        pytest.skip("a GPU is present")
    assert any(w in reason for w in ("built without CUDA", "no NVIDIA driver",
                                     "is older than this build needs", "no CUDA device"))


def test_cuda_home_variable_selects_the_toolkit(tmp_path):
    """FUSECHAT_CUDA_HOME names the toolkit to build with; a wrong one is an error, not a
    silent fallback to another nvcc."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "setup.py")):
        pytest.skip("a build test: needs the source tree (the wheel check runs tests alone)")
    env = {**os.environ, "FUSECHAT_CUDA": "1", "FUSECHAT_CUDA_HOME": str(tmp_path / "cuda12")}
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "-b",
                          str(tmp_path / "lib"), "-t", str(tmp_path / "tmp")], cwd=root,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"FUSECHAT_CUDA_HOME={tmp_path / 'cuda12'}: no bin/nvcc there" in out.stderr


def test_require_cuda_turns_skips_into_failures():
    """FUSECHAT_REQUIRE_CUDA=1 (gpu_check.sh sets it) fails a CUDA test that cannot run."""
    import os
    import subprocess
    import sys

    if available:
        pytest.skip("a GPU is present: the CUDA tests run")
    here = os.path.dirname(os.path.abspath(__file__))
    node = os.path.join(here, "test_cuda.py") + "::test_cuda_convert_keeps_nan_payloads"
    env = {k: v for k, v in os.environ.items() if k != "FUSECHAT_REQUIRE_CUDA"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node]
    plain = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout
    strict = subprocess.run(cmd, env={**env, "FUSECHAT_REQUIRE_CUDA": "1"},
                            capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1 and "1 error" in strict.stdout, strict.stdout  # at setup
    assert "FUSECHAT_REQUIRE_CUDA=1 but no CUDA" in strict.stdout
