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


@functools.lru_cache(maxsize=None)
def _cuda_probe():
    """(module or None, reason). Cached: the driver is asked once per process."""
    try:
        from . import _C_cuda
    except ImportError as exc:
        return None, f"fusechat was built without CUDA kernels ({exc})"
    count, reason = _C_cuda.device_count()
    if count <= 0:
        return None, f"no usable CUDA device: {reason}"
    return _C_cuda, ""


def cuda_available(with_reason=False):
    """True if the CUDA kernels are built and a GPU is usable.

    With ``with_reason=True`` returns ``(available, reason)``; the reason ("" when available)
    says what is missing: the build, the driver or the device.
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
