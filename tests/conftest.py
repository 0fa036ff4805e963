import functools
import os
import sys

import pytest

# tests import the slow reference twins as `reference.*`
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("FUSECHAT_DISABLE_PROGRESS_BARS", "1")

# FUSECHAT_REQUIRE_CUDA=1 (set by benchmarks/gpu_check.sh on GPU machines): a test marked
# `cuda` that cannot run, or a test module that cannot be collected, fails instead of
# skipping, so that "passed" never means "nothing ran".
REQUIRE_CUDA = os.environ.get("FUSECHAT_REQUIRE_CUDA") == "1"


@functools.lru_cache(maxsize=None)
def cuda_missing(with_torch):
    """Why CUDA tests cannot run here ("" when they can)."""
    import fusechat

    ok, reason = fusechat.cuda_available(with_reason=True)
    if not ok:
        return reason
    if with_torch:
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} sees no CUDA device"
    return ""


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("cuda")
    if marker is None:
        return
    reason = cuda_missing(bool(marker.kwargs.get("torch", False)))
    if reason:
        if REQUIRE_CUDA:
            pytest.fail(f"FUSECHAT_REQUIRE_CUDA=1 but no CUDA: {reason}", pytrace=False)
        pytest.skip(f"no CUDA: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_CUDA and rep.skipped and any(w in str(rep.longrepr) for w in ("torch", "CUDA")):
        # e.g. importorskip("torch") on the GPU machine
        rep.outcome = "failed"
        rep.longrepr = f"FUSECHAT_REQUIRE_CUDA=1 but {collector.nodeid} was skipped: " \
                       f"{rep.longrepr}"
