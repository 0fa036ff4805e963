"""Slow, obviously-correct twins of the reference's stage-1 alignment (method.md 3-5),
written from the spec in plain Python with the `editdistance` package. Token strings are
passed in (decoded strings for DTW and the distribution rules, raw pieces for the maps)."""
import math

import editdistance
import numpy as np


# -- 3.2 / 3.3: DTW ---------------------------------------------------------------------

def stripped(a, b, src_marker, piv_marker):
    """Markers removed; if either becomes empty, the source marker replaced and b raw."""
    aa = a.replace(src_marker, "")
    bb = b.replace(piv_marker, "")
    if len(aa) == 0 or len(bb) == 0:
        aa = a.replace(src_marker, piv_marker)
        bb = b
    return aa, bb


def dtw_cost(a, b, src_marker, piv_marker):
    """Pair cost of source string a and pivot string b."""
    return editdistance.eval(*stripped(a, b, src_marker, piv_marker))


def dtw(src_strings, piv_strings, src_marker, piv_marker):
    """For every pivot position, the ascending source positions aligned with it."""
    n, m = len(src_strings), len(piv_strings)
    D = np.zeros((n + 1, m + 1))
    D[0, :] = np.inf
    D[:, 0] = np.inf
    D[0, 0] = 0
    for i in range(n):
        for j in range(m):
            cost = dtw_cost(src_strings[i], piv_strings[j], src_marker, piv_marker)
            D[i + 1, j + 1] = cost + min(D[i, j + 1], D[i + 1, j], D[i, j])
    M = D[1:, 1:]
    i, j = n - 1, m - 1
    piv_to_src = [[] for _ in range(m)]
    while i > 0 or j > 0:
        piv_to_src[j].append(i)
        diag = M[i - 1, j - 1] if i > 0 and j > 0 else np.inf
        left = M[i, j - 1] if j > 0 else np.inf
        up = M[i - 1, j] if i > 0 else np.inf
        move = int(np.argmin([diag, left, up]))  # first minimum: diag, left, up
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            j -= 1
        else:
            i -= 1
    piv_to_src[0].append(0)
    return [sorted(x) for x in piv_to_src]


# -- 4.1: counts --------------------------------------------------------------------------

def count_alignments(pairs):
    """pairs: iterable of (src_ids, piv_ids, piv_to_src). Returns {(pivot id, source id): n}."""
    counts = {}
    for src_ids, piv_ids, piv_to_src in pairs:
        for j, J in enumerate(piv_to_src):
            for s in set(src_ids[i] for i in J):  # fancy indexing counts a repeat once
                key = (piv_ids[j], s)
                counts[key] = counts.get(key, 0) + 1
    return counts


# -- 4.2: MS map ----------------------------------------------------------------------------

def ms_dist(a, b, src_marker, piv_marker):
    aa, bb = stripped(a, b, src_marker, piv_marker)
    w = 0.1 if (aa in bb or bb in aa) else 1
    return editdistance.eval(aa, bb) * w


def ms_map(src_pieces, piv_pieces, src_marker, piv_marker, counts, src_roles, piv_roles):
    """counts: {(pivot id, source id): n}. roles: dicts with bos/eos/unk (None if absent)."""
    by_src = {}
    for (p, s), c in counts.items():
        by_src.setdefault(s, []).append((p, c))
    default = piv_roles["unk"] if piv_roles["unk"] is not None else piv_roles["eos"]
    out = [default if default is not None else -1] * len(src_pieces)
    for s, piece in enumerate(src_pieces):
        if piece is None or s not in by_src:
            continue
        cands = sorted(p for p, c in by_src[s] if c > 0)
        cnt = dict(by_src[s])
        scores = [ms_dist(piece, piv_pieces[p], src_marker, piv_marker)
                  * (1.0 / (1 + np.exp(-np.float64(cnt[p])))) for p in cands]
        if cands:
            out[s] = cands[int(np.argmin(scores))]
    for role in ("bos", "eos"):
        if src_roles[role] is not None and piv_roles[role] is not None:
            out[src_roles[role]] = piv_roles[role]
    return out


# -- 4.3 / 4.4: EM and MinED -----------------------------------------------------------------

def em_map(src_pieces, piv_pieces, src_marker, piv_marker):
    index = {}
    for i, p in enumerate(piv_pieces):
        if p is not None and p not in index:
            index[p] = i
    return [-1 if s is None else index.get(s.replace(src_marker, piv_marker), -1)
            for s in src_pieces]


def mined_map(src_pieces, piv_pieces, src_marker, piv_marker):
    """FuseLLM: exact piece, else the pivot piece at minimum edit distance, lowest id first."""
    exact = em_map(src_pieces, piv_pieces, src_marker, piv_marker)
    out = []
    for s, e in zip(src_pieces, exact):
        if s is None or e >= 0:
            out.append(e)
            continue
        key = s.replace(src_marker, piv_marker)
        best, best_id = math.inf, -1
        for p, piece in enumerate(piv_pieces):
            if piece is None:
                continue
            d = editdistance.eval(key, piece)
            if d < best:
                best, best_id = d, p
        out.append(best_id)
    return out


def apply_roles(m, src_roles, piv_roles, names):
    m = list(m)
    for role in names:
        if src_roles.get(role) is not None and piv_roles.get(role) is not None:
            m[src_roles[role]] = piv_roles[role]
    return m


# -- 5: distribution alignment ---------------------------------------------------------------

def align_distributions(piv_ids, src_ids, piv_to_src, topk_ids, topk_logits, piv_decoded,
                        src_decoded, src_marker, piv_marker, eff_map, vmap, mode="ms",
                        multi=True):
    """Returns a list (per pivot position) of [(pivot id, logit)]. eff_map[s]: pivot id of a
    source top-K id in MAP or -1 (dropped); vmap: the vocabulary map (MinED's test)."""
    m = len(piv_ids)
    labels = [piv_ids[i + 1] if i + 1 < m else piv_ids[m - 1] for i in range(m)]

    def do_map(j):
        out = []
        for sid, logit in zip(topk_ids[j], topk_logits[j]):
            q = eff_map[sid]
            if q < 0:
                continue
            for k, (pid, lg) in enumerate(out):
                if pid == q:
                    if logit > lg:
                        out[k] = (pid, logit)
                    break
            else:
                out.append((q, logit))
        return out

    result = []
    for i, J in enumerate(piv_to_src):
        onehot = [(labels[i], 1.0)]
        if len(J) == 0:
            result.append(onehot)
            continue
        P = piv_decoded[piv_ids[i]]
        if len(J) == 1:
            j = J[0]
            B = src_decoded[src_ids[j]].replace(src_marker, piv_marker)
            if mode == "ms":
                ok = B.endswith(P) or P.endswith(B)
            elif mode == "em":
                ok = P == B
            else:
                ok = P == B or vmap[src_ids[j]] == piv_ids[i]
            result.append(do_map(j) if ok else onehot)
            continue
        if mode != "ms" or not multi:
            result.append(onehot)
            continue
        Pp = P.replace(piv_marker, "")
        Bs = [src_decoded[src_ids[j]].replace(src_marker, "") for j in J]
        hit = next((j for j, b in zip(J, Bs) if Pp.endswith(b) or b.endswith(Pp)), None)
        if hit is not None:
            result.append(do_map(hit))
            continue
        rest, mapped = Pp, []
        for k, b in enumerate(Bs):
            if rest.startswith(b):
                mapped.append(k)
                rest = rest[len(b):]
        mapped = mapped if not rest else []
        allb = "".join(Bs)
        if mapped or allb.endswith(Pp) or Pp.endswith(allb):
            if mapped and "".join(Bs[k] for k in mapped) == Pp:
                result.append(do_map(J[mapped[-1]]))
            else:
                result.append([])
        else:
            result.append(onehot)
    return result
