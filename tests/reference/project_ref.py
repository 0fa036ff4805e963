"""Slow, plain-Python twin of the byte-exact projection (docs/alignment.md, "Projection onto
pivot tokens"), written from that text. Vocabularies come in as lists: canonical bytes per
id, which pivot ids are lookup pieces, and the source-special -> pivot-special role map."""
import math
import struct

WS = b" \t\n\r"
EXACT, PREFIX, FALLBACK, LAST = 0, 1, 2, 3


# -- bytes ------------------------------------------------------------------------------

def _match_ws(a, b):
    """Matched flags of two whitespace runs: equal runs byte for byte, else a longest common
    subsequence walked from the front (ties: skip a byte of a)."""
    ma, mb = [False] * len(a), [False] * len(b)
    if a == b:
        return [True] * len(a), [True] * len(b)
    if not a or not b:
        return ma, mb
    if len(a) > 4096 or len(b) > 4096:
        k = 0
        while k < len(a) and k < len(b) and a[k] == b[k]:
            ma[k] = mb[k] = True
            k += 1
        return ma, mb
    na, nb = len(a), len(b)
    L = [[0] * (nb + 1) for _ in range(na + 1)]
    for i in range(na - 1, -1, -1):
        for j in range(nb - 1, -1, -1):
            L[i][j] = L[i + 1][j + 1] + 1 if a[i] == b[j] else max(L[i + 1][j], L[i][j + 1])
    i = j = 0
    while i < na and j < nb:
        if a[i] == b[j]:
            ma[i] = mb[j] = True
            i += 1
            j += 1
        elif L[i + 1][j] >= L[i][j + 1]:
            i += 1
        else:
            j += 1
    return ma, mb


MATCHED, ONESIDED, DIFFERING = 0, 1, 2


def match_bytes(S, P):
    """(state of every source byte, state of every pivot byte, source index of every
    matched pivot byte or -1)."""
    ss, ps, to_src = [ONESIDED] * len(S), [ONESIDED] * len(P), [-1] * len(P)
    i = j = 0
    while i < len(S) or j < len(P):
        wa = i < len(S) and S[i] in WS
        wb = j < len(P) and P[j] in WS
        if wa or wb:
            i2, j2 = i, j
            while i2 < len(S) and S[i2] in WS:
                i2 += 1
            while j2 < len(P) and P[j2] in WS:
                j2 += 1
            ma, mb = _match_ws(S[i:i2], P[j:j2])
            src_matched = [i + k for k in range(i2 - i) if ma[k]]
            piv_matched = [j + k for k in range(j2 - j) if mb[k]]
            for x, y in zip(src_matched, piv_matched):
                ss[x] = ps[y] = MATCHED
                to_src[y] = x
            i, j = i2, j2
            continue
        if i < len(S) and j < len(P) and S[i] == P[j]:
            ss[i] = ps[j] = MATCHED
            to_src[j] = i
            i += 1
            j += 1
            continue
        found = None
        for t in range(1, 129):
            for a in range(max(0, t - 64), min(t, 64) + 1):
                b = t - a
                x, y = i + a, j + b
                if x > len(S) or y > len(P):
                    continue
                if x == len(S) and y == len(P):
                    found = (a, b)
                    break
                r = min(4, len(S) - x, len(P) - y)
                if r >= 1 and S[x:x + r] == P[y:y + r]:
                    found = (a, b)
                    break
            if found:
                break
        if found is None:
            found = (len(S) - i, len(P) - j)
        a, b = found
        for x in range(i, i + a):
            ss[x] = DIFFERING
        for y in range(j, j + b):
            ps[y] = DIFFERING
        i, j = i + a, j + b
    return ss, ps, to_src


# -- lookup ------------------------------------------------------------------------------

class Lookup:
    """Longest pivot piece (by canonical bytes) that is a prefix of a byte string."""

    def __init__(self, piv_can, piv_special, piv_byte):
        self.best = {}
        for i, b in enumerate(piv_can):
            if not b or piv_special[i]:
                continue
            old = self.best.get(b)
            if old is None or (piv_byte[old] and not piv_byte[i]):
                self.best[b] = i
        self.maxlen = max((len(b) for b in self.best), default=0)

    def __call__(self, w):
        for n in range(min(len(w), self.maxlen), 0, -1):
            i = self.best.get(bytes(w[:n]))
            if i is not None:
                return i
        return -1


# -- projection ----------------------------------------------------------------------------

def _clamp(lp):
    """A stored log-probability, at most 0."""
    lp = float(lp)
    return lp if lp < 0 else 0.0


def _f32(x):
    """x rounded to float32, as the output stores it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _log_sum(terms):
    """The log-probability of a list of terms: one term is itself, several are summed as
    probabilities in order (no terms: -inf)."""
    if not terms:
        return -math.inf
    if len(terms) == 1:
        return terms[0]
    total = sum(math.exp(t) for t in terms)
    return math.log(total) if total > 0 else -math.inf


def _true_lp(i, true_id, tk_ids, tk_lp, true_lp):
    if true_lp is not None and not math.isnan(true_lp[i]):
        return _clamp(true_lp[i])
    for v, lp in zip(tk_ids[i], tk_lp[i]):
        if v == true_id:
            return _clamp(lp)
    probs = [math.exp(_clamp(lp)) for v, lp in zip(tk_ids[i], tk_lp[i]) if v >= 0]
    if not probs:
        return 0.0
    low = min(min(probs), max(0.0, 1.0 - sum(probs)))
    return math.log(low) if low > 0 else -math.inf


def _common_prefix(a, b):
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def project(src_ids, piv_ids, tk_ids, tk_lp, true_lp, src_can, piv_can, piv_special, piv_byte,
            role_map, k_out):
    """Per pivot position: [(pivot id, log-prob)], gold log-prob (nan) and resolution."""
    n, m = len(src_ids), len(piv_ids)
    look = Lookup(piv_can, piv_special, piv_byte)
    S = b"".join(src_can[t] for t in src_ids)
    P = b"".join(piv_can[t] for t in piv_ids)
    ss, ps, to_src = match_bytes(S, P)
    B, E, pos = [], [], 0
    for t in src_ids:
        B.append(pos)
        pos += len(src_can[t])
        E.append(pos)
    PB, PE, pos = [], [], 0
    for t in piv_ids:
        PB.append(pos)
        pos += len(piv_can[t])
        PE.append(pos)
    cut, last = [], 0
    for j in range(m):
        for y in range(PB[j], PE[j]):
            if to_src[y] >= 0:
                last = to_src[y] + 1
        cut.append(last)

    lists, gold_lp, res = [], [], []
    for j in range(m):
        if j == m - 1:
            lists.append([])
            gold_lp.append(float("nan"))
            res.append(LAST)
            continue
        out = _position(j, src_ids, piv_ids, tk_ids, tk_lp, true_lp, src_can, piv_can, role_map,
                        look, S, P, ss, ps, to_src, B, E, PB, PE, cut)
        if out is None:
            lists.append([])
            gold_lp.append(float("nan"))
            res.append(FALLBACK)
            continue
        terms, gold, kind = out
        # ordered as written: float32 log-probability, largest first, ties by lower id
        entries = sorted((-v, pid) for pid, v in ((pid, _f32(_log_sum(t)))
                                                  for pid, t in terms.items()) if v > -math.inf)
        lists.append([(pid, -v) for v, pid in entries[:k_out]])
        gold_lp.append(gold)
        res.append(kind)
    return lists, gold_lp, res


def _position(j, src_ids, piv_ids, tk_ids, tk_lp, true_lp, src_can, piv_can, role_map, look,
              S, P, ss, ps, to_src, B, E, PB, PE, cut):
    """(log-probability terms by pivot id, gold log-probability, resolution) or None for a
    fallback."""
    n = len(src_ids)
    g = piv_ids[j + 1]
    gb = range(PB[j + 1], PE[j + 1])
    c, d = cut[j], cut[j + 1]
    terms = {}

    def add(pid, x):
        terms.setdefault(pid, []).append(x)

    if len(gb) == 0:  # a special pivot token
        k, jj = 0, j  # g is the k-th of a run of pivot tokens without bytes
        while jj >= 0 and not piv_can[piv_ids[jj]]:
            k += 1
            jj -= 1
        c2 = next((x for x in range(c, len(S)) if ss[x] == MATCHED), len(S))
        group = [t for t in range(n) if B[t] == E[t] and c <= B[t] <= c2]
        if not group:
            return None
        u = group[min(k, len(group) - 1)]
        if u == 0:
            return None
        i = u - 1
        gold = [_true_lp(i, src_ids[u], tk_ids, tk_lp, true_lp)]
        for v, lp in zip(tk_ids[i], tk_lp[i]):
            if v < 0 or v == src_ids[u]:
                continue
            x = _clamp(lp)
            b = src_can[v]
            if not b:
                pv = role_map.get(v, -1)
                if pv == g:
                    gold.append(x)
                elif pv >= 0:
                    add(pv, x)
            else:
                L = look(b)
                if L >= 0:
                    add(L, x)
        gv = _log_sum(gold)
        if not gv > -math.inf:
            return None
        add(g, gv)
        return terms, gv, EXACT

    if any(ps[y] == DIFFERING for y in gb) or all(ps[y] != MATCHED for y in gb):
        return None
    while c < d and ss[c] == DIFFERING:  # they belong to the differing tokens before
        c += 1
    if any(ss[x] == DIFFERING for x in range(c, d)):
        return None
    first = next(y for y in gb if ps[y] == MATCHED)
    X = P[PB[j + 1]:first]
    Y = S[c:d]
    t = next((t for t in range(n) if E[t] > c), None)
    if t is None or t == 0:
        return None
    i, s = t - 1, c - B[t]
    log_d = 0.0
    if s > 0:
        ctx = S[B[t]:c]
        d_terms = [_true_lp(i, src_ids[t], tk_ids, tk_lp, true_lp)]
        for v, lp in zip(tk_ids[i], tk_lp[i]):
            if v < 0 or v == src_ids[t]:
                continue
            b = src_can[v]
            if len(b) > s and b[:s] == ctx:
                d_terms.append(_clamp(lp))
        log_d = _log_sum(d_terms)
        if not log_d > -math.inf:
            return None
    lw, z, gold, first_step, start_at_boundary = 0.0, c, [], True, s == 0
    while True:
        u = i + 1
        if any(ss[x] == DIFFERING for x in range(B[u], E[u])):
            return None
        scale = lw - log_d if first_step else lw
        for v, lp in zip(tk_ids[i], tk_lp[i]):
            if v < 0 or v == src_ids[u]:
                continue
            q = _clamp(lp) + scale
            b = src_can[v]
            if not b:
                if first_step and start_at_boundary:
                    pv = role_map.get(v, -1)
                    if pv == g:
                        gold.append(q)
                    elif pv >= 0:
                        add(pv, q)
                continue
            if s > 0:
                if len(b) <= s or b[:s] != S[B[u]:c]:
                    continue
                b = b[s:]
            W = S[c:z] + b
            e = _common_prefix(W, S[c:c + len(W)])
            if e == len(W):
                if len(W) >= len(Y):
                    gold.append(q)
                continue
            key = W if W.startswith(X) else X + W
            L = look(key)
            if L >= 0 and len(piv_can[L]) > e + (len(key) - len(W)):
                add(L, q)
            elif e >= len(Y):
                gold.append(q)
        pt = _true_lp(i, src_ids[u], tk_ids, tk_lp, true_lp) + scale
        z2 = E[u]
        if z2 >= d:
            gold.append(pt)
            kind = EXACT if start_at_boundary and z2 == d else PREFIX
            break
        lw, z, i, s, first_step = pt, z2, u, 0, False
    gv = _log_sum(gold)
    if not gv > -math.inf:
        return None
    add(g, gv)
    return terms, gv, kind
