"""Peers' scores (SemanticLens polysemanticity, Pach et al.'s MS, Foote's feature clusters): hand-worked values,
limits, invariances, loop transcriptions of the published formulas, scipy's connected components, and the
authors' package when importable."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import special_ortho_group
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from polypsi.stats.peers import (
    _canonical,
    _kmeans_labels,
    foote_components,
    monosemanticity_score,
    pach_polysemanticity,
    semanticlens_clarity,
    semanticlens_polysemanticity,
)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """scikit-learn's KMeans on 50 points is ~10x slower with its OpenMP threads on a shared machine."""
    with threadpool_limits(1):
        yield


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def e(i, d=4):
    v = np.zeros(d)
    v[i] = 1.0
    return v


def planted(rng, n, K, d, k, noise):
    """n units whose K examples scatter (noise) around k random directions, in random order."""
    C = unit(rng.standard_normal((n, k, d)))
    lab = rng.integers(0, k, (n, K))
    lab[:, :k] = np.arange(k)  # every group present
    return unit(np.take_along_axis(C, lab[..., None], 1) + noise * rng.standard_normal((n, K, d)) / math.sqrt(d))


def descending(rng, n, K):
    return -np.sort(-rng.standard_normal((n, K)), 1)


# ---------------------------------------------------------------- loop transcriptions of the formulas


def ms_loop(Z, a, act_min=None, act_max=None):
    """Pach et al.'s MS for one unit, pair by pair as written (and as sae-for-vlm metric.py loops)."""
    lo = min(a) if act_min is None else act_min
    hi = max(a) if act_max is None else act_max
    if hi == lo:
        return math.nan
    at = [(x - lo) / (hi - lo) for x in a]
    num = den = 0.0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            cos = float(Z[i] @ Z[j]) / (np.linalg.norm(Z[i]) * np.linalg.norm(Z[j]))
            num += at[i] * at[j] * cos
            den += at[i] * at[j]
    return num / den if den != 0 else math.nan


def cos(u, v):
    return float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))


def semanticlens_loop(Z, a, labels=None, k=2, top=10):
    """SemanticLens polysemanticity of one unit, step by step: order by activation, k-means (scikit-learn,
    n_init=10, random_state=123) unless labels are given, 1 - mean centroid cosine, singleton fallback."""
    order = sorted(range(len(a)), key=lambda i: -a[i])  # distinct activations in these tests
    Z = np.asarray(Z)[order]
    if labels is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
            labels = KMeans(n_clusters=k, n_init=10, random_state=123).fit(Z).labels_
    else:
        labels = np.asarray(labels)  # already in the sorted order
    sizes = [int((labels == j).sum()) for j in range(k)]
    if min(sizes) < 2:
        m = Z.mean(0)
        return 1.0 - sum(cos(m, Z[i]) for i in range(min(top, len(Z)))) / min(top, len(Z))
    cents = [Z[labels == j].mean(0) for j in range(k)]
    pairs = [cos(cents[i], cents[j]) for i in range(k) for j in range(k) if i != j]
    return 1.0 - sum(pairs) / len(pairs)


def inertia(Z, labels, k):
    return sum(((Z[labels == j] - Z[labels == j].mean(0)) ** 2).sum() for j in range(k) if (labels == j).any())


# ---------------------------------------------------------------- Monosemanticity Score (Pach et al.)


def test_ms_three_examples_by_hand():
    # z0 . z1 = 1/2, z0 . z2 = 0, z1 . z2 = sqrt(3)/2
    Z = np.array([[e(0), np.array([0.5, math.sqrt(3) / 2, 0, 0]), e(1)]])
    a = np.array([[3.0, 2.0, 1.0]])
    # act_min = 0: ã = (1, 2/3, 1/3), r = (2/3, 1/3, 2/9) -> (1/3 + sqrt(3)/9) / (11/9)
    assert monosemanticity_score(Z, a, act_min=0.0)[0] == pytest.approx((3 + math.sqrt(3)) / 11, abs=1e-14)
    # min over the three: ã = (1, 1/2, 0), only the pair (0, 1) carries weight
    assert monosemanticity_score(Z, a)[0] == pytest.approx(0.5, abs=1e-14)
    assert pach_polysemanticity(Z, a)[0] == pytest.approx(0.5, abs=1e-14)
    # act_max above the top activation rescales every weight by the same factor: no change
    assert monosemanticity_score(Z, a, act_min=0.0, act_max=6.0)[0] == pytest.approx((3 + math.sqrt(3)) / 11, abs=1e-14)


def test_ms_limits_identical_and_two_orthogonal_groups():
    K = 8
    a = np.linspace(2.0, 1.0, K)[None]
    same = np.tile(e(0), (1, K, 1))
    assert monosemanticity_score(same, a)[0] == pytest.approx(1.0, abs=1e-14)
    assert pach_polysemanticity(same, a)[0] == pytest.approx(0.0, abs=1e-14)
    # two orthogonal groups, equal weights (act_min = 0, equal activations): MS = share of
    # within-group pairs = 2 C(4, 2) / C(8, 2) = 12 / 28
    two = np.array([[e(0)] * 4 + [e(1)] * 4])
    flat = np.ones((1, K))
    assert monosemanticity_score(two, flat, act_min=0.0)[0] == pytest.approx(12 / 28, abs=1e-14)
    # alternating activations keep the groups balanced under any weighting
    alt = np.array([[e(0), e(1)] * 4])
    assert pach_polysemanticity(alt, a)[0] > pach_polysemanticity(same, a)[0] + 0.3
    rng = np.random.default_rng(0)
    one, pair = planted(rng, 20, 50, 32, 1, 0.6), planted(rng, 20, 50, 32, 2, 0.6)
    acts = rng.standard_normal((20, 50))
    assert (pach_polysemanticity(pair, acts) > pach_polysemanticity(one, acts)).all()


def test_ms_nan_cases_and_all_equal_activations():
    rng = np.random.default_rng(1)
    Z = unit(rng.standard_normal((3, 5, 6)))
    a = np.array([[2.0] * 5, [5.0, 1, 1, 1, 1], [3.0, 3, 1, 1, 1]])
    ms = monosemanticity_score(Z, a)
    assert math.isnan(ms[0])  # max == min: min-max scaling is 0/0
    assert math.isnan(ms[1])  # a single example above the minimum: no weighted pair
    assert ms[2] == pytest.approx(float(Z[2, 0] @ Z[2, 1]), abs=1e-14)
    # below-minimum act_min makes the all-equal unit defined: equal weights, MS = clarity
    clarity = semanticlens_clarity(Z[:1])[0]
    assert monosemanticity_score(Z[:1], a[:1], act_min=0.0)[0] == pytest.approx(clarity, abs=1e-14)
    with pytest.raises(ValueError):
        monosemanticity_score(Z, a, act_min=1.5)  # above an activation: not a minimum of a superset
    with pytest.raises(ValueError):
        monosemanticity_score(Z, a, act_max=4.0)


def test_ms_matches_loop_transcription():
    rng = np.random.default_rng(2)
    Z = rng.standard_normal((12, 9, 7))  # not unit norm: both sides use cosines
    a = np.round(rng.standard_normal((12, 9)), 1)  # ties
    a[3] = np.abs(a[3])
    got = monosemanticity_score(Z, a)
    got0 = monosemanticity_score(Z, a, act_min=a.min() - 1.0, act_max=a.max() + 0.5)
    for i in range(len(Z)):
        assert got[i] == pytest.approx(ms_loop(Z[i], a[i]), abs=1e-12)
        assert got0[i] == pytest.approx(ms_loop(Z[i], a[i], a.min() - 1.0, a.max() + 0.5), abs=1e-12)


def test_ms_invariances():
    rng = np.random.default_rng(3)
    n, K, d = 10, 20, 16
    Z = unit(rng.standard_normal((n, K, d)))
    a = np.round(rng.standard_normal((n, K)), 1)
    base = monosemanticity_score(Z, a)
    perm = np.stack([rng.permutation(K) for _ in range(n)])
    Zp, ap = np.take_along_axis(Z, perm[..., None], 1), np.take_along_axis(a, perm, 1)
    np.testing.assert_array_equal(monosemanticity_score(Zp, ap), base)  # bit for bit
    R = special_ortho_group.rvs(d, random_state=4)
    np.testing.assert_allclose(monosemanticity_score(Z @ R.T, a), base, atol=1e-12)
    # min-max scaling: an affine map of the activations with positive slope changes nothing
    np.testing.assert_allclose(monosemanticity_score(Z, 3.0 * a - 7.0), base, atol=1e-12)
    # a unit's score does not depend on the batch around it
    np.testing.assert_array_equal(monosemanticity_score(Z[4:5], a[4:5]), base[4:5])
    # torch input is accepted and gives the same numbers
    np.testing.assert_array_equal(monosemanticity_score(torch.from_numpy(Z), torch.from_numpy(a)), base)


# ---------------------------------------------------------------- SemanticLens


@pytest.mark.parametrize("deg", [60, 90, 120])
def test_semanticlens_two_groups_by_hand(deg):
    t = math.radians(deg)
    v = math.cos(t) * e(0) + math.sin(t) * e(1)
    Z = np.array([[e(0), e(0), e(0), v, v, v]])
    a = np.arange(6.0)[None]
    # centroids e0 and v: 1 - cos(deg), up to 1.5 for groups 120 degrees apart (range [0, 2])
    assert semanticlens_polysemanticity(Z, a)[0] == pytest.approx(1 - math.cos(t), abs=1e-12)


def test_semanticlens_clarity_by_hand():
    Z = np.array([[e(0), e(0), e(1), e(1)]])
    # pairwise cosines: 2 pairs of 1, 4 pairs of 0 -> 2/6
    assert semanticlens_clarity(Z)[0] == pytest.approx(1 / 3, abs=1e-14)


def test_semanticlens_singleton_fallback_by_hand():
    # 3 x e0 and one e1: 2-means isolates e1, so the fallback scores 1 - mean cos(mean, z_i)
    # over the top min(10, 4) = 4: cos(m, e0) = 3/sqrt(10), cos(m, e1) = 1/sqrt(10)
    Z = np.array([[e(0), e(0), e(0), e(1)]])
    a = np.array([[4.0, 3.0, 2.0, 1.0]])
    assert semanticlens_polysemanticity(Z, a)[0] == pytest.approx(1 - math.sqrt(10) / 4, abs=1e-12)
    # without the fallback: centroids e0 and e1
    assert semanticlens_polysemanticity(Z, a, singleton_fallback=False)[0] == pytest.approx(1.0, abs=1e-12)


def test_semanticlens_fallback_uses_the_top_ten_by_activation_and_shares_ties():
    # 11 x e0 and one e1 (K = 12): m is along 11 e0 + e1, |.| = sqrt(122)
    Z = np.array([[e(0)] * 11 + [e(1)]])
    low = np.array([np.r_[np.arange(12.0, 1.0, -1), 0.5]])  # e1 ranks last: out of the top 10
    high = np.array([np.r_[np.arange(11.0, 0.0, -1), 20.0]])  # e1 ranks first: in
    tied = np.ones((1, 12))  # all tied: every example holds 10/12 of a place
    s = math.sqrt(122)
    assert semanticlens_polysemanticity(Z, low)[0] == pytest.approx(1 - 11 / s, abs=1e-12)
    assert semanticlens_polysemanticity(Z, high)[0] == pytest.approx(1 - 10 / s, abs=1e-12)
    assert semanticlens_polysemanticity(Z, tied)[0] == pytest.approx(1 - s / 12, abs=1e-12)
    # the shared tie does not depend on where the outlier's row sits
    rolled = np.roll(Z, 5, axis=1)
    assert semanticlens_polysemanticity(rolled, tied)[0] == semanticlens_polysemanticity(Z, tied)[0]


def test_semanticlens_identical_examples_score_zero_without_nan():
    Z = np.tile(unit(np.arange(1.0, 9.0)), (3, 20, 1))
    a = np.stack([np.ones(20), np.linspace(1, 0, 20), np.zeros(20)])  # incl. all-equal activations
    np.testing.assert_allclose(semanticlens_polysemanticity(Z, a), 0.0, atol=1e-12)


def test_semanticlens_undefined_mean_direction_is_nan():
    # two singletons -> fallback, whose mean direction (of e0 and -e0) does not exist
    Z = np.array([[e(0), -e(0)], [e(0), e(1)]])
    got = semanticlens_polysemanticity(Z, np.array([[2.0, 1.0], [2.0, 1.0]]))
    assert math.isnan(got[0])
    assert got[1] == pytest.approx(1 - math.sqrt(0.5), abs=1e-12)  # cos(m, z_i) = 1/sqrt(2)


def test_semanticlens_two_groups_more_polysemantic_than_one():
    rng = np.random.default_rng(5)
    one, two = planted(rng, 20, 50, 64, 1, 0.6), planted(rng, 20, 50, 64, 2, 0.6)
    a = descending(rng, 20, 50)
    p1, p2 = semanticlens_polysemanticity(one, a), semanticlens_polysemanticity(two, a)
    assert p2.min() > p1.max()
    # orthogonal balanced groups with a little noise: about 1
    orth = np.concatenate([np.tile(e(0, 64), (1, 25, 1)), np.tile(e(1, 64), (1, 25, 1))], 1)
    orth = unit(orth + 0.05 * rng.standard_normal(orth.shape) / 8)
    assert semanticlens_polysemanticity(orth, a[:1])[0] == pytest.approx(1.0, abs=0.02)


def test_semanticlens_invariances_and_determinism():
    rng = np.random.default_rng(6)
    n, K, d = 12, 30, 24
    Z = np.concatenate([planted(rng, 6, K, d, 2, 0.5), planted(rng, 6, K, d, 3, 0.5)])
    a = np.round(rng.standard_normal((n, K)), 1)  # ties
    base = semanticlens_polysemanticity(Z, a)
    np.testing.assert_array_equal(semanticlens_polysemanticity(Z, a), base)  # same inputs, same bits
    perm = np.stack([rng.permutation(K) for _ in range(n)])
    Zp, ap = np.take_along_axis(Z, perm[..., None], 1), np.take_along_axis(a, perm, 1)
    np.testing.assert_array_equal(semanticlens_polysemanticity(Zp, ap), base)
    R = special_ortho_group.rvs(d, random_state=7)
    np.testing.assert_allclose(semanticlens_polysemanticity(Z @ R.T, a), base, atol=1e-10)
    np.testing.assert_array_equal(semanticlens_polysemanticity(Z[7:8], a[7:8]), base[7:8])
    # the activations only rank the examples; any increasing map leaves the score alone
    np.testing.assert_array_equal(semanticlens_polysemanticity(Z, np.exp(a)), base)


def test_semanticlens_matches_loop_transcription():
    rng = np.random.default_rng(8)
    # two planted groups: one dominant 2-means optimum, so scikit-learn and the batched k-means
    # agree (three groups have several optima whose basins scikit-learn and we sample alike,
    # but with other seeds: see the next test)
    Z = np.concatenate([planted(rng, 8, 40, 32, 2, 0.5), planted(rng, 8, 40, 32, 2, 0.8)])
    # outliers: 39 examples around one direction and one far away -> singleton fallback
    out = planted(rng, 4, 40, 32, 1, 0.2)
    out[:, 0] = unit(rng.standard_normal((4, 32)))
    Z = np.concatenate([Z, out])
    a = rng.permutation(np.arange(40.0 * len(Z))).reshape(len(Z), 40)  # distinct, shuffled
    got = semanticlens_polysemanticity(Z, a)
    for i in range(len(Z)):
        assert got[i] == pytest.approx(semanticlens_loop(Z[i], a[i]), abs=1e-9)
    # the outlier units did go through the fallback
    assert (np.abs(got[-4:] - semanticlens_polysemanticity(Z[-4:], a[-4:], singleton_fallback=False)) > 0.1).all()


def test_semanticlens_unstructured_units_formula_and_kmeans_quality():
    """Noise has many 2-means local optima, so the partition kept can differ from scikit-learn's: check
    the score against the loop on the partition kept, and that the partitions are as good as sklearn's."""
    rng = np.random.default_rng(9)
    Z = np.concatenate([unit(rng.standard_normal((14, 50, 128))), planted(rng, 6, 50, 128, 3, 0.4)])
    a = descending(rng, 20, 50)
    got = semanticlens_polysemanticity(Z, a)
    Zs, _ = _canonical(Z, a)
    labels = _kmeans_labels(torch.from_numpy(Zs @ Zs.transpose(0, 2, 1)), 2, 10, 123, 300).numpy()
    ours, sk = [], []
    for i in range(len(Z)):
        assert got[i] == pytest.approx(semanticlens_loop(Z[i], a[i], labels=labels[i]), abs=1e-12)
        ours.append(inertia(Zs[i], labels[i], 2))
        sk.append(KMeans(n_clusters=2, n_init=10, random_state=123).fit(Zs[i]).inertia_)
    # same objective, restarts and seeding rule: no worse than scikit-learn on average
    assert np.mean(ours) <= np.mean(sk) * (1 + 1e-3)


def test_semanticlens_matches_authors_package():
    """semanticlens (PyPI, Dreyer/Berend) when importable, e.g. PYTHONPATH=<pip install semanticlens
    einops zennit zennit-crp --no-deps --target DIR>; its default arguments are the paper's."""
    scores = pytest.importorskip("semanticlens.scores")
    rng = np.random.default_rng(10)
    out = planted(rng, 5, 50, 64, 1, 0.2)
    out[:, 0] = unit(rng.standard_normal((5, 64)))
    exact = np.concatenate(
        [planted(rng, 6, 50, 64, 2, 0.6), planted(rng, 6, 50, 64, 2, 0.9), out, np.tile(e(0, 64), (2, 50, 1))]
    )
    a = descending(rng, len(exact), 50)  # the package reads rows in rank order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = scores.polysemanticity_score(torch.from_numpy(exact)).numpy()
    np.testing.assert_allclose(semanticlens_polysemanticity(exact, a), ref, atol=1e-9)
    # unstructured units and three groups: other local optima, same distribution of scores
    noise = np.concatenate([unit(rng.standard_normal((18, 50, 128))), planted(rng, 6, 50, 128, 3, 0.4)])
    an = descending(rng, 24, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refn = scores.polysemanticity_score(torch.from_numpy(noise)).numpy()
    # (scores near 1.2 here; single units differ by up to ~0.1, means of 24 by ~0.01)
    assert abs(semanticlens_polysemanticity(noise, an).mean() - refn.mean()) < 0.03
    # clarity, too
    ref_clarity = scores.clarity_score(torch.from_numpy(exact)).numpy()
    np.testing.assert_allclose(semanticlens_clarity(exact), ref_clarity, atol=1e-12)


def test_input_validation():
    Z = unit(np.random.default_rng(11).standard_normal((2, 5, 3)))
    a = np.zeros((2, 5))
    with pytest.raises(ValueError):
        semanticlens_polysemanticity(Z, a[:, :4])
    with pytest.raises(ValueError):
        semanticlens_polysemanticity(Z, a, n_clusters=6)
    bad = Z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        monosemanticity_score(bad, a)
    bad[0, 0] = 0.0
    with pytest.raises(ValueError):
        monosemanticity_score(bad, a)


# ---------------------------------------------------------------- Foote's feature clusters


def same_partition(a, b):
    """Two labelings of the same examples give the same groups."""
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


def test_foote_by_hand_strict_threshold_and_transitivity():
    c, s = math.cos(math.radians(50)), math.sin(math.radians(50))
    # a chain a-b-c (50 degrees apart, 100 between the ends) and an example orthogonal to all of them
    Z = np.array([[[1, 0, 0], [c, s, 0], [math.cos(math.radians(100)), math.sin(math.radians(100)), 0], [0, 0, 2]]])
    count, labels = foote_components(Z, 0.5)
    assert count.tolist() == [2] and labels.tolist() == [[0, 0, 0, 1]]  # cos 50 deg = 0.64 > 0.5: one chain
    assert foote_components(Z, 0.7)[0].tolist() == [4]  # no edge at all
    assert foote_components(Z, c)[0].tolist() == [4]  # "above": a cosine equal to the threshold is no edge
    assert foote_components(Z, c - 1e-9)[0].tolist() == [2]
    assert foote_components(Z, 0.5, min_size=2)[0].tolist() == [1]  # the singleton is not counted
    assert foote_components(Z, -2.0)[0].tolist() == [1]  # every pair joined
    # identical examples, two orthogonal groups, a zero vector (no direction: its own component)
    groups = np.stack([np.tile(e(0), (4, 1)), np.stack([e(0), e(0), e(1), e(1)]), np.stack([e(0), e(0), 0 * e(0), e(0)])])
    count, labels = foote_components(groups, 0.9)
    assert count.tolist() == [1, 2, 2] and labels.tolist() == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 0]]


@pytest.mark.parametrize("threshold", [-0.2, 0.0, 0.2, 0.5, 0.8])
def test_foote_equals_scipy_connected_components(threshold):
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(5)
    Z = np.concatenate([planted(rng, 30, 20, 6, 3, 0.8), rng.standard_normal((30, 20, 6))])
    Z[0, 3] = 0.0  # a zero vector: no edges
    count, labels = foote_components(torch.from_numpy(Z), threshold)
    for i in range(len(Z)):
        U = Z[i] / np.maximum(np.linalg.norm(Z[i], axis=-1, keepdims=True), 1e-300)
        A = (U @ U.T > threshold) & (np.linalg.norm(Z[i], axis=-1) > 0)[:, None] & (np.linalg.norm(Z[i], axis=-1) > 0)
        ref_n, ref = connected_components(csr_matrix(A), directed=False)
        assert count[i] == ref_n and same_partition(labels[i], ref)
        first = [labels[i][np.flatnonzero(labels[i] == k)[0]] for k in range(ref_n)]
        assert sorted(first) == first == list(range(ref_n))  # numbered by first row
        sizes = np.bincount(ref)
        assert foote_components(Z[i : i + 1], threshold, min_size=3)[0][0] == (sizes >= 3).sum()


def test_foote_invariances_and_validation():
    rng = np.random.default_rng(8)
    Z = planted(rng, 10, 16, 5, 2, 0.6)
    count, labels = foote_components(Z, 0.3)
    perm = rng.permutation(16)
    count_p, labels_p = foote_components(Z[:, perm] * rng.uniform(0.5, 3, (10, 16, 1)), 0.3)  # order and scale
    assert np.array_equal(count, count_p)
    assert all(same_partition(labels[i][perm], labels_p[i]) for i in range(10))
    with pytest.raises(ValueError):
        foote_components(Z[0], 0.3)
    with pytest.raises(ValueError):
        foote_components(np.full((1, 3, 2), np.nan), 0.3)
    with pytest.raises(ValueError):
        foote_components(Z, 0.3, min_size=0)
