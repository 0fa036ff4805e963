"""The CUDA fusion loss and top-k kernels on a GPU, against a float64 oracle written with
torch ops (independent of the kernels), and against the CPU kernels. Every test here is
marked `cuda`: skipped without a GPU, failed under FUSECHAT_REQUIRE_CUDA=1 (gpu_check.sh)."""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from fusechat import torch as ft  # noqa: E402

pytestmark = pytest.mark.cuda(torch=True)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# |kernel - float64 oracle| <= RTOL |oracle| + ATOL: fp32 math with __expf (a few ulp), then
# one rounding to the gradient's dtype; fp16 gradients below 6e-8 are subnormal
RTOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}
ATOL = {torch.float32: 1e-10, torch.bfloat16: 1e-10, torch.float16: 6e-8}


def make(n, v, k=10, dtype=torch.float32, seed=0, ignore=0.1, pad=0.2, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    z = (torch.randn(n, v, generator=g, device=device) * 3).to(dtype)
    y = torch.randint(0, v, (n,), generator=g, device=device)
    y[torch.rand(n, generator=g, device=device) < ignore] = -100
    ids = torch.randint(0, v, (n, k), generator=g, device=device)
    ids = distinct(torch.where(torch.rand(n, k, generator=g, device=device) < pad, -1, ids))
    vals = torch.randn(n, k, generator=g, device=device)
    return z, y, ids, vals


def distinct(ids):
    """Each row's repeated ids replaced by padding (-1): valid targets."""
    srt, order = ids.sort(-1)
    dup = torch.zeros_like(srt, dtype=torch.bool)
    dup[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    return ids.scatter(1, order, torch.where(dup, -1, srt))


def _probs(ids, vals, temperature):
    valid = ids >= 0
    x = torch.where(valid, vals.double() / temperature, -torch.inf)
    p = torch.nan_to_num(torch.softmax(x, -1)) * valid
    return p, valid.any(-1)


def oracle(z, y, ids=None, vals=None, fids=None, fvals=None, lm_weight=0.9, temperature=1.0,
           kind="ce", reduction="mean", normalizer=None, ignore=-100):
    """(loss, row losses, gradient) in float64: dense target, log_softmax, the formulas of
    docs/losses.md. Out-of-range labels count as ignored, as the kernels do."""
    n, v = z.shape
    z64 = z.double()
    logq = torch.log_softmax(z64, -1)
    sup = (y != ignore) & (y >= 0) & (y < v)
    yc = torch.where(sup, y, 0)
    dense = torch.zeros(n, v, dtype=torch.float64, device=z.device)
    has = torch.zeros(n, dtype=torch.bool, device=z.device)
    for i, (a, b) in enumerate(((ids, vals), (fids, fvals))):
        if a is None or a.shape[-1] == 0:
            continue
        p, h = _probs(a, b, temperature)
        use = h & ~has
        dense += torch.zeros_like(dense).scatter_add(1, a.clamp_min(0).long(), p) * use[:, None]
        has |= h
    gold = F.one_hot(yc, v).double()
    dense = torch.where(has[:, None], dense, gold)
    ce = -logq.gather(1, yc[:, None])[:, 0]
    fuse = -torch.where(dense > 0, dense * logq, 0.0).sum(-1)
    if kind == "kl":
        fuse = fuse + torch.special.xlogy(dense, dense).sum(-1)
    rows = torch.where(sup, lm_weight * ce + (1 - lm_weight) * fuse, 0.0)
    scale = 1.0
    if normalizer is not None:
        scale = 1.0 / normalizer
    elif reduction == "mean":
        scale = 1.0 / max(int(sup.sum()), 1) if sup.any() else 0.0
    grad = (torch.softmax(z64, -1) - lm_weight * gold - (1 - lm_weight) * dense) * sup[:, None]
    loss = rows.sum() * (1.0 if reduction == "none" else scale)
    return loss, rows, grad * (1.0 if reduction == "none" else scale)


def run(z, *args, inplace=False, **kw):
    leaf = z.clone().requires_grad_()
    x = leaf * 1 if inplace else leaf
    loss = ft.fusion_loss(x, *args, inplace=inplace, **kw)
    loss.sum().backward()
    return loss, leaf.grad


def close(got, want, dtype):
    torch.testing.assert_close(got.double(), want, rtol=RTOL[dtype], atol=ATOL[dtype],
                               equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [151936, 128256, 32000, 32001, 1271, 300])
def test_against_float64_oracle(v, dtype):
    """Vector path (V % 8 == 0: 151936, 128256, 32000), scalar path (32001, 1271), V < 512
    threads (300); ignored rows, padded and empty targets, temperature."""
    n = 64 if v > 100000 else 200
    z, y, ids, vals = make(n, v, dtype=dtype, seed=v)
    ids[3] = -1  # empty target: gold one-hot
    loss, grad = run(z, y, ids, vals, temperature=0.7)
    want, _, wgrad = oracle(z, y, ids, vals, temperature=0.7)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    close(grad, wgrad, dtype)


@pytest.mark.parametrize("kw", [dict(kind="kl", lm_weight=0.3), dict(reduction="sum"),
                                dict(normalizer=1234.0), dict(reduction="none"),
                                dict(lm_weight=0.0), dict(lm_weight=1.0)], ids=str)
def test_reductions_and_kinds(kw):
    z, y, ids, vals = make(300, 4096, dtype=torch.bfloat16, seed=1)
    loss, grad = run(z, y, ids, vals, **kw)
    want, rows, wgrad = oracle(z, y, ids, vals, **kw)
    if kw.get("reduction") == "none":
        torch.testing.assert_close(loss.double(), rows, rtol=1e-5, atol=1e-5)
    else:
        assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    close(grad, wgrad, torch.bfloat16)


def test_label_inside_the_target_and_fallback():
    z, y, ids, vals = make(256, 32000, seed=2)
    sup = y >= 0
    ids[sup, 0] = y[sup].int().long()  # the label is one of the target ids
    ids[:, 1:] = torch.where(ids[:, 1:] == ids[:, :1], -1, ids[:, 1:])
    ids[10:20] = -1  # these rows take the fallback
    _, _, fids, fvals = make(256, 32000, k=5, seed=3)
    kw = dict(fallback_ids=fids, fallback_values=fvals, temperature=1.3)
    loss, grad = run(z, y, ids, vals, **kw)
    want, _, wgrad = oracle(z, y, ids, vals, fids, fvals, temperature=1.3)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    close(grad, wgrad, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_bit_for_bit_and_cpu(dtype):
    z, y, ids, vals = make(128, 32000, dtype=dtype, seed=4)
    l1, g1 = run(z, y, ids, vals)
    l2, g2 = run(z, y, ids, vals, inplace=True)
    assert torch.equal(l1, l2) and torch.equal(g1, g2)
    l3, g3 = run(z.cpu(), y.cpu(), ids.cpu(), vals.cpu())
    assert l1.item() == pytest.approx(l3.item(), rel=1e-5)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(g1.cpu().float(), g3.float(), rtol=tol, atol=1e-7)


def test_no_target_k0_target_and_n0():
    z, y, _, _ = make(100, 1000, seed=5)
    a, ga = run(z, y)
    b, gb = run(z, y, torch.zeros(100, 0, dtype=torch.int64, device="cuda"),
                torch.zeros(100, 0, device="cuda"))
    assert torch.equal(a, b) and torch.equal(ga, gb)
    want, _, wgrad = oracle(z, y)
    assert a.item() == pytest.approx(want.item(), rel=1e-5)
    close(ga, wgrad, torch.float32)
    e = torch.zeros(0, 1000, device="cuda", requires_grad=True)
    loss = ft.fusion_loss(e, torch.zeros(0, dtype=torch.int64, device="cuda"))
    loss.backward()
    assert loss.item() == 0.0 and e.grad.shape == (0, 1000)


def test_all_rows_ignored():
    z, y, ids, vals = make(64, 5000, seed=6)
    loss, grad = run(z, torch.full_like(y, -100), ids, vals)
    assert loss.item() == 0.0 and torch.all(grad == 0)


def test_upstream_gradient_and_retain_graph():
    z, y, ids, vals = make(64, 4096, dtype=torch.bfloat16, seed=7)
    _, g1 = run(z, y, ids, vals)
    leaf = z.clone().requires_grad_()
    loss = 3.0 * ft.fusion_loss(leaf, y, ids, vals)
    loss.backward(retain_graph=True)
    first = leaf.grad.clone()
    loss.backward()  # the saved gradient already holds the factor 3: applied once
    torch.testing.assert_close(leaf.grad, 2 * first)
    torch.testing.assert_close(first.float(), 3 * g1.float(), rtol=8e-3, atol=0)
    leaf = z.clone().requires_grad_()
    w = torch.arange(64, dtype=torch.float32, device="cuda")
    (ft.fusion_loss(leaf, y, ids, vals, reduction="none") * w).sum().backward()
    _, _, wgrad = oracle(z, y, ids, vals, reduction="none")
    close(leaf.grad, wgrad * w.double()[:, None], torch.bfloat16)


def test_backward_allocates_no_second_gradient():
    """The upstream gradient is applied in place by a kernel (nothing at all for 1): no
    [N, V] buffer in backward, for a plain loss and for a scaled one."""
    z, y, ids, vals = make(512, 32000, dtype=torch.bfloat16, seed=8)
    grad_bytes = z.numel() * z.element_size()
    for factor in (1.0, 0.25):
        leaf = z.clone().requires_grad_()
        logits = leaf * 1
        loss = ft.fusion_loss(logits, y, ids, vals, inplace=True) * factor
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        torch.autograd.grad(loss, logits)
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - before < grad_bytes // 4


def test_validate_false_semantics():
    z, y, ids, vals = make(100, 3000, seed=9)
    bad_y, bad_ids = y.clone(), ids.clone()
    bad_y[5] = 3000  # out of range: counts as ignored
    bad_ids[7, 0] = 99999  # out of range: padding
    loss, grad = run(z, bad_y, bad_ids, vals, validate=False)
    ref_y, ref_ids = y.clone(), ids.clone()
    ref_y[5] = -100
    ref_ids[7, 0] = -1
    want, _, wgrad = oracle(z, ref_y, ref_ids, vals)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    close(grad, wgrad, torch.float32)


def test_validation_on_the_device_reports_later_and_strict_at_once():
    z, y, ids, vals = make(100, 3000, seed=10)
    ft.check_errors()  # nothing pending
    bad = ids.clone()
    bad[17] = -1
    bad[17, 2] = bad[17, 0] = 5  # a duplicate
    ft.fusion_loss(z, y, bad, vals)  # queued: no error yet, no synchronisation
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match=r"call #\d+\): target_ids row 17: id 5 appears twice "
                                         r"\(entries 0 and 2\)"):
        ft.fusion_loss(z, y, ids, vals)
    ft.fusion_loss(z, y, ids, vals)  # reported once, then cleared
    bad_y = y.clone()
    bad_y[3] = -7
    ft.fusion_loss(z, bad_y, ids, vals)
    with pytest.raises(ValueError, match=r"labels row 3: label -7 is outside \[0, 3000\)"):
        ft.check_errors()
    ids40, nonfinite = ids.clone(), vals.clone()
    ids40[40] = -1
    ids40[40, :2] = torch.tensor([11, 12])
    nonfinite[40, 1] = float("nan")
    ft.fusion_loss(z, y, ids40, nonfinite)
    with pytest.raises(ValueError, match=r"target_values row 40 entry 1 \(id 12\): value nan is "
                                         "not finite"):
        ft.check_errors()
    with pytest.raises(ValueError, match=r"^fusion_loss: target_ids row 17: id 5 appears twice"):
        ft.fusion_loss(z, y, bad, vals, validate="strict")
    ft.check_errors()


def test_int64_ids_outside_int32_are_reported_without_sync():
    z, y, ids, vals = make(50, 3000, seed=11)
    big = ids.clone()
    big[9, 0] = 2**40
    ft.fusion_loss(z, y, big, vals)
    with pytest.raises(ValueError, match="target_ids row 9 entry 0: id 2147483647 is outside"):
        ft.check_errors()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nan_and_inf_logits(dtype):
    z, y, ids, vals = make(64, 2048, dtype=dtype, seed=12, ignore=0.0)
    z[1, 10] = float("nan")
    z[2, 20] = float("inf")
    z[3, 30] = -float("inf")  # an impossible token: probability 0, finite loss
    z[4] = -float("inf")  # no distribution at all
    ids[3] = -1
    ids[3, 0], y[3] = 31, 32
    a = ft.fusion_loss(z, y, ids, vals, reduction="none")
    b = ft.fusion_loss(z.cpu(), y.cpu(), ids.cpu(), vals.cpu(), reduction="none")
    torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.isnan(a[[1, 2, 4]]).all() and torch.isfinite(a[[0, 3]]).all()
    _, rows, _ = oracle(z, y, ids, vals, reduction="none")
    keep = [0, 3] + list(range(5, 64))
    torch.testing.assert_close(a[keep].double(), rows[keep], rtol=1e-5, atol=1e-5)


def test_logits_from_a_non_default_stream():
    z, y, ids, vals = make(256, 32000, dtype=torch.bfloat16, seed=13)
    want, _ = run(z, y, ids, vals)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        produced = (z.float() * 1.0).to(torch.bfloat16)  # made on the side stream
        loss, grad = run(produced, y, ids, vals)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(loss, want)


def test_graph_capture_with_device_validation():
    z, y, ids, vals = make(128, 32000, dtype=torch.bfloat16, seed=14)
    x = z.clone().requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up, as torch.cuda.graph asks
        for _ in range(2):
            ft.fusion_loss(x, y, ids, vals).backward()
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = ft.fusion_loss(x, y, ids, vals)
        loss.backward()
    graph.replay()
    torch.cuda.synchronize()
    want, wgrad = run(z, y, ids, vals)
    assert torch.equal(loss, want) and torch.equal(x.grad, wgrad)
    y[6] = 32000 + 5  # bad input in the captured buffers
    graph.replay()
    with pytest.raises(ValueError, match="labels row 6: label 32005 is outside"):
        ft.check_errors()


def test_rows_times_vocab_beyond_2_31():
    """N x V > 2^31 elements (64-bit offsets): rows past the 2^31 boundary against the oracle."""
    v = 151936
    n = (2**31) // v + 64
    g = torch.Generator(device="cuda").manual_seed(15)
    z = torch.randn(n, v, generator=g, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, v, (n,), generator=g, device="cuda")
    ids = torch.randint(0, v, (n, 10), generator=g, device="cuda")
    ids[:, 5:] = -1
    ids = distinct(ids)
    vals = torch.randn(n, 10, generator=g, device="cuda")
    logits = z.clone().requires_grad_()
    rows = ft.fusion_loss(logits, y, ids, vals, reduction="none")
    rows.sum().backward()
    pick = torch.tensor([0, n // 2, (2**31) // v - 1, (2**31) // v, (2**31) // v + 1, n - 1],
                        device="cuda")
    _, wrows, wgrad = oracle(z[pick], y[pick], ids[pick], vals[pick], reduction="none")
    torch.testing.assert_close(rows[pick].double(), wrows, rtol=1e-5, atol=1e-5)
    close(logits.grad[pick], wgrad, torch.bfloat16)


def test_tensors_on_another_device_than_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    z, y, ids, vals = make(64, 4096, seed=16, device="cuda:1")
    with torch.cuda.device(0):
        loss, grad = run(z, y, ids, vals)
        assert torch.cuda.current_device() == 0
    want, _, wgrad = oracle(z, y, ids, vals)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    close(grad, wgrad, torch.float32)


@pytest.mark.parametrize("k", [1, 64])
def test_topk_at_qwen_vocab(k):
    v = 151936
    g = torch.Generator(device="cuda").manual_seed(17)
    z = (torch.randn(300, v, generator=g, device="cuda") * 4).to(torch.bfloat16)
    y = torch.randint(0, v, (300,), generator=g, device="cuda")
    y[:20] = -100
    t = ft.topk_and_ce(z, y, k, seq_offsets=torch.tensor([0, 100, 300]))
    vals, _ = torch.topk(z.float(), k, dim=-1)
    torch.testing.assert_close(t.logits, vals, rtol=0, atol=0)
    assert torch.equal(z.float().gather(1, t.ids.long()), t.logits)
    # sorted by (value desc, id asc)
    key = t.logits.double() * 1e6 - t.ids.double() / v
    assert torch.all(key[:, :-1] >= key[:, 1:])
    ce = F.cross_entropy(z.double(), y, reduction="none", ignore_index=-100)
    torch.testing.assert_close(t.token_ce.double(), ce, rtol=2e-6, atol=2e-6)
    with pytest.raises(ValueError, match="k = 65 must be in"):
        ft.topk_and_ce(z, y, 65)
