"""Which compiled backends are present: the CPU core always, CUDA kernels optionally.

``FUSECHAT_BACKEND=auto|cpu|cuda`` picks where kernels that have both run (default auto:
CUDA inputs go to CUDA kernels). ``cuda`` makes a missing CUDA backend an error at the first
use; a fallback to the CPU is logged, never silent.
"""
import functools
import logging
import os

from .errors import CudaError

LOG = logging.getLogger(__name__)
_POLICIES = ("auto", "cpu", "cuda")


# The oldest Linux driver each CUDA major version runs on (NVIDIA's compatibility table:
# minor-version compatibility within a major version).
DRIVER_FLOOR = {11: "450.80.02", 12: "525.60.13", 13: "580"}


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}"


def _kernel_module_version():
    """The NVIDIA kernel module's version ("570.124.06"), or None."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            text = f.read()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None


def cuda_reason(count, error, runtime, driver, module_version=None):
    """Why the CUDA kernels cannot run ("" when they can): from the device count and its
    error, the CUDA runtime version built in and the driver's (1000 * major + 10 * minor,
    0 = no driver), and the kernel module's version when known."""
    if driver == 0 and count <= 0:
        return ("no NVIDIA driver found: the CUDA kernels need libcuda.so.1 (install the "
                "NVIDIA driver, or use the CPU)")
    if driver and driver < runtime:
        major = runtime // 1000
        name = module_version or f"for CUDA {_cuda_version(driver)}"
        return (f"the NVIDIA driver {name} is older than this build needs (>= "
                f"{DRIVER_FLOOR.get(major, '?')}, for CUDA {_cuda_version(runtime)}): update "
                "the driver, or rebuild fusechat against an older CUDA toolkit "
                "(FUSECHAT_CUDA_HOME=/usr/local/cuda-12.x; docs/losses.md)")
    if count <= 0:
        return f"no CUDA device found ({error})" if error else "no CUDA device found"
    return ""


@functools.lru_cache(maxsize=None)
def _cuda_probe():
    """(module or None, reason). Cached: the driver is asked once per process."""
    try:
        from . import _C_cuda
    except ImportError as exc:
        return None, f"fusechat was built without CUDA kernels ({exc})"
    count, error = _C_cuda.device_count()
    runtime, driver = _C_cuda.versions()
    reason = cuda_reason(count, error, runtime, driver, _kernel_module_version())
    return (None, reason) if reason else (_C_cuda, "")


def cuda_available(with_reason=False):
    """True if the CUDA kernels are built and a GPU is usable.

    With ``with_reason=True`` returns ``(available, reason)``; the reason ("" when available)
    says what is missing: the build ("built without CUDA kernels"), the driver ("no NVIDIA
    driver found", or "driver X is older than this build needs (>= 580, for CUDA 13.0)")
    or the device ("no CUDA device found").
    """
    mod, reason = _cuda_probe()
    if mod is None:
        LOG.debug("CUDA unavailable: %s", reason)
    return (mod is not None, reason) if with_reason else mod is not None


def cuda_module():
    """The fusechat._C_cuda module; CudaError with the reason if it cannot be used."""
    mod, reason = _cuda_probe()
    if mod is None:
        raise CudaError(reason)
    return mod


def backend():
    """The backend policy in force: 'auto', 'cpu' or 'cuda' (from FUSECHAT_BACKEND)."""
    policy = os.environ.get("FUSECHAT_BACKEND", "auto").lower()
    if policy not in _POLICIES:
        raise ValueError(f"FUSECHAT_BACKEND={policy!r}: expected one of {', '.join(_POLICIES)}")
    return policy
