"""fusechat.merge.merge_tensors (the C kernels) against the float64 twins in
tests/reference/merge_ref.py, plus the invariants the spec names."""
import zlib

import ml_dtypes
import numpy as np
import pytest

from fusechat.merge import merge_tensors
from tests.reference import merge_ref as ref

BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPES = [(37, 113), (113,), ()]
DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BF16]

# method -> (params for merge_tensors, number of non-base inputs, uses base)
CASES = {
    "linear": (dict(weight=[0.5, -0.25, 1.0]), 3, False),
    "linear_nonorm": (dict(weight=[0.5, -0.25, 1.0], normalize=False), 3, False),
    "task_arithmetic": (dict(weight=[0.3, -0.2, 0.7]), 3, True),
    "task_arithmetic_lambda": (dict(weight=0.3, **{"lambda": 1.5}, normalize=True), 3, True),
    "ties": (dict(weight=[0.2, 0.5, -0.3], density=0.6), 3, True),
    "ties_nonorm": (dict(weight=[1.0, 0.5, 0.3], density=[0.3, 0.6, 1.0], normalize=False), 3, True),
    "dare_ties": (dict(weight=[0.4, 0.6, 0.2], density=0.5), 3, True),
    "dare_linear": (dict(weight=[0.4, 0.6, 0.2], density=0.6, normalize=True), 3, True),
    "dare_linear_norescale": (dict(weight=0.5, density=0.3, rescale=False), 3, True),
    "dare_linear_l2": (dict(weight=[0.4, 0.6, 0.2], density=0.6, rescale_norm="l2"), 3, True),
    "dare_ties_linf": (dict(weight=[0.4, 0.6, 0.2], density=0.5, rescale_norm="linf"), 3, True),
    "della_l2": (dict(weight=[1.0, 0.5, 0.25], density=0.5, epsilon=0.2, rescale_norm="l2"),
                 3, True),
    "breadcrumbs": (dict(weight=[1.0, 0.5, 0.25], density=0.6, gamma=0.05), 3, True),
    "breadcrumbs_ties": (dict(weight=[1.0, 0.5, 0.25], density=0.8, gamma=0.3), 3, True),
    "della": (dict(weight=[1.0, 0.5, 0.25], density=0.5, epsilon=0.2), 3, True),
    "della_linear": (dict(weight=[1.0, 0.5, 0.25], density=0.7, epsilon=0.1), 3, True),
    "sce": (dict(select_topk=0.1), 5, True),
    "sce_full": (dict(), 3, True),
    "sce_fuse": (dict(select_topk=0.3, mask_deltas=False), 5, True),
    "varm": (dict(), 2, True),
    "slerp": (dict(t=0.3), 1, True),
    "nuslerp": (dict(weight=[1.0, 3.0]), 2, False),
    "nuslerp_base_rows": (dict(weight=[2.0, 1.0], nuslerp_flatten=False), 2, True),
    "nuslerp_cols": (dict(weight=[2.0, 1.0], nuslerp_flatten=False, nuslerp_row_wise=True), 2, True),
    "multislerp": (dict(weight=[1.0, 2.0, 0.5]), 3, False),
    "multislerp_base": (dict(weight=[1.0, 2.0, 0.5], normalize_weights=False), 3, True),
    "karcher": (dict(), 3, False),
    "model_stock": (dict(), 3, True),
    "model_stock_rows": (dict(filter_wise=True), 2, True),
    "nearswap": (dict(t=0.05), 1, True),
    "passthrough": (dict(scale=-0.5), 1, False),
    "ram": (dict(epsilon=0.004), 3, True),
    "ramplus_tl": (dict(epsilon=0.004), 3, True),
    "ramplus_tl_r": (dict(r=0.5, alpha=2.0, epsilon=0.01), 2, True),
    "arcee_fusion": (dict(), 1, True),
}


def method_of(case):
    """The method a case name is about: the longest method name it starts with."""
    from fusechat.merge import METHODS

    return max((m for m in METHODS if case == m or case.startswith(m + "_")), key=len)


def per_model(v, n):
    return list(v) if isinstance(v, list) else [v] * n


def reference(method, base, xs, params, seed=0, name=""):
    p = dict(params)
    n = len(xs)
    if method in ref.GTA:
        from fusechat.merge.methods import METHODS
        g = METHODS[method].glob
        q = {"weight": per_model(p.get("weight", 1.0), n),
             "density": per_model(p.get("density", 1.0), n),
             "gamma": per_model(p.get("gamma", 0.01), n),
             "epsilon": per_model(p.get("epsilon", 0.15), n),
             "normalize": p.get("normalize", g["normalize"]),
             "rescale": p.get("rescale", g["rescale"]), "lambda": p.get("lambda", 1.0),
             "rescale_norm": p.get("rescale_norm", "l1")}
        return ref.gta(method, base, xs, q, seed, name)
    if method == "linear":
        return ref.linear(xs, per_model(p["weight"], n), p.get("normalize", True))
    if method == "sce":
        return ref.sce(base, xs, p.get("select_topk", 1.0), p.get("mask_deltas", True))
    if method == "varm":
        return ref.varm(base, xs)
    if method in ("ram", "ramplus_tl"):
        return ref.ram(base, xs, p.get("epsilon", 1e-5), method == "ramplus_tl",
                       p.get("r", 0.1), p.get("alpha", 0.2))
    if method == "arcee_fusion":
        return ref.arcee_fusion(base, xs[0])[0]
    if method == "slerp":
        return ref.slerp(p["t"], base, xs[0])
    if method == "nuslerp":
        return ref.nuslerp(base, xs[0], xs[1], *p["weight"], p.get("nuslerp_flatten", True),
                           p.get("nuslerp_row_wise", False))
    if method == "multislerp":
        return ref.multislerp(base, xs, p["weight"], p.get("normalize_weights", True),
                              p.get("eps", 1e-8))
    if method == "karcher":
        return ref.karcher(xs)
    if method == "model_stock":
        return ref.model_stock(base, xs, p.get("filter_wise", False))
    if method == "nearswap":
        return ref.nearswap(p["t"], base, xs[0])
    if method == "passthrough":
        return ref.passthrough(xs[0], p.get("scale", 1.0))
    raise AssertionError(method)


def make_inputs(shape, n, dtype, seed=0, spread=0.1):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    xs = [base + spread * rng.standard_normal(shape) * rng.uniform(0.5, 2) for _ in range(n)]
    return base.astype(dtype), [x.astype(dtype) for x in xs]


def assert_close(got, want, scale):
    got64 = np.asarray(got, np.float64)
    want_r = np.asarray(np.asarray(want, np.float64).astype(got.dtype), np.float64)
    rtol = {np.dtype(np.float32): 0.0, np.dtype(np.float16): 2.0 ** -10, BF16: 2.0 ** -7}[got.dtype]
    err = np.abs(got64 - want_r)
    tol = 2e-5 * scale + rtol * np.abs(want_r)
    assert np.all(err <= tol), (float(err.max()), float(np.max(err - tol)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)) or "scalar")
@pytest.mark.parametrize("case", sorted(CASES))
def test_against_reference(case, shape, dtype):
    params, n, uses_base = CASES[case]
    method = method_of(case)
    base, xs = make_inputs(shape, n, dtype, seed=zlib.crc32(case.encode()) % 1000)
    got = merge_tensors(method, base if uses_base else None, xs, seed=7, tensor_name="w",
                        **params)
    assert got.dtype == dtype and got.shape == shape
    want = reference(method, base if uses_base else None, xs, params, seed=7, name="w")
    scale = max(1.0, float(np.max(np.abs(np.asarray(base, np.float64)))) * 4)
    assert_close(got, want, scale)


@pytest.mark.parametrize("case", ["task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della",
                                  "sce", "sce_fuse", "varm", "model_stock", "nearswap"])
def test_zero_deltas_return_base(case):
    params, n, _ = CASES[case]
    base, _ = make_inputs((37, 113), 1, np.float32)
    got = merge_tensors(method_of(case), base, [base.copy() for _ in range(n)], **params)
    np.testing.assert_array_equal(got, base)


@pytest.mark.parametrize("case", ["linear", "karcher", "multislerp", "slerp", "nuslerp", "model_stock"])
def test_all_equal_inputs_give_that_input(case):
    params, n, uses_base = CASES[case]
    x, _ = make_inputs((37, 113), 1, np.float32)
    if case == "model_stock":  # equal deltas: cos = 1, t = 1 -> the (equal) models
        base = np.zeros_like(x)
        got = merge_tensors("model_stock", base, [x, x, x])
        np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-6)
        return
    base = x.copy() if uses_base else None
    got = merge_tensors(case, base, [x.copy() for _ in range(n)], **params)
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-6)


def test_slerp_endpoints():
    base, (x,) = make_inputs((37, 113), 1, np.float32, spread=1.0)
    np.testing.assert_allclose(merge_tensors("slerp", base, [x], t=0.0), base, atol=1e-6)
    np.testing.assert_allclose(merge_tensors("slerp", base, [x], t=1.0), x, atol=1e-6)


def test_ties_output_deltas_only_where_signs_agree():
    base, xs = make_inputs((64, 257), 3, np.float32)
    w = [0.5, 1.0, 0.8]
    out = merge_tensors("ties", base, xs, weight=w, density=0.5)
    d_out = out.astype(np.float64) - base
    trimmed = []
    for wi, x in zip(w, xs):
        d = x - base
        keep = ref._topk_mask(np.abs(d).ravel(), int(0.5 * d.size)).reshape(d.shape)
        trimmed.append(wi * np.where(keep, d, 0).astype(np.float64))
    T = np.stack(trimmed)
    elected = np.where(T.sum(0) >= 0, 1.0, -1.0)
    agreeing = (np.sign(T) == elected).any(0)
    nz = d_out != 0
    # a nonzero merged delta has the elected sign and comes from a kept delta of that sign
    assert nz.mean() > 0.5
    assert np.all(np.sign(d_out[nz]) == elected[nz])
    assert np.all(agreeing[nz])
    # where no kept delta agrees with the election, the output is the base, exactly
    assert (~agreeing).any()
    np.testing.assert_array_equal(out[~agreeing], base[~agreeing])


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_keeps_density_and_favours_large_deltas(method):
    base, (x,) = make_inputs((256, 512), 1, np.float32)
    delta = x.astype(np.float64) - base
    out = merge_tensors(method, base, [x], weight=1.0, density=0.5, epsilon=0.3, rescale=False)
    kept = (out.astype(np.float64) - base) != 0
    assert abs(kept.mean() - 0.5) < 0.01
    # p runs from 0.2 (smallest |delta| of a row) to 0.8 (largest)
    big = np.abs(delta) >= np.median(np.abs(delta), axis=1, keepdims=True)
    assert kept[big].mean() > 0.62 and kept[~big].mean() < 0.38


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_keeps_density_and_l1(method):
    base, (x,) = make_inputs((128, 513), 1, np.float32)
    delta = x.astype(np.float64) - base
    for seed in range(20):
        out = merge_tensors(method, base, [x], weight=1.0, density=0.3, seed=seed,
                            tensor_name="layer.0")
        d = out.astype(np.float64) - base
        kept = np.count_nonzero(np.abs(d) > 0) / d.size
        assert abs(kept - 0.3) < 0.01, kept
        assert abs(np.abs(d).sum() / np.abs(delta).sum() - 1) < 0.01


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_dare_rescale_norm_against_mergekit_sparsify(norm):
    """rescale_norm against mergekit's own sparsifier (random masks: compared by their
    statistics): both keep about `density` of the elements, each kept delta scaled by one
    factor, and that factor makes the chosen norm of the kept deltas that of the whole."""
    torch = pytest.importorskip("torch")
    sparsify = pytest.importorskip("mergekit.sparsify")
    base, (x,) = make_inputs((128, 513), 1, np.float32)
    delta = (x - base).astype(np.float32)
    torch.manual_seed(0)
    mk = sparsify.sparsify(torch.from_numpy(delta.copy()), 0.3, sparsify.SparsificationMethod.random,
                           rescale_norm=sparsify.RescaleNorm(norm)).numpy().astype(np.float64)
    fc = merge_tensors("dare_linear", base, [x], weight=1.0, density=0.3, rescale_norm=norm,
                       seed=4, tensor_name="t").astype(np.float64) - base
    f = ref.NORMS[norm]
    for got in (mk, fc):
        kept = got != 0
        assert abs(kept.mean() - 0.3) < 0.01
        want = f(delta) / f(np.where(kept, delta, 0)) * np.where(kept, delta, 0)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()  # fc: B + d rounded
        if norm != "linf":  # linf: the kept maximum usually equals the whole's
            np.testing.assert_allclose(f(got), f(delta.astype(np.float64)), rtol=1e-5)
    # the expected factor of the two masks agrees: l1 ~ 1/density, l2 ~ 1/sqrt(density)
    s_mk, s_fc = (np.abs(g[g != 0] / delta[g != 0]).mean() for g in (mk, fc))
    assert abs(s_mk / s_fc - 1) < 0.02, (s_mk, s_fc)


def test_dare_masks_differ_by_seed_model_and_tensor():
    base, (x,) = make_inputs((64, 64), 1, np.float32)
    a = merge_tensors("dare_linear", base, [x], weight=1.0, density=0.5, seed=1, tensor_name="a")
    b = merge_tensors("dare_linear", base, [x], weight=1.0, density=0.5, seed=2, tensor_name="a")
    c = merge_tensors("dare_linear", base, [x], weight=1.0, density=0.5, seed=1, tensor_name="b")
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    np.testing.assert_array_equal(
        a, merge_tensors("dare_linear", base, [x], weight=1.0, density=0.5, seed=1, tensor_name="a"))


@pytest.mark.parametrize("case", ["ties", "dare_ties", "della", "breadcrumbs_ties", "sce",
                                  "model_stock_rows", "linear", "karcher", "nuslerp_cols", "varm",
                                  "ramplus_tl"])
def test_same_bytes_for_any_thread_count(case):
    params, n, uses_base = CASES[case]
    base, xs = make_inputs((301, 1031), n, BF16, seed=3)  # ~310k elements: many blocks
    outs = [merge_tensors(method_of(case), base if uses_base else None, xs, seed=5,
                          tensor_name="t", threads=k, **params).tobytes() for k in (1, 2, 8)]
    assert outs[0] == outs[1] == outs[2]


ISA_CASES = ["task_arithmetic", "task_arithmetic_lambda", "ties", "ties_nonorm", "dare_ties",
             "dare_linear", "dare_linear_norescale", "dare_linear_l2", "dare_ties_linf", "breadcrumbs", "breadcrumbs_ties", "della",
             "della_linear", "sce", "sce_full", "sce_fuse", "varm"]


@pytest.fixture
def isa_switch():
    """Sets the kernels' instruction set; back to "auto" afterwards."""
    from fusechat import _C

    yield _C.merge_set_isa
    _C.merge_set_isa("auto")


def available_isas(isa_switch):
    """The kernel builds this CPU can run (the portable one always)."""
    isas = ["portable"]
    for isa in ("avx2", "avx512"):
        try:
            isa_switch(isa)
            isas.append(isa)
        except ValueError:
            pass
    return isas


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ISA_CASES)
def test_same_bytes_for_every_instruction_set(case, dtype, isa_switch):
    """The AVX2 and AVX-512 builds of the kernels give the same bytes as the portable one
    (the DARE and DELLA masks included), for any thread count; sizes that are not
    multiples of any vector width or block size."""
    isas = available_isas(isa_switch)
    if len(isas) == 1:
        pytest.skip("this CPU runs only the portable build of the kernels")
    params, n, uses_base = CASES[case]
    base, xs = make_inputs((97, 3001), n, dtype, seed=17)
    base = base if uses_base else None
    outs = {}
    for isa in isas:
        isa_switch(isa)
        for threads in (1, 3):
            outs[isa, threads] = merge_tensors(method_of(case), base, xs, seed=9, threads=threads,
                                               tensor_name="model.layers.3.mlp.up_proj.weight",
                                               **params).tobytes()
    assert len(set(outs.values())) == 1, [k for k in outs if outs[k] != outs["portable", 1]]


def test_instruction_set_names(isa_switch):
    from fusechat import _C

    isa_switch("portable")
    assert _C.merge_isa() == "portable"
    isa_switch("auto")
    assert _C.merge_isa() == available_isas(isa_switch)[-1]  # auto: the widest
    with pytest.raises(ValueError, match="avx512"):
        isa_switch("sse9")


def test_topk_ties_broken_by_index():
    # every |delta| equal: TIES at density 0.5 keeps exactly the first half of the elements
    base = np.zeros(1000, np.float32)
    x = np.ones(1000, np.float32)
    out = merge_tensors("ties", base, [x], weight=1.0, density=0.5)
    np.testing.assert_array_equal(out[:500], 1.0)
    np.testing.assert_array_equal(out[500:], 0.0)


@pytest.mark.parametrize("method,params,n,match", [
    ("ties", dict(weight=1.0, density=0.0), 1, "density"),
    ("ties", dict(weight=1.0, density=1.5), 1, "density"),
    ("della", dict(weight=1.0, density=0.9), 1, "epsilon 0.15 is too large"),
    ("slerp", dict(t=0.5), 2, "exactly 1 model"),
    ("ties", dict(weight=1.0, desnity=0.5), 1, "no parameter desnity"),
    ("ties", dict(density=0.5), 1, "needs weight"),
    ("nearswap", dict(), 1, "needs the parameter t"),
    ("model_stock", dict(), 1, "at least 2"),
    ("bogus", dict(), 1, "unknown merge_method 'bogus'"),
    ("linear", dict(weight=[1.0, -1.0]), 2, "sum to 0"),
    ("dare_linear", dict(weight=1.0, rescale_norm="l3"), 1, "rescale_norm must be one of l1, l2, linf"),
    ("slerp", dict(t=0.5, rescale_norm="l2"), 1, "no parameter rescale_norm"),
    ("ram", dict(epsilon=-1.0), 2, "epsilon must be >= 0"),
    ("ramplus_tl", dict(alpha=-0.5), 2, "alpha must be >= 0"),
])
def test_bad_arguments_are_refused(method, params, n, match):
    base, xs = make_inputs((8, 8), n, np.float32)
    with pytest.raises(ValueError, match=match):
        merge_tensors(method, None if method == "linear" else base, xs, **params)


def test_docs_worked_sce_example():
    """The numbers of docs/merging.md section 6."""
    B = np.array([0.10, -0.20, 0.30, 0.05, 0.00, -0.10], np.float32)
    T = np.array([[0.02, -0.01, 0.00, 0.03, 0.01, -0.02],
                  [0.04, 0.01, -0.01, 0.00, 0.01, -0.03],
                  [-0.03, -0.02, 0.02, 0.01, 0.00, 0.02]], np.float32)
    xs = [B + t for t in T]
    np.testing.assert_allclose(merge_tensors("sce", B, xs, select_topk=0.5),
                               [0.13486, -0.21654, 0.30, 0.05, 0.0, -0.12743], atol=6e-6)
    np.testing.assert_allclose(merge_tensors("sce", B, xs, select_topk=0.5, mask_deltas=False),
                               [0.13486, -0.21654, 0.32, 0.06692, 0.01, -0.12743], atol=6e-6)


@pytest.mark.parametrize("special", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["kept", "dropped"])
def test_sce_with_nonfinite_deltas_matches_the_twin(special, where):
    """An inf/NaN delta makes SCE leave its compact output pass (which reads only the kept
    deltas) for the full one: the result must still be the twin's, NaNs where it has them."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal((37, 113)).astype(np.float32)
    xs = [base + rng.standard_normal(base.shape).astype(np.float32) * s
          for s in (0.1, 0.2, 0.05, 0.3)]
    var = np.var(np.stack(xs) - base, axis=0)
    pos = np.unravel_index(np.argmax(var) if where == "kept" else np.argmin(var), var.shape)
    xs[1][pos] = special
    with np.errstate(all="ignore"):
        got = merge_tensors("sce", base, xs, select_topk=0.1)
        want = ref.sce(base.astype(np.float64), [x.astype(np.float64) for x in xs], 0.1, True)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(257, 1000), (3, 70000), (200000,)], ids=str)
def test_arcee_fusion_threads_and_mask(shape):
    """arcee_fusion on tensors of many blocks (one long row included): the same bytes at 1
    and 3 threads, every element the base's or the model's (b + d), and the twin's mask
    (about 5-8% of a Gaussian delta lies beyond Tukey's fence)."""
    base, (x,) = make_inputs(shape, 1, np.float32, seed=5, spread=0.02)
    one = merge_tensors("arcee_fusion", base, [x], threads=1)
    three = merge_tensors("arcee_fusion", base, [x], threads=3)
    assert one.tobytes() == three.tobytes()
    want, mask = ref.arcee_fusion(base, x)
    assert np.array_equal(one, want.astype(np.float32))
    fused = one != base
    assert np.array_equal(fused, mask & (x != base))
    assert np.array_equal(one[mask], (base + (x - base))[mask])
    assert 0.02 < mask.mean() < 0.12, mask.mean()


def test_arcee_fusion_takes_base_and_one_model():
    base, xs = make_inputs((8, 8), 2, np.float32)
    with pytest.raises(ValueError, match="arcee_fusion needs exactly 1 model besides the base"):
        merge_tensors("arcee_fusion", base, xs)
    with pytest.raises(ValueError, match="arcee_fusion needs a base model"):
        merge_tensors("arcee_fusion", None, xs[:1])
