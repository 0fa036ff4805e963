"""Two merges at once in one process (issue 17): each with its own MergeContext (kernel
instruction set, streaming switch, counters, kept buffers), in two threads, the GIL released
inside the kernels. Each result must be the bytes of the same merge run alone, and each
context must count only its own streaming attempts."""
import threading

import ml_dtypes
import numpy as np
import pytest

from fusechat import _C
from fusechat.merge import merge_tensors

BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPE = (1031, 2053)  # above the streaming minimum (2^21 elements)


def available_isas():
    isas = ["portable"]
    for isa in ("avx2", "avx512"):
        try:
            _C.MergeContext(isa)
            isas.append(isa)
        except ValueError:
            pass
    return isas


def inputs(seed, n):
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(SHAPE) * 0.02).astype(np.float32)
    xs = [(base + rng.standard_normal(SHAPE) * 0.002 * (j + 1)).astype(BF16) for j in range(n)]
    return base.astype(BF16), xs


# (method, params, models): TIES and SCE take the streaming top-k on tensors this big
JOBS = [("ties", dict(weight=[0.7, -0.4], density=[0.3, 0.6], normalize=True), 2),
        ("sce", dict(select_topk=0.1), 3),
        ("dare_ties", dict(weight=[0.5, 0.5], density=0.4), 2)]


def run_alone(job, seed, **ctx_args):
    method, params, n = job
    base, xs = inputs(seed, n)
    ctx = _C.MergeContext(**ctx_args)
    out = merge_tensors(method, base, xs, seed=3, tensor_name="t", threads=2, ctx=ctx, **params)
    return out.tobytes(), ctx.stream_counts()


@pytest.mark.parametrize("pair", [(0, 1), (1, 0), (0, 2)], ids=["ties+sce", "sce+ties", "ties+dare"])
def test_two_merges_in_threads_give_their_own_bytes(pair):
    isas = available_isas()
    settings = [dict(isa="portable", streaming=False, keep_buffers=True),
                dict(isa=isas[-1], streaming=True, keep_buffers=True)]
    jobs = [JOBS[pair[0]], JOBS[pair[1]]]
    alone = [run_alone(job, 10 + k, **settings[k]) for k, job in enumerate(jobs)]
    assert alone[0][1] == (0, 0)  # the exact passes: no streaming attempt
    if jobs[1][0] in ("ties", "sce"):
        assert sum(alone[1][1]) == 1
    for _ in range(3):
        results, errors = [None, None], []
        start = threading.Barrier(2)

        def work(k):
            try:
                start.wait()
                results[k] = run_alone(jobs[k], 10 + k, **settings[k])
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for k in range(2):
            assert results[k][0] == alone[k][0], f"{jobs[k][0]} with {settings[k]} differs"
            assert results[k][1] == alone[k][1]


def test_shared_context_settings_do_not_leak():
    """Setting one context never changes another or the default one."""
    a, b = _C.MergeContext("portable", streaming=False), _C.MergeContext()
    assert a.isa() == "portable"
    assert b.isa() == _C.default_merge_context.isa() == available_isas()[-1]
    with pytest.raises(ValueError, match="avx512"):
        b.set_isa("sse9")
    base, xs = inputs(1, 2)
    params = dict(weight=[0.5, 0.5], density=0.5)
    before = _C.merge_stream_counts()
    got_a = merge_tensors("ties", base, xs, ctx=a, **params)
    got_b = merge_tensors("ties", base, xs, ctx=b, **params)
    assert a.stream_counts() == (0, 0) and sum(b.stream_counts()) == 1
    assert _C.merge_stream_counts() == before
    assert got_a.tobytes() == got_b.tobytes()


def test_context_argument_checked():
    with pytest.raises(TypeError, match="MergeContext"):
        merge_tensors("linear", None, [np.ones(3, np.float32)], weight=1.0, ctx="portable")
