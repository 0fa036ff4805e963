"""fusechat.fuse (MinCE, AvgCE; csrc/core/fuse.c) against the twins in
tests/reference/loss_ref.py, on random ragged distributions with empty positions."""
import numpy as np
import pytest

from fusechat.fuse import SparseDists, avg_ce, min_ce
from fusechat.loss import fusion_loss
from reference.loss_ref import avg_ce_ref, min_ce_ref


def random_dists(rng, n_pos, v=500, kmax=10, p_empty=0.15):
    lists = []
    for _ in range(n_pos):
        k = 0 if rng.random() < p_empty else int(rng.integers(1, kmax + 1))
        ids = rng.choice(v, k, replace=False)
        vals = np.sort(rng.standard_normal(k).astype(np.float32) * 3)[::-1]
        lists.append([(int(i), float(x)) for i, x in zip(ids, vals)])
    indptr = np.concatenate([[0], np.cumsum([len(lst) for lst in lists])])
    ids = np.array([i for lst in lists for i, _ in lst], np.int32)
    vals = np.array([x for lst in lists for _, x in lst], np.float32)
    return lists, SparseDists(indptr, ids, vals)


def setup(seed, n_models=3, n_seq=11):
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 9, n_seq)
    offs = np.concatenate([[0], np.cumsum(lens)])
    n_pos = int(offs[-1])
    made = [random_dists(rng, n_pos) for _ in range(n_models)]
    return rng, offs, [m[0] for m in made], [m[1] for m in made]


def as_lists(d):
    return [list(zip(d.ids[d.indptr[t]:d.indptr[t + 1]].tolist(),
                     d.values[d.indptr[t]:d.indptr[t + 1]].tolist())) for t in range(d.n_pos)]


@pytest.mark.parametrize("level", ["sequence", "token"])
@pytest.mark.parametrize("fill_empty", [True, False])
def test_min_ce_against_twin(level, fill_empty):
    rng, offs, lists, dists = setup(1)
    n = len(offs) - 1 if level == "sequence" else dists[0].n_pos
    ce = [rng.uniform(0.5, 3, n) for _ in dists]
    ce[1][:3] = ce[0][:3]                   # exact ties go to the pivot
    ce[2][3] = np.nan                       # NaN never wins
    ce[1][4] = ce[0][4] - 1e-9              # equal in float32: still the pivot
    ce[0][5] = ce[1][5] = ce[2][5] = np.nan  # all NaN: pivot
    fused, choice = min_ce(dists, ce, offs, level=level, fill_empty=fill_empty)
    want, want_choice = min_ce_ref(lists, ce, offs, level, fill_empty)
    assert list(choice) == want_choice
    assert as_lists(fused) == [[(i, float(np.float32(x))) for i, x in lst] for lst in want]


@pytest.mark.parametrize("level", ["sequence", "token"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_avg_ce_against_twin(level, temperature):
    rng, offs, lists, dists = setup(2)
    n = len(offs) - 1 if level == "sequence" else dists[0].n_pos
    ce = [rng.uniform(0.5, 3, n) for _ in dists]
    ce[2][1] = np.inf  # not finite: left out
    fused = avg_ce(dists, ce, offs, level=level, temperature=temperature)
    want = avg_ce_ref(lists, ce, offs, level, temperature)
    for t, mix in enumerate(want):
        got = dict(as_lists(fused)[t])
        assert set(got) == set(mix)
        for i, p in mix.items():
            assert np.exp(got[i]) == pytest.approx(p, rel=2e-6)
        probs = [np.exp(x) for _, x in as_lists(fused)[t]]
        assert probs == sorted(probs, reverse=True)
        if mix:
            assert sum(probs) == pytest.approx(1.0, rel=1e-5)


def test_avg_ce_of_one_model_is_its_softmax_and_feeds_the_loss():
    rng, offs, lists, dists = setup(3, n_models=1)
    fused = avg_ce(dists, [rng.uniform(1, 2, len(offs) - 1)], offs)
    a_ids, a_vals = dists[0].to_padded(10)
    f_ids, f_vals = fused.to_padded(10)
    z = rng.standard_normal((dists[0].n_pos, 500)).astype(np.float32)
    y = rng.integers(0, 500, len(z))
    a = fusion_loss(z, y, a_ids, a_vals, lm_weight=0.0)
    b = fusion_loss(z, y, f_ids, f_vals, lm_weight=0.0)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-7)


def test_valid_masks_mark_missing_ce():
    """A sequence without supervised tokens has CE 0 and seq_has 0 (topk_and_ce): it must
    not win MinCE, nor take part in AvgCE."""
    rng, offs, lists, dists = setup(6, n_models=2)
    s = len(offs) - 1
    ce = [np.full(s, 2.0), np.zeros(s)]
    has = [np.ones(s, np.uint8), np.zeros(s, np.uint8)]
    has[1][0] = 1
    _, choice = min_ce(dists, ce, offs, valid=has, fill_empty=False)
    assert np.all(choice[offs[0]:offs[1]] == 1) and np.all(choice[offs[1]:] == 0)
    fused = avg_ce(dists, ce, offs, valid=has)
    want = avg_ce_ref(lists, [ce[0], np.where(has[1], ce[1], np.nan)], offs)
    assert [set(dict(x)) for x in as_lists(fused)] == [set(m) for m in want]
    assert ce[1][1] == 0  # the caller's arrays are not modified


def test_padded_round_trip():
    rng, offs, lists, dists = setup(4)
    ids, vals = dists[1].to_padded()
    back = SparseDists.from_padded(ids, vals)
    assert as_lists(back) == as_lists(dists[1])


def test_errors():
    rng, offs, lists, dists = setup(5)
    ce = [np.zeros(len(offs) - 1) for _ in dists]
    with pytest.raises(ValueError, match="seq_offsets"):
        min_ce(dists, ce)
    with pytest.raises(ValueError, match="3 models but 2"):
        min_ce(dists, ce[:2], offs)
    with pytest.raises(ValueError, match="ce has"):
        min_ce(dists, ce, offs, level="token")
    bad = SparseDists(dists[1].indptr, dists[1].ids.copy(), dists[1].values)
    bad.ids[0] = -4
    with pytest.raises(ValueError, match="model 1: negative id -4"):
        min_ce([dists[0], bad], ce[:2], offs)
    short = SparseDists(dists[1].indptr[:-1], dists[1].ids, dists[1].values)
    with pytest.raises(ValueError, match="same T"):
        avg_ce([dists[0], short], ce[:2], offs)
