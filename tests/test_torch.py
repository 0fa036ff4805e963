"""fusechat.torch: autograd, DLPack intake, and agreement with PyTorch's own losses."""
import ctypes

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fusechat  # noqa: E402
from fusechat import _C  # noqa: E402
from fusechat import loss as np_loss  # noqa: E402
from fusechat import torch as ft  # noqa: E402
from reference.loss_ref import fusion_loss_ref  # noqa: E402

N, V, K = 31, 1271, 10


def make(n=N, v=V, k=K, dtype=torch.float32, seed=0, ignore=(3, 7)):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, v, generator=g, dtype=torch.float64) * 3).to(dtype)
    y = torch.randint(0, v, (n,), generator=g)
    y[list(ignore)] = -100
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    ids[torch.rand(n, k, generator=g) < 0.2] = -1
    ids[5] = -1  # an empty target: gold fallback
    vals = torch.randn(n, k, generator=g)
    return z, y, ids, vals


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_lm_weight_one_is_cross_entropy(dtype):
    z, y, ids, vals = make(dtype=dtype)
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    ours = ft.fusion_loss(a, y, ids, vals, lm_weight=1.0)
    ref = F.cross_entropy(b.float(), y, ignore_index=-100)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    tol = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=tol, atol=1e-6)


@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_matches_dense_soft_target_cross_entropy(kind):
    """The reference's own formulation: a dense target from the sparse one, soft-target CE."""
    z, y, ids, vals = make(seed=1)
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    ours = ft.fusion_loss(a, y, ids, vals, lm_weight=0.9, temperature=0.7, kind=kind)
    dense = torch.zeros(N, V)
    for r in range(N):
        keep = ids[r] >= 0
        if keep.any():
            dense[r, ids[r][keep]] = torch.softmax(vals[r][keep] / 0.7, 0)
        elif y[r] >= 0:
            dense[r, y[r]] = 1.0
    sup = y != -100
    logq = torch.log_softmax(b, -1)
    fuse = -(dense * logq).sum(-1)
    if kind == "kl":
        fuse = fuse + torch.special.xlogy(dense, dense).sum(-1)
    ce = F.cross_entropy(b, y, reduction="none", ignore_index=-100)
    ref = (0.9 * ce + 0.1 * fuse)[sup].sum() / sup.sum()
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs", [
    dict(kind="ce"), dict(kind="kl", temperature=0.5), dict(reduction="sum", lm_weight=0.3),
    dict(reduction="none"), dict(normalizer=17.0, lm_weight=0.0),
])
def test_gradcheck_float64(kwargs):
    z, y, ids, vals = make(n=7, v=23, k=4, dtype=torch.float64, seed=2, ignore=(1,))
    z.requires_grad_()
    fn = lambda x: ft.fusion_loss(x, y, ids, vals, **kwargs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_fallback_and_twin_float64():
    z, y, ids, vals = make(seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)  # distinct ids per row (duplicates are refused)
    fids = torch.stack([torch.randperm(V, generator=g)[:3] for _ in range(N)])
    fids[:, 1] = -1
    fvals = torch.randn(N, 3)
    z.requires_grad_()
    loss = ft.fusion_loss(z, y, ids, vals, fallback_ids=fids, fallback_values=fvals)
    loss.backward()
    ref = fusion_loss_ref(z.detach().numpy(), y.numpy(), ids.numpy(), vals.numpy(),
                          fids.numpy(), fvals.numpy())
    assert loss.item() == pytest.approx(ref[0], rel=1e-12)
    np.testing.assert_allclose(z.grad.numpy(), ref[2], rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_returns_the_forward_gradient(dtype):
    """The gradient autograd delivers is bit for bit the one the fused forward computed
    (the NumPy entry point computes it independently of autograd)."""
    import ml_dtypes

    z, y, ids, vals = make(dtype=dtype, seed=4)
    a = z.clone().requires_grad_()
    ft.fusion_loss(a, y, ids, vals).backward()
    zn = z.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if dtype == torch.bfloat16 \
        else z.numpy()
    want = np_loss.fusion_loss(zn, y.numpy(), ids.numpy(), vals.numpy()).grad
    got = a.grad.view(torch.int16).numpy() if dtype == torch.bfloat16 else a.grad.numpy()
    np.testing.assert_array_equal(got, want.view(got.dtype))


def test_upstream_gradient_scales():
    z, y, ids, vals = make(seed=5)
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    (3.0 * ft.fusion_loss(a, y, ids, vals)).backward()
    ft.fusion_loss(b, y, ids, vals).backward()
    torch.testing.assert_close(a.grad, 3.0 * b.grad)
    c = z.clone().requires_grad_()
    w = torch.arange(N, dtype=torch.float32)
    (ft.fusion_loss(c, y, ids, vals, reduction="none") * w).sum().backward()
    ref = fusion_loss_ref(z.numpy(), y.numpy(), ids.numpy(), vals.numpy(), reduction="none")
    np.testing.assert_allclose(c.grad.numpy(), ref[2] * w.numpy()[:, None], rtol=1e-5,
                               atol=1e-8)


def test_retain_graph_backward_twice():
    z, y, ids, vals = make(seed=16)
    a = z.clone().requires_grad_()
    loss = 2.0 * ft.fusion_loss(a, y, ids, vals)
    loss.backward(retain_graph=True)
    first = a.grad.clone()
    loss.backward()
    torch.testing.assert_close(a.grad, 2 * first)


def test_all_ignored_and_inplace():
    z, y, ids, vals = make(seed=6)
    a = z.clone().requires_grad_()
    loss = ft.fusion_loss(a, torch.full((N,), -100), ids, vals)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(a.grad == 0)
    leaf = z.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf, as a model's output
    want = np_loss.fusion_loss(z.numpy(), y.numpy(), ids.numpy(), vals.numpy())
    ft.fusion_loss(logits, y, ids, vals, inplace=True).backward()
    np.testing.assert_array_equal(logits.detach().numpy(), want.grad)  # overwritten
    np.testing.assert_array_equal(leaf.grad.numpy(), want.grad)


def test_causal_lm_helper_matches_hf_shift():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 9, 40, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 40, (3, 9), generator=g)
    labels[0, :4] = -100
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    ours = ft.causal_lm_fusion_loss(a, labels, lm_weight=1.0)
    ref = F.cross_entropy(b[:, :-1].reshape(-1, 40), labels[:, 1:].reshape(-1))
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(a.grad, b.grad)
    try:
        from transformers.loss.loss_utils import ForCausalLMLoss
    except ImportError:
        return
    n = int((labels[:, 1:] != -100).sum())
    hf = ForCausalLMLoss(z, labels, 40, num_items_in_batch=n)
    mine = ft.causal_lm_fusion_loss(z, labels, lm_weight=1.0, num_items_in_batch=n)
    assert mine.item() == pytest.approx(hf.item(), rel=1e-6)  # HF computes in float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_topk_and_ce_matches_torch_topk(dtype):
    g = torch.Generator().manual_seed(13)
    z = (torch.randn(2, 11, V, generator=g) * 4).to(dtype)
    z[0, 2] = torch.round(z[0, 2].float()).to(dtype)  # ties
    z[1, 3] = -float("inf")
    labels = torch.randint(0, V, (2, 11), generator=g)
    labels[1, :5] = -100
    t = ft.topk_and_ce(z, labels, 10, shift=True)
    vals, ids = torch.topk(z.float(), 10, dim=-1)
    torch.testing.assert_close(t.logits, vals)
    # torch.topk picks any of equal values: ours must be sorted by (value desc, id asc), and
    # above the k-th value both must hold the same ids
    for b in range(2):
        for p in range(11):
            pairs = list(zip((-t.logits[b, p]).tolist(), t.ids[b, p].tolist()))
            assert pairs == sorted(pairs)
            kth = vals[b, p, -1]
            assert set(ids[b, p][vals[b, p] > kth].tolist()) == \
                set(t.ids[b, p][t.logits[b, p] > kth].tolist())
    sh = ft.hf_shift_labels(labels)
    ce = F.cross_entropy(z.double().reshape(-1, V), sh.reshape(-1), reduction="none")
    torch.testing.assert_close(t.token_ce.reshape(-1).double(), ce, rtol=2e-6, atol=2e-6)
    sup = (sh != -100).double()
    want = (ce.reshape(2, 11) * sup).sum(1) / sup.sum(1)
    torch.testing.assert_close(t.seq_ce.double(), want, rtol=2e-6, atol=0)
    assert t.seq_has.tolist() == [1, 1]


def test_module():
    z, y, ids, vals = make(seed=8)
    m = ft.FusionLoss(lm_weight=0.5, kind="kl")
    assert "kind='kl'" in repr(m)
    assert m(z, y, ids, vals).item() == pytest.approx(
        ft.fusion_loss(z, y, ids, vals, lm_weight=0.5, kind="kl").item())
    with pytest.raises(ValueError, match="kind"):
        ft.FusionLoss(kind="jsd")


def test_empty_target_k0_is_no_target():
    """A [N, 0] (or [B, L, 0]) target means no target entries: the gold one-hot, so the loss
    is the plain CE; int64 and int32 ids, on the CPU (CUDA: test_cuda_loss.py)."""
    z, y, _, _ = make(seed=18)
    want = F.cross_entropy(z.double(), y, ignore_index=-100)
    for dt in (torch.int64, torch.int32):
        a = z.clone().requires_grad_()
        loss = ft.fusion_loss(a, y, torch.zeros(N, 0, dtype=dt), torch.zeros(N, 0))
        loss.backward()
        assert loss.item() == pytest.approx(want.item(), rel=1e-6)
        b = z.clone().requires_grad_()
        ft.fusion_loss(b, y).backward()
        assert torch.equal(a.grad, b.grad)
    z3 = z[:30].reshape(3, 10, V)
    loss = ft.fusion_loss(z3, y[:30].reshape(3, 10), torch.zeros(3, 10, 0, dtype=torch.int64),
                          torch.zeros(3, 10, 0))
    assert loss.item() == pytest.approx(ft.fusion_loss(z3, y[:30].reshape(3, 10)).item())
    with pytest.raises(ValueError, match="target_ids has 30 rows, logits have 31"):
        ft.fusion_loss(z, y, torch.zeros(30, 0, dtype=torch.int64), torch.zeros(30, 0))


def test_no_rows_is_zero():
    z = torch.zeros(0, V, requires_grad=True)
    loss = ft.fusion_loss(z, torch.zeros(0, dtype=torch.int64),
                          torch.zeros(0, K, dtype=torch.int32), torch.zeros(0, K))
    loss.backward()
    assert loss.item() == 0.0 and z.grad.shape == (0, V)


def test_validate_strict_and_bad_values():
    z, y, ids, vals = make(seed=20)
    a = ft.fusion_loss(z, y, ids, vals, validate="strict")
    assert a.item() == ft.fusion_loss(z, y, ids, vals).item()
    with pytest.raises(ValueError, match="validate='fast': expected True, False or 'strict'"):
        ft.fusion_loss(z, y, ids, vals, validate="fast")
    bad = ids.clone()
    bad[4, 1] = bad[4, 0] = 7
    with pytest.raises(ValueError, match="target_ids row 4: id 7 appears twice"):
        ft.fusion_loss(z, y, bad, vals, validate="strict")
    with pytest.raises(ValueError, match="outside the int32 range"):
        ft.fusion_loss(z, y, ids.to(torch.int64) + 2**31, vals)


def test_topk_all_minus_inf_row_is_nan_like_torch():
    """A supervised row whose logits are all -inf has no distribution: its CE is NaN, as
    torch's cross_entropy says, and so is the mean CE of its sequence (a NaN CE never wins
    MinCE); its top-k is ids 0..k-1 at -inf. CUDA must agree (test_cuda_topk_matches_cpu)."""
    g = torch.Generator().manual_seed(19)
    z = torch.randn(6, 50, generator=g)
    z[1] = -float("inf")
    y = torch.randint(0, 50, (6,), generator=g)
    t = ft.topk_and_ce(z, y, 5, seq_offsets=torch.tensor([0, 3, 6]))
    want = F.cross_entropy(z.double(), y, reduction="none")
    assert torch.isnan(want[1])
    torch.testing.assert_close(t.token_ce.double(), want, rtol=2e-6, atol=2e-6, equal_nan=True)
    assert torch.isnan(t.seq_ce[0]) and not torch.isnan(t.seq_ce[1])
    assert t.seq_has.tolist() == [1, 1]
    assert t.ids[1].tolist() == list(range(5)) and torch.all(t.logits[1] == -float("inf"))


# ---------------------------------------------------------------------------------------
# DLPack intake (csrc/py/py_dlpack.c), exercised through _C.fusion_loss


def capsule_name(caps):
    get = ctypes.pythonapi.PyCapsule_GetName
    get.restype, get.argtypes = ctypes.c_char_p, [ctypes.py_object]
    return get(caps)


class Producer:
    """Wraps a tensor; records the capsule it hands out. legacy=True rejects max_version
    like producers older than DLPack 1.0."""

    def __init__(self, t, legacy=False):
        self.t, self.legacy, self.capsules = t, legacy, []

    def __dlpack_device__(self):
        return self.t.__dlpack_device__()

    def __dlpack__(self, stream=None, max_version=None, **kw):
        if self.legacy and max_version is not None:
            raise TypeError("unexpected keyword max_version")
        caps = self.t.__dlpack__(max_version=max_version) if max_version else \
            self.t.__dlpack__()
        self.capsules.append(caps)
        return caps


def call(z, y, grad=None, **kw):
    rl = np.empty(N, np.float64)
    return _C.fusion_loss(z, y, None, None, None, None, grad, rl, lm_weight=1.0, **kw), rl


@pytest.mark.parametrize("legacy", [False, True])
def test_dlpack_versioned_and_legacy_capsules(legacy):
    z, y, _, _ = make(seed=9)
    pz, py = Producer(z, legacy), Producer(y, legacy)
    g = torch.empty_like(z)
    pg = Producer(g, legacy)
    (loss, _), _ = call(pz, py, pg)
    want = np_loss.fusion_loss(z.numpy(), y.numpy(), lm_weight=1.0)
    assert loss == want.loss
    np.testing.assert_array_equal(g.numpy(), want.grad)
    name = b"used_dltensor" if legacy else b"used_dltensor_versioned"
    assert capsule_name(pz.capsules[-1]) == name  # ownership taken by renaming


def test_dlpack_bf16_offset_and_strides():
    z, y, _, _ = make(dtype=torch.bfloat16, seed=10)
    big = torch.zeros(N + 4, V, dtype=torch.bfloat16)
    big[4:] = z
    view = big[4:]  # byte_offset or a shifted data pointer; strides given
    g = torch.empty_like(z)
    (loss, _), _ = call(view, y, g)
    (loss2, _), _ = call(z, y, torch.empty_like(z))
    assert loss == loss2
    with pytest.raises(ValueError, match="logits: the tensor must be contiguous"):
        call(big[4:, ::2], y)
    with pytest.raises(TypeError, match="labels: dtype I32, expected I64"):
        call(z, y.to(torch.int32))


def test_dlpack_rejects_used_capsule_and_readonly():
    z, y, _, _ = make(seed=11)

    class Used(Producer):
        def __dlpack__(self, **kw):
            caps = super().__dlpack__(**kw)
            ctypes.pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
            ctypes.pythonapi.PyCapsule_SetName(caps, b"used_dltensor_versioned")
            return caps

    with pytest.raises(TypeError, match="logits: __dlpack__ returned no unused DLPack capsule"):
        call(Used(z), y)
    ro = np.zeros((N, V), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="grad: the array is read-only"):
        call(z.numpy(), y.numpy(), ro)
    with pytest.raises(TypeError, match="expected a numpy.ndarray or a DLPack tensor"):
        call([[1.0]], y)


def test_cuda_binding_interface_without_a_gpu():
    """_C_cuda loads without a driver; its fusion_loss/topk_ce take the keywords that
    fusechat.torch passes and refuse CPU tensors by name."""
    try:
        from fusechat import _C_cuda
    except ImportError:
        pytest.skip("fusechat built without CUDA kernels")
    z, y, ids, vals = make(n=9, seed=17)
    z, y, ids, vals = z[:4].contiguous(), y[:4], ids[:4].contiguous(), vals[:4].contiguous()
    opts = np_loss.loss_options()
    rl = torch.empty(4)
    total = torch.empty(1)
    with pytest.raises(ValueError, match="logits: tensor on device type 1, expected a CUDA"):
        _C_cuda.fusion_loss(z, y, ids.int(), vals, None, None, torch.empty_like(z), rl,
                            total=total, stream=0, **opts)
    with pytest.raises(ValueError, match="logits: tensor on device type 1"):
        _C_cuda.topk_ce(z, y, 3, -100, None, torch.empty(4, 3, dtype=torch.int32),
                        torch.empty(4, 3), torch.empty(4), None, None, 0)


class FakeCudaTensor:
    """A legacy DLPack capsule that says "CUDA device 0" around `data` (never dereferenced on
    the host): lets a CPU test reach the CUDA binding's checks."""

    def __init__(self, shape, code, bits, data=None):
        class Dev(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int32), ("id", ctypes.c_int32)]

        class Dt(ctypes.Structure):
            _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                        ("lanes", ctypes.c_uint16)]

        class Tensor(ctypes.Structure):
            _fields_ = [("data", ctypes.c_void_p), ("device", Dev), ("ndim", ctypes.c_int32),
                        ("dtype", Dt), ("shape", ctypes.POINTER(ctypes.c_int64)),
                        ("strides", ctypes.c_void_p), ("byte_offset", ctypes.c_uint64)]

        class Managed(ctypes.Structure):
            _fields_ = [("dl", Tensor), ("ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]

        self.shape = (ctypes.c_int64 * len(shape))(*shape)
        self.managed = Managed(Tensor(data, Dev(2, 0), len(shape), Dt(code, bits, 1),
                                      self.shape, None, 0), None, None)

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None, max_version=None):
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p,
                                                       ctypes.c_void_p]
        return new(ctypes.addressof(self.managed), b"dltensor", None)


def test_cuda_binding_takes_empty_tensors():
    """N = 0: torch gives empty CUDA tensors a NULL data pointer; the binding must pass them
    on (the CPU path returns 0) rather than refuse them as missing row_loss."""
    try:
        from fusechat import _C_cuda
    except ImportError:
        pytest.skip("fusechat built without CUDA kernels")
    if fusechat.cuda_available():
        pytest.skip("a GPU is present: test_cuda_loss.py runs N = 0 for real")
    f32, i64 = (2, 32), (0, 64)
    logits, labels = FakeCudaTensor((0, V), *f32), FakeCudaTensor((0,), *i64)
    row_loss, total = FakeCudaTensor((0,), *f32), FakeCudaTensor((1,), *f32, data=16)
    opts = np_loss.loss_options()
    # past the argument checks, the call reaches the device, which this machine lacks
    with pytest.raises(fusechat.CudaError, match="cudaGetDevice"):
        _C_cuda.fusion_loss(logits, labels, None, None, None, None, None, row_loss,
                            total=total, stream=0, **opts)


def test_import_fusechat_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, fusechat, fusechat.loss, fusechat.fuse; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**__import__("os").environ})
    assert out.stdout.strip() == "False"


needs_gpu = pytest.mark.cuda(torch=True)  # skipped without a GPU (tests/conftest.py)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("v", [1271, 1280])  # 1280: the 16-byte vector path
def test_cuda_matches_cpu(dtype, reduction, v):
    z, y, ids, vals = make(v=v, dtype=dtype, seed=12)
    a = z.clone().requires_grad_()
    b = z.clone().cuda().requires_grad_()
    la = ft.fusion_loss(a, y, ids, vals, reduction=reduction, temperature=0.8)
    lb = ft.fusion_loss(b, y.cuda(), ids.cuda(), vals.cuda(), reduction=reduction,
                        temperature=0.8)
    la.sum().backward()
    lb.sum().backward()
    torch.testing.assert_close(lb.cpu(), la, rtol=1e-5, atol=1e-6)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(b.grad.cpu().float(), a.grad.float(), rtol=tol, atol=1e-7)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_topk_matches_cpu(dtype):
    z, y, _, _ = make(dtype=dtype, seed=14)
    z[4] = torch.round(z[4].float()).to(dtype)  # ties
    z[6] = -float("inf")  # supervised: CE NaN on both sides, and its sequence's mean CE
    assert y[6] != -100
    offs = torch.tensor([0, 10, 10, N])
    a = ft.topk_and_ce(z, y, 17, seq_offsets=offs)
    b = ft.topk_and_ce(z.cuda(), y.cuda(), 17, seq_offsets=offs)
    assert torch.equal(b.ids.cpu(), a.ids) and torch.equal(b.logits.cpu(), a.logits)
    assert b.ids[6].tolist() == list(range(17))
    torch.testing.assert_close(b.token_ce.cpu(), a.token_ce, rtol=1e-5, atol=1e-5,
                               equal_nan=True)
    assert torch.isnan(b.token_ce[6]) and torch.isnan(b.seq_ce[0])
    torch.testing.assert_close(b.seq_ce.cpu(), a.seq_ce, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(b.seq_has.cpu(), a.seq_has)
    # against the float64 oracle, not only the CPU kernel
    ce = F.cross_entropy(z.double(), y, reduction="none", ignore_index=-100)
    torch.testing.assert_close(b.token_ce.cpu().double(), ce, rtol=2e-6, atol=2e-6,
                               equal_nan=True)


@needs_gpu
def test_cuda_fallback_inplace_and_normalizer():
    z, y, ids, vals = make(dtype=torch.bfloat16, seed=15)
    fids, fvals = ids.roll(1, 0), vals.roll(1, 0)
    kw = dict(fallback_ids=fids, fallback_values=fvals, normalizer=50.0, kind="kl")
    a = ft.fusion_loss(z, y, ids, vals, **kw)
    zc = z.cuda()
    b = ft.fusion_loss(zc.clone().requires_grad_(), y.cuda(), ids.cuda(), vals.cuda(), **kw)
    assert b.item() == pytest.approx(a.item(), rel=1e-5)
    leaf = zc.clone().requires_grad_()
    logits = leaf * 1
    ft.fusion_loss(logits, y.cuda(), ids.cuda(), vals.cuda(), inplace=True, **kw).backward()
    assert torch.equal(logits.detach(), leaf.grad)
    bad = ids.clone()
    bad[2, 0] = V
    with pytest.raises(ValueError, match="^fusion_loss: target_ids row 2"):
        ft.fusion_loss(zc, y.cuda(), bad.cuda(), vals.cuda(), validate="strict")
    ft.fusion_loss(zc, y.cuda(), bad.cuda(), vals.cuda())  # checked on the device: later
    with pytest.raises(ValueError, match="checked on the device.*target_ids row 2 entry 0"):
        ft.check_errors()
