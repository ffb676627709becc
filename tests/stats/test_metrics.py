"""The batched ingredients of S, Q and D against scikit-learn, scipy and brute force."""

import numpy as np
import pytest
import torch
from scipy.stats import special_ortho_group
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_samples

from polypsi.stats.kmeans import cluster_search, kmeanspp, lloyd, sq_distances
from polypsi.stats.metrics import (
    adjusted_rand,
    canonical_labels,
    cosine_distances,
    dense_labels,
    nmi,
    silhouette_distances,
    silhouette_gram,
    top2_gaps,
)
from polypsi.stats.nulls import (
    TANGENT_MIN_COS,
    helmert_basis,
    kmeans_uniforms,
    mixing_matrices,
    structure_free_sample,
    unit_rng,
)
from polypsi.stats.reference import canonical
from polypsi.stats.batched import _null_gram, mixing_matrices_torch
from polypsi.stats.synthetic import make_world, planted_channels
from polypsi.stats.text import TextBank, concept_embeddings


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def gram(X):
    X = torch.from_numpy(np.asarray(X, dtype=np.float32))
    return X @ X.transpose(-1, -2)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    world = make_world(rng, d=64, n_concepts=12)
    Z, y, truth = planted_channels(rng, world, 6, 3, separation=1.5)
    return Z, y, truth


def test_silhouette_matches_sklearn_random_and_planted(planted):
    rng = np.random.default_rng(1)
    Z = unit(rng.standard_normal((8, 30, 16))).astype(np.float32)
    labels = rng.integers(0, 4, (8, 30))
    labels[0, :] = np.r_[0, np.ones(29, int)]  # a singleton cluster scores 0
    labels[1, :] = np.r_[np.zeros(15, int), np.full(15, 3)]  # empty cluster ids in between
    Zp, _, truth = planted
    for X, lab, k in [(Z, labels, 4), (Zp, truth, 3)]:
        mean, samples = silhouette_gram(gram(X), torch.from_numpy(lab), k)
        for i in range(len(X)):
            ref = silhouette_samples(X[i].astype(np.float64), lab[i], metric="cosine")
            np.testing.assert_allclose(samples[i].numpy(), ref, atol=2e-5)
            assert mean[i].item() == pytest.approx(ref.mean(), abs=2e-5)


def test_nmi_matches_sklearn_including_edge_cases():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 7, (200, 50))
    l = rng.integers(0, 5, (200, 50))
    y[0] = 3  # constant classes
    l[1] = 0  # constant clusters
    y[2], l[2] = 1, 4  # both constant
    l[3] = y[3] % 5  # a function of the classes
    y[4] = l[4]  # identical labelings
    got = nmi(dense_labels(y), l)
    want = [normalized_mutual_info_score(a, b) for a, b in zip(y, l)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[2] == 1.0 and got[0] == 0.0 and got[4] == pytest.approx(1.0)


def test_nmi_of_a_row_does_not_depend_on_its_batch():
    """Bit for bit: a row scored alone, or among rows with more classes or clusters, or in another order."""
    rng = np.random.default_rng(5)
    y = dense_labels(rng.integers(0, 12, (60, 50)))
    l = rng.integers(0, 5, (60, 50))
    y[:10] = rng.integers(0, 2, (10, 50))  # rows whose largest label is small
    l[:10] = rng.integers(0, 2, (10, 50))
    whole = nmi(y, l)
    alone = np.array([nmi(y[i : i + 1], l[i : i + 1])[0] for i in range(len(y))])
    order = rng.permutation(len(y))
    assert np.array_equal(alone, whole) and np.array_equal(nmi(y[order], l[order]), whole[order])
    assert np.array_equal(nmi(y[:10], l[:10]), whole[:10])


@pytest.mark.parametrize("K", [2, 3, 12, 50, 200])
def test_adjusted_rand_equals_sklearn_bit_for_bit(K):
    """Random labelings of several sizes and the special cases, each row against adjusted_rand_score."""
    rng = np.random.default_rng(K)
    a = rng.integers(0, 6, (120, K))
    b = rng.integers(0, 4, (120, K))
    a[:20] = rng.integers(0, 2, (20, K))  # few labels on one side
    b[20:25] = a[20:25]  # identical partitions
    b[25:30] = 3 - np.minimum(a[25:30], 3)  # a coarser partition than a's, relabelled
    a[30:35], b[30:35] = 0, 0  # both one cluster
    a[35:40] = 0  # one side one cluster, the other not
    b[40:45] = np.arange(K) % 4  # as many ways to differ as there are
    a[45:50], b[45:50] = np.arange(K), np.arange(K)[::-1]  # every example alone, on both sides
    got = adjusted_rand(a, b)
    want = np.array([adjusted_rand_score(x, y) for x, y in zip(a, b)])
    assert np.array_equal(got, want)
    assert np.array_equal(adjusted_rand(a[7:8], b[7:8]), want[7:8]) and adjusted_rand(a[:0], b[:0]).shape == (0,)


def test_purity_gaps_match_brute_force():
    rng = np.random.default_rng(3)
    proto = unit(rng.standard_normal((5, 4, 12))).astype(np.float32)
    cand = unit(rng.standard_normal((30, 12))).astype(np.float32)
    valid = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
    allowed = rng.random((5, 30)) < 0.5
    sims = torch.einsum("nkd,pd->nkp", torch.from_numpy(proto), torch.from_numpy(cand))
    for mask in (None, allowed):
        D, gap, idx, top = top2_gaps(sims, torch.from_numpy(valid), None if mask is None else torch.from_numpy(mask))
        for u in range(5):
            gaps = []
            for j in np.flatnonzero(valid[u]):
                s = [(float(proto[u, j] @ cand[p]), p) for p in range(30) if mask is None or mask[u, p]]
                (s1, p1), (s2, p2) = sorted(s, reverse=True)[:2]
                assert gap[u, j].item() == pytest.approx(s1 - s2, abs=1e-6)
                assert (idx[u, j, 0].item(), idx[u, j, 1].item()) == (p1, p2)
                assert top[u, j].item() == pytest.approx(s1, abs=1e-6)
                gaps.append(s1 - s2)
            assert D[u].item() == pytest.approx(np.mean(gaps), abs=1e-6)


def test_concept_level_candidates_average_templates():
    rng = np.random.default_rng(4)
    emb = unit(rng.standard_normal((12, 8)))
    ids = np.repeat(np.arange(4), 3)
    bank = TextBank(emb, ids, list("abcd"), emb[:6], np.repeat(np.arange(2), 3), ["x", "y"])
    C, cid = bank.candidates("main", "concept")
    for c in range(4):
        np.testing.assert_allclose(C[c], unit(emb[ids == c].mean(0)), atol=1e-6)
    np.testing.assert_array_equal(cid, np.arange(4))
    P, pid = bank.candidates("main", "prompt")
    np.testing.assert_array_equal(pid, ids)
    np.testing.assert_allclose(concept_embeddings(emb, ids, 4), C, atol=1e-6)


def test_canonical_labels_order_by_size_then_first_member():
    rng = np.random.default_rng(5)
    lab = rng.integers(0, 5, (50, 20))
    lab[0] = np.r_[np.full(10, 3), np.full(10, 1)]  # tie in size: the earlier cluster comes first
    got = canonical_labels(torch.from_numpy(lab), 5).numpy()
    for a, b in zip(got, lab):
        np.testing.assert_array_equal(a, canonical(b))
    np.testing.assert_array_equal(got[0], np.r_[np.zeros(10, int), np.ones(10, int)])


def test_euclidean_lloyd_matches_sklearn_from_the_same_init(planted):
    rng = np.random.default_rng(6)
    Z = np.concatenate([planted[0], unit(rng.standard_normal((6, 50, 64))).astype(np.float32)])
    for k in (2, 3, 5):
        centres = np.stack([rng.choice(50, k, replace=False) for _ in Z])
        G = gram(Z)
        init = torch.stack([G[i][:, centres[i]].argmax(1) for i in range(len(Z))])  # nearest centre
        got, _ = lloyd(G, init.view(len(Z), 1, 1, 50), [k], max_iter=300, spherical=False)
        for i, X in enumerate(Z.astype(np.float64)):
            km = KMeans(k, init=X[centres[i]], n_init=1, tol=0, max_iter=300, algorithm="lloyd").fit(X)
            np.testing.assert_array_equal(got[i, 0, 0].numpy(), km.labels_)


def _spherical_brute_force(X, lab, k):
    for _ in range(300):
        cent = unit(np.stack([X[lab == j].sum(0) for j in range(k)]))
        new = np.argmax(X @ cent.T, axis=1)
        if np.array_equal(new, lab):
            return lab
        lab = new
    return lab


def test_spherical_lloyd_matches_brute_force(planted):
    rng = np.random.default_rng(7)
    Z = np.concatenate([planted[0], unit(rng.standard_normal((6, 50, 64))).astype(np.float32)])
    G = gram(Z)
    for k in (2, 4):
        u = torch.from_numpy(np.stack([kmeans_uniforms(rng, 1, 3, 5) for _ in Z])).float()
        init = kmeanspp(G, k, u[:, 0])  # [U, R, K]
        got, _ = lloyd(G, init.unsqueeze(1), [k], max_iter=300, spherical=True)
        for i in range(len(Z)):
            for r in range(3):
                if len(np.unique(got[i, 0, r].numpy())) < k:
                    continue  # the brute force has no empty-cluster rule
                want = _spherical_brute_force(Z[i].astype(np.float64), init[i, r].numpy(), k)
                np.testing.assert_array_equal(got[i, 0, r].numpy(), want)


def test_kmeanspp_picks_distinct_centres_and_recovers_planted(planted):
    Z, _, truth = planted
    rng = np.random.default_rng(8)
    u = torch.from_numpy(np.stack([kmeans_uniforms(rng, 1, 10, 5) for _ in Z])).float()
    lab = kmeanspp(gram(Z), 3, u[:, 0])
    assert all(len(np.unique(l)) == 3 for l in lab.reshape(-1, 50).numpy())
    res = cluster_search(gram(Z), u.expand(-1, 4, -1, -1, -1), [2, 3, 4, 5], max_iter=100)
    assert (res.silhouette.argmax(1) == 1).all()  # K' = 3
    for i in range(len(Z)):
        assert normalized_mutual_info_score(truth[i], res.labels[i, 1].numpy()) == 1.0


def test_distances_shared_by_every_k_give_the_same_numbers(planted):
    """cluster_search builds each distance matrix once for all K': bit for bit what each K' built on its own."""
    rng = np.random.default_rng(10)
    G = gram(np.concatenate([planted[0], unit(rng.standard_normal((6, 50, 64))).astype(np.float32)]))
    diag = G.diagonal(dim1=1, dim2=2)
    assert torch.equal(sq_distances(G), (diag.unsqueeze(2) + diag.unsqueeze(1) - 2 * G).clamp_min(0))
    u = torch.from_numpy(np.stack([kmeans_uniforms(rng, 4, 10, 5) for _ in G])).float()
    D2, D = sq_distances(G), cosine_distances(G)
    for a, k in enumerate((2, 3, 4, 5)):
        lab = kmeanspp(G, k, u[:, a], D2)
        assert torch.equal(lab, kmeanspp(G, k, u[:, a]))
        for got, want in zip(silhouette_distances(D, lab[:, 0], k), silhouette_gram(G, lab[:, 0], k)):
            assert torch.equal(got, want)


def test_gaussian_null_keeps_mean_and_spectrum_and_gram_version_is_exact():
    rng = np.random.default_rng(9)
    X = unit(rng.standard_normal((50, 32)) + 2.0).astype(np.float64)
    W = mixing_matrices(rng.standard_normal((3, 49, 49)))
    np.testing.assert_allclose(W[0] @ W[0].T, np.eye(50), atol=1e-10)  # orthogonal
    B = helmert_basis(50)
    np.testing.assert_allclose(B.T @ B, np.eye(49), atol=1e-12)
    np.testing.assert_allclose(B.sum(0), 0, atol=1e-12)
    Xn = W[0] @ X
    np.testing.assert_allclose(Xn.mean(0), X.mean(0), atol=1e-12)
    sv = lambda A: np.linalg.svd(A - A.mean(0), compute_uv=False)
    np.testing.assert_allclose(sv(Xn), sv(X), atol=1e-10)
    assert not np.allclose(unit(Xn) @ unit(Xn).T, X @ X.T, atol=1e-2)  # but the geometry changes
    # The scorer's Gram-matrix version equals the explicit one, with a mean direction (central
    # projection) and without one (the unit vectors are mixed).
    centred = unit(rng.standard_normal((50, 32)))
    for Y in (X, centred):
        gauss = rng.standard_normal((3, 49, 49))
        Gn, M = _null_gram(gram(np.stack([Y] * 3)), gauss)
        for i in range(3):
            Xi = structure_free_sample(Y, gauss[i])
            np.testing.assert_allclose(Gn[i].numpy(), Xi @ Xi.T, atol=1e-5)
            np.testing.assert_allclose(M[i].numpy() @ Y, Xi, atol=1e-5)
    a = X @ unit(X.mean(0))
    assert a.min() > TANGENT_MIN_COS > (centred @ unit(centred.mean(0))).min()
    np.testing.assert_allclose(structure_free_sample(centred, gauss[0]), unit(mixing_matrices(gauss[0]) @ centred))
    # Central projection: the projected patches keep their mean direction and lie on the tangent plane.
    T = X / a[:, None]
    np.testing.assert_allclose(T @ unit(X.mean(0)), 1.0, atol=1e-12)

    # The device version (a GPU's S-null runs its QR decompositions there) equals numpy's to rounding.
    gauss = rng.standard_normal((7, 49, 49))
    np.testing.assert_allclose(mixing_matrices_torch(torch.from_numpy(gauss)).numpy(), mixing_matrices(gauss),
                               atol=1e-12)


def test_rotation_null_leaves_every_cosine_unchanged():
    rng = np.random.default_rng(11)
    X = unit(rng.standard_normal((50, 64)))
    R = special_ortho_group.rvs(64, random_state=1)
    np.testing.assert_allclose((X @ R.T) @ (X @ R.T).T, X @ X.T, atol=1e-12)


def test_unit_generators_are_keyed_by_seed_layer_channel_and_draw():
    assert unit_rng(0, "layer4", 7, 3).random() == unit_rng(0, "layer4", 7, 3).random()
    seen = {unit_rng(*key).random() for key in
            [(0, "layer4", 7, 3), (1, "layer4", 7, 3), (0, "layer3", 7, 3), (0, "layer4", 8, 3), (0, "layer4", 7, 4)]}
    assert len(seen) == 5


def test_concept_contrast_matches_pairwise_definition():
    from polypsi.stats.metrics import concept_contrast

    rng = np.random.default_rng(5)
    proto = torch.from_numpy(rng.normal(size=(6, 4, 7)))
    proto = proto / proto.norm(dim=-1, keepdim=True)
    sims = torch.from_numpy(rng.uniform(-1, 1, (6, 4, 9)))
    sizes = torch.from_numpy(rng.integers(0, 20, (6, 4)))
    sizes[0, 2:] = 0  # absent cluster slots
    contrast, eff = concept_contrast(sims, proto, sizes)
    for u in range(6):
        w = sizes[u].numpy() / sizes[u].numpy().sum()
        s, p = sims[u].numpy(), proto[u].numpy()
        n = s.argmax(1)
        top = [set(np.argsort(-s[i])[:3]) for i in range(4)]  # each cluster's three best concepts
        def margin(i, j):
            c = sorted(top[i] | top[j])
            return (max(s[i, c] - s[j, c]) + max(s[j, c] - s[i, c])) / 2
        k = max(int((w > 0).sum()), 2)
        want = sum(w[i] * w[j] * np.sqrt(margin(i, j) * (1 - p[i] @ p[j]))
                   for i in range(4) for j in range(4) if i != j and w[i] > 0 and w[j] > 0) / (1 - 1 / k)
        assert contrast[u].item() == pytest.approx(want, abs=1e-12)
        shares = {}
        for j in range(4):
            if w[j] > 0:
                shares[n[j]] = shares.get(n[j], 0) + w[j]
        assert eff[u].item() == pytest.approx(1 / sum(v * v for v in shares.values()))


def test_activation_weights_are_relative_to_the_top_and_clipped():
    from polypsi.stats.metrics import activation_weights

    act = np.array([[4.0, 2.0, 1.0, -1.0], [0.0, -1.0, -2.0, -3.0], [5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(activation_weights(act), [[1, 0.5, 0.25, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_concept_contrast_shares_by_mass():
    from polypsi.stats.metrics import concept_contrast

    apart = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    two = torch.tensor([[[0.9, 0.1], [0.1, 0.9]]], dtype=torch.float64)
    sizes = torch.tensor([[25, 25]])
    assert concept_contrast(two, apart, sizes)[0].item() == concept_contrast(two, apart, sizes, sizes * 0.3)[0].item()
    # equal counts, but the second mode responds at a tenth: shares 25/27.5 and 2.5/27.5
    c, e = concept_contrast(two, apart, sizes, torch.tensor([[25.0, 2.5]], dtype=torch.float64))
    w = np.array([25, 2.5]) / 27.5
    assert c.item() == pytest.approx(2 * w[0] * w[1] * np.sqrt(0.8) / 0.5)
    assert e.item() == pytest.approx(1 / (w**2).sum())


def test_concept_contrast_needs_different_names_and_prototypes_and_weighs_balance():
    from polypsi.stats.metrics import concept_contrast

    apart = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # orthogonal prototypes
    close = torch.tensor([[[1.0, 0.0], [0.8, 0.6]]], dtype=torch.float64)  # cosine 0.8
    two = torch.tensor([[[0.9, 0.1], [0.1, 0.9]]], dtype=torch.float64)  # two names, margin (0.8 + 0.8) / 2
    shifted = torch.tensor([[[0.9, 0.1], [0.7, -0.1]]], dtype=torch.float64)  # one profile, lowered by context
    similar = torch.tensor([[[0.9, 0.1], [0.8, 0.3]]], dtype=torch.float64)  # one name, profiles a little apart
    balanced, skewed = torch.tensor([[25, 25]]), torch.tensor([[47, 3]])
    c, e = concept_contrast(two, apart, balanced)
    assert c.item() == pytest.approx(np.sqrt(0.8 * 1.0)) and e.item() == pytest.approx(2.0)  # 2 x 0.25 / (1 - 1/2)
    c, e = concept_contrast(two, apart, skewed)
    assert c.item() == pytest.approx(2 * 0.94 * 0.06 * np.sqrt(0.8) / 0.5) and round(e.item()) == 1
    c, e = concept_contrast(shifted, apart, balanced)  # apart, but one concept: context shifts every name alike
    assert c.item() == pytest.approx(0.0, abs=1e-6) and e.item() == 1.0  # sqrt of a rounding-level margin
    c, e = concept_contrast(similar, apart, balanced)  # margin (0.1 + 0.2) / 2: small
    assert c.item() == pytest.approx(np.sqrt(0.15)) and e.item() == 1.0
    c, _ = concept_contrast(two, close, balanced)  # two names, near prototypes: a weaker contrast
    assert c.item() == pytest.approx(np.sqrt(0.8 * 0.2))
    # one concept over-split: four equal clusters whose four names differ pairwise no more than the two above
    # score no higher than those two clusters (their number alone earns nothing)
    four = torch.tensor([[[0.9, 0.1, 0.1, 0.1], [0.1, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.1], [0.1, 0.1, 0.1, 0.9]]],
                        dtype=torch.float64)
    ortho = torch.eye(4, dtype=torch.float64)[None]
    c4, _ = concept_contrast(four, ortho, torch.tensor([[10, 10, 10, 10]]))
    assert c4.item() == pytest.approx(np.sqrt(0.8))
