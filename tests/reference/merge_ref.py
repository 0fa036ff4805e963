"""Float64 NumPy twins of fusechat's merge methods, written from docs/merging.md (mergekit's
semantics plus fusechat's documented choices). Slow and obviously correct: sorts instead of
radix selects, explicit loops over rows, no blocking.

Two things are float32 on purpose, because they are discrete decisions the spec defines on
float32 values: the ranking keys (|delta| for top-k and DELLA ranks, the SCE variance) and the
random draws u < float32(p). Everything else is float64.
"""
import numpy as np

M64 = (1 << 64) - 1
GOLD = 0x9E3779B97F4A7C15


def _mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def tensor_key(name):
    h = 0xCBF29CE484222325
    for c in name.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return h


def rng_stream(seed, key, model):
    with np.errstate(over="ignore"):
        s = _mix64(np.uint64((seed + GOLD) & M64))
        s = _mix64(s ^ np.uint64(key))
        return int(_mix64(np.uint64((int(s) + (model + 1) * GOLD) & M64)))


def rng_uniform(stream, n):
    idx = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = _mix64(np.uint64(stream) + (idx + np.uint64(1)) * np.uint64(GOLD))
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)


def _f32_delta(x, b):
    return np.asarray(x, np.float32) - np.asarray(b, np.float32)


def _topk_mask(keys, k):
    """The k largest keys, ties to the lower index."""
    keys = keys.ravel()
    n = keys.size
    mask = np.zeros(n, bool)
    if k <= 0:
        return mask
    order = np.lexsort((np.arange(n), -keys.astype(np.float64)))
    mask[order[:min(k, n)]] = True
    return mask


def _rows(shape, n):
    cols = shape[-1] if len(shape) >= 2 and shape[-1] > 0 else max(n, 1)
    return n // cols if n else 0, cols


NORMS = {"l1": lambda v: np.abs(v).sum(), "l2": lambda v: np.sqrt((v * v).sum()),
         "linf": lambda v: np.abs(v).max(initial=0.0)}


def sparsify(kind, delta, delta32, density, gamma, epsilon, rescale, stream, rows_cols,
             rescale_norm="l1"):
    """delta: float64 flat; delta32: float32 flat (for keys). Returns the sparsified delta."""
    n = delta.size
    if kind is None or density >= 1.0:
        return delta
    mag = np.abs(delta32)
    if kind == "magnitude":
        keep = _topk_mask(mag, max(1, int(density * n)))  # at least one, as mergekit 0.1.5
    elif kind == "outliers":
        target, n_top = int(density * n), int(gamma * n)
        n_bot = n - target - n_top
        if n_bot < 0:
            n_top, n_bot = n_top + n_bot, 0
        keep = _topk_mask(mag, n - n_bot) & ~_topk_mask(mag, n_top)
    elif kind == "random":
        keep = rng_uniform(stream, n) < np.float32(density)
    elif kind == "della":
        u = rng_uniform(stream, n)
        rows, cols = rows_cols
        keep = np.zeros(n, bool)
        for r in range(rows):
            seg = slice(r * cols, (r + 1) * cols)
            order = np.lexsort((np.arange(cols), mag[seg]))  # ascending, ties by index
            rank = np.empty(cols, np.int64)
            rank[order] = np.arange(cols)
            norm = rank / (cols - 1) if cols > 1 else np.full(cols, 0.5)
            p = (density - epsilon + 2.0 * epsilon * norm).astype(np.float32)
            keep[seg] = u[seg] < p
    out = np.where(keep, delta, 0.0)
    if rescale:
        a, k = NORMS[rescale_norm](delta), NORMS[rescale_norm](out)
        if a >= 1e-7 and k >= 1e-7:
            out = out * (a / k)
    return out


GTA = {  # consensus, sparsifier
    "task_arithmetic": (False, None), "ties": (True, "magnitude"),
    "dare_ties": (True, "random"), "dare_linear": (False, "random"),
    "breadcrumbs": (False, "outliers"), "breadcrumbs_ties": (True, "outliers"),
    "della": (True, "della"), "della_linear": (False, "della"),
}


def gta(method, base, xs, p, seed=0, name=""):
    consensus, kind = GTA[method]
    shape = np.shape(base)
    B = np.asarray(base, np.float64).ravel()
    n = B.size
    key = tensor_key(name)
    D, W, E = [], [], []  # E: the election terms, float32(w) * float32 delta in float64
    for i, x in enumerate(xs):
        d = np.asarray(x, np.float64).ravel() - B
        d32 = _f32_delta(np.asarray(x).ravel(), np.asarray(base).ravel())
        d = sparsify(kind, d, d32, p["density"][i], p["gamma"][i], p["epsilon"][i],
                     p["rescale"], rng_stream(seed, key, i), _rows(shape, n),
                     p.get("rescale_norm", "l1"))
        D.append(p["weight"][i] * d)
        W.append(p["weight"][i])
        E.append(float(np.float32(p["weight"][i])) * d.astype(np.float32).astype(np.float64))
    if not D:
        return B.reshape(shape)
    D, W = np.stack(D), np.array(W)[:, None] * np.ones((1, n))
    if consensus:
        s = np.sum(E, axis=0)
        maj = np.where(s >= 0, 1.0, -1.0)
        m = np.sign(D) == maj
        mix, div = (D * m).sum(0), (W * m).sum(0)
        div[div == 0] = 1
    else:
        mix, div = D.sum(0), W.sum(0)
        div[np.abs(div) < 1e-8] = 1
    if p["normalize"]:
        mix = mix / div
    mix = mix * p["lambda"]
    return (B + mix).reshape(shape)


def sce(base, xs, select_topk=1.0, mask_deltas=True):
    shape = np.shape(base)
    B = np.asarray(base, np.float64).ravel()
    if not xs:
        return B.reshape(shape)
    T = np.stack([np.asarray(x, np.float64).ravel() - B for x in xs])
    T32 = np.stack([_f32_delta(np.asarray(x).ravel(), np.asarray(base).ravel()) for x in xs])
    mask = np.ones(B.size, bool)
    if select_topk <= 0:
        mask[:] = False
    elif select_topk < 1:
        var = T32.astype(np.float64).var(0).astype(np.float32)
        k = int(np.count_nonzero(var) * select_topk)
        mask = _topk_mask(var, k)
    Tm = T * mask
    w = (Tm ** 2).mean(1)
    tot = w.sum()
    if mask_deltas:
        w = np.full(len(xs), 1 / len(xs)) if abs(tot) < 1e-6 else w / tot
        T = Tm
    else:
        w = np.full(len(xs), 1 / len(xs)) if tot == 0 else w / tot
    # the election sum is exact over the float32 deltas (a zero sum counts as positive)
    T32m = T32.astype(np.float64) * (mask if mask_deltas else 1)
    maj = np.where(T32m.sum(0) >= 0, 1.0, -1.0)
    E = np.sign(T) == maj
    num = (w[:, None] * E * T).sum(0)
    den = (w[:, None] * E).sum(0)
    den = np.maximum(den, 1e-6) if mask_deltas else np.where(den == 0, 1.0, den)
    return (B + num / den).reshape(shape)


def varm(base, xs):
    B = np.asarray(base, np.float64)
    T = [np.asarray(x, np.float64) - B for x in xs]
    e = np.array([np.mean(t ** 2) for t in T])
    w = np.full(len(T), 1 / len(T)) if e.sum() == 0 else e / e.sum()
    return B + sum(wi * t for wi, t in zip(w, T))


def linear(xs, weights, normalize=True):
    w = np.asarray(weights, np.float64)
    out = sum(wi * np.asarray(x, np.float64) for wi, x in zip(w, xs))
    return out / w.sum() if normalize else out


def slerp(t, v0, v1):
    a, b = np.asarray(v0, np.float64), np.asarray(v1, np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    dot = np.sum((a / na if na > 1e-8 else a) * (b / nb if nb > 1e-8 else b))
    if abs(dot) > 0.9995:
        return (1 - t) * a + t * b
    th = np.arccos(dot)
    return (np.sin((1 - t) * th) * a + np.sin(t * th) * b) / np.sin(th)


def _nuslerp_vec(t, v0, v1):
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    c = np.clip(np.sum(v0 / max(n0, 1e-7) * v1 / max(n1, 1e-7)), -1, 1)
    th = np.arccos(c)
    s = np.sin(th)
    if abs(s) < 1e-8:
        return (1 - t) * v0 + t * v1
    return (np.sin((1 - t) * th) * v0 + np.sin(t * th) * v1) / s


def nuslerp(base, x0, x1, w0, w1, flatten=True, row_wise=False):
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    a, b = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
    B = None if base is None else np.asarray(base, np.float64)
    if B is not None:
        a, b = a - B, b - B
    shape = a.shape
    if flatten or a.ndim < 2:
        out = _nuslerp_vec(t, a.ravel(), b.ravel()).reshape(shape)
    else:
        a2, b2 = a.reshape(-1, shape[-1]), b.reshape(-1, shape[-1])
        if row_wise:
            out = np.stack([_nuslerp_vec(t, a2[:, c], b2[:, c]) for c in range(a2.shape[1])], 1)
        else:
            out = np.stack([_nuslerp_vec(t, a2[r], b2[r]) for r in range(a2.shape[0])])
        out = out.reshape(shape)
    return out if B is None else out + B


def multislerp(base, xs, weights, normalize_weights=True, eps=1e-8):
    X = np.stack([np.asarray(x, np.float64).ravel() for x in xs])
    B = None if base is None else np.asarray(base, np.float64).ravel()
    if B is not None:
        X = X - B
    w = np.asarray(weights, np.float64)
    if normalize_weights:
        w = w / w.sum()
    norms = np.linalg.norm(X, axis=1)
    U = X / (norms[:, None] + eps)
    m = (w[:, None] * U).sum(0)
    mn = np.linalg.norm(m)
    if mn < eps:
        out = w[0] * X[0] + w[1] * X[1]
    else:
        m = m / mn
        T = (w[:, None] * (U - (U @ m)[:, None] * m[None, :])).sum(0)
        a = np.linalg.norm(T) + eps
        out = (m * np.cos(a) + T * np.sin(a) / a) * (w * norms).sum()
    if B is not None:
        out = out + B
    return out.reshape(np.shape(xs[0]))


def karcher(xs, max_iter=10, tol=1e-5):
    if len(xs) == 1:
        return np.asarray(xs[0], np.float64)
    X = [np.asarray(x, np.float64).ravel() for x in xs]
    alphas = [1 / len(X)] * len(X)
    norms = [np.linalg.norm(x) for x in X]
    units = [x / nn if nn > 0 else np.zeros_like(x) for x, nn in zip(X, norms)]
    valid = [i for i, nn in enumerate(norms) if nn > tol]
    shape = np.shape(xs[0])
    if not valid:
        return np.zeros(shape)
    al = [1 / len(valid)] * len(valid)
    vu = [units[i] for i in valid]
    mean = sum(a * u for a, u in zip(al, vu))
    mn = np.linalg.norm(mean)
    mean = vu[0].copy() if mn < tol else mean / mn
    for _ in range(max_iter):
        tan = np.zeros_like(mean)
        for a, u in zip(al, vu):
            dot = np.clip(mean @ u, -1, 1)
            th = np.arccos(dot)
            if th < tol:
                continue
            tan += a * (th / np.sin(th)) * (u - dot * mean)
        tn = np.linalg.norm(tan)
        if tn < tol:
            break
        mean = np.cos(tn) * mean + np.sin(tn) * tan / tn
        un = np.linalg.norm(mean)
        if un > tol:
            mean = mean / un
    return (sum(a * nn for a, nn in zip(alphas, norms)) * mean).reshape(shape)


def model_stock(base, xs, filter_wise=False):
    B = np.asarray(base, np.float64)
    X = [np.asarray(x, np.float64) for x in xs]
    N = len(X)
    shape = B.shape
    if filter_wise and B.ndim >= 2:
        vecs = [(x - B).reshape(-1, shape[-1]) for x in X]
    else:
        vecs = [(x - B).reshape(1, -1) for x in X]
    rows = vecs[0].shape[0]
    t = np.empty(rows)
    for r in range(rows):
        cs = []
        for i in range(N):
            for j in range(i + 1, N):
                a, b = vecs[i][r], vecs[j][r]
                cs.append(np.clip(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-6), -1, 1))
        c = np.mean(cs)
        t[r] = N * c / (1 + (N - 1) * c)
    mean = sum(X) / N
    if filter_wise and B.ndim >= 2:
        tt = t[:, None]
        return (tt * mean.reshape(-1, shape[-1]) + (1 - tt) * B.reshape(-1, shape[-1])).reshape(shape)
    return t[0] * mean + (1 - t[0]) * B


def nearswap(t, base, x):
    B, X = np.asarray(base, np.float64), np.asarray(x, np.float64)
    w = np.clip(t / np.maximum(np.abs(B - X), 1e-6), 0, 1)
    return w * X + (1 - w) * B


def passthrough(x, scale=1.0):
    return np.asarray(x, np.float64) * scale


def ram(base, xs, epsilon=1e-5, plus=False, r=0.1, alpha=0.2):
    """Reinforced Agent Merging (and ramplus_tl with plus): active deltas averaged over the
    models active at each position; a model's unique ones scaled by 1 + r clamp(rho, 0, alpha)
    in ramplus_tl, rho = its shared / unique active counts over the tensor."""
    B = np.asarray(base, np.float64)
    T = [np.asarray(x, np.float32).astype(np.float64) - np.asarray(base, np.float32) for x in xs]
    act = [np.abs(t) > np.float32(epsilon) for t in T]
    c = np.sum(act, axis=0) if T else np.zeros(B.shape)
    out = B.copy()
    for t, a in zip(T, act):
        lam = 1.0
        if plus:
            shared, unique = np.sum(a & (c > 1)), np.sum(a & (c == 1))
            lam = 1.0 + r * min(max(shared / max(unique, epsilon), 0.0), alpha)
        out += np.where(a & (c == 1), lam * t, 0.0) + np.where(a & (c > 1), t / np.maximum(c, 1), 0.0)
    return out


def arcee_fusion(base, x, fence=1.5):
    """Arcee Fusion: per row (last dimension), KL(softmax(x_r) || softmax(b_r)) in float64;
    importance |d| * |KL_r| in float32; Tukey's fence median + 1.5 IQR over the tensor's
    importances (linear-interpolation quantiles); the deltas above it are added to the base.
    Returns (out in float64 from float32 arithmetic, mask)."""
    b32 = np.asarray(base, np.float32)
    x32 = np.asarray(x, np.float32)
    shape = b32.shape
    cols = shape[-1] if b32.ndim >= 2 else max(b32.size, 1)
    b2, x2 = b32.reshape(-1, cols), x32.reshape(-1, cols)
    b64, x64 = b2.astype(np.float64), x2.astype(np.float64)

    def lse(v):
        m = v.max(axis=1, keepdims=True)
        return m + np.log(np.exp(v - m).sum(axis=1, keepdims=True))

    lx, lb = lse(x64), lse(b64)
    kl = (np.exp(x64 - lx) * ((x64 - b64) - (lx - lb))).sum(axis=1, keepdims=True)
    d32 = x2 - b2
    imp = np.abs(d32) * np.abs(kl).astype(np.float32)            # float32 product
    q1, med, q3 = np.quantile(imp.astype(np.float64).ravel(), [0.25, 0.5, 0.75])
    mask = imp.astype(np.float64) > med + fence * (q3 - q1)
    out = b2 + np.where(mask, d32, np.float32(0))               # float32 sum
    return out.astype(np.float64).reshape(shape), mask.reshape(shape)


def lora(w, a, b, scale, fan_in_fan_out=False):
    """A LoRA target merged into its base weight: W + scale · B @ A (transposed when the
    adapter stores fan_in_fan_out), float64."""
    delta = np.asarray(b, np.float64) @ np.asarray(a, np.float64)
    return np.asarray(w, np.float64) + scale * (delta.T if fan_in_fan_out else delta)


def pad_rows(m, multiple):
    """tokenizer.pad_to_multiple_of: the rows padded to a multiple of `multiple` with the mean
    of the matrix's rows."""
    m = np.asarray(m)
    extra = -len(m) % multiple
    return np.concatenate([m, np.broadcast_to(m.mean(0, dtype=np.float64).astype(m.dtype),
                                              (extra, m.shape[1]))])
