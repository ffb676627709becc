"""Synthetic OR-units: their top-K is the brute-force top-K of max(q_a, q_b); pairs follow the documented rule."""

import numpy as np
import pandas as pd
import pytest

from polypsi.config import ValidationConfig
from polypsi.validation.or_units import build_or_units, interleave


def top_list(act: np.ndarray, sites: pd.DataFrame, K: int) -> pd.DataFrame:
    order = np.lexsort((np.arange(len(act)), -act))[:K]
    out = sites.iloc[order].reset_index(drop=True)
    out["rank"] = np.arange(K)
    out["activation"] = act[order]
    return out


@pytest.mark.parametrize("one_site", [False, True])
def test_interleave_is_the_top_k_of_the_max_of_quantiles(one_site):
    rng = np.random.default_rng(0)
    n_img, K = 40, 12
    sites = pd.DataFrame([(i, u, v) for i in range(n_img) for u in range(3) for v in range(3)],
                         columns=["image_id", "u", "v"])
    for trial in range(20):
        a, b = rng.normal(size=len(sites)), rng.normal(size=len(sites))
        if one_site:  # one site per image: a channel's value per image is its best site there
            keep = sites.groupby("image_id").head(1).index
            sites_, a, b = sites.loc[keep].reset_index(drop=True), a[keep], b[keep]
        else:
            sites_ = sites
        N = len(sites_)
        # Quantile normalisation over the whole dataset: rank r -> 1 - r / N, the same for both channels.
        qa = 1 - np.argsort(np.argsort(-a, kind="stable"), kind="stable") / N
        qb = 1 - np.argsort(np.argsort(-b, kind="stable"), kind="stable") / N
        q = np.maximum(qa, qb)
        first_a = qa >= qb  # at equal quantile the site counts as part a's (interleave puts a first)
        brute = np.lexsort((~first_a, -q))[:K]
        got = interleave(top_list(a, sites_, K), top_list(b, sites_, K), K, one_site)
        assert len(got) == K
        assert list(zip(got.image_id, got.u, got.v)) == list(sites_.iloc[brute].itertuples(index=False, name=None))


def test_interleave_counts_a_shared_image_once_and_balances_parts():
    a = pd.DataFrame({"rank": range(4), "image_id": [1, 2, 3, 4], "u": 0, "v": 0})
    b = pd.DataFrame({"rank": range(4), "image_id": [2, 5, 6, 7], "u": 1, "v": 1})
    got = interleave(a, b, 4, one_site_per_image=True)
    # a0=1, b0=2, a1=2 (already in: b's rank 0 beats a's rank 1), b1=5, a2=3
    assert got.image_id.tolist() == [1, 2, 5, 3]
    assert got.part.tolist() == [0, 1, 1, 0] and got.part_rank.tolist() == [0, 0, 1, 2]


def layer_tables(rng, n=8, K=10, d=16):
    """A layer of n channels whose top patches sit around one of 4 directions (channel c -> direction c % 4)."""
    base = np.linalg.qr(rng.normal(size=(d, 4)))[0].T
    rows, Z = [], []
    for c in range(n):
        for r in range(K):
            rows.append((c, r, 100 * c + r, r % 3, r % 2, 10.0 - r))
            z = base[c % 4] + 0.1 * rng.normal(size=d)
            Z.append(z / np.linalg.norm(z))
    topk = pd.DataFrame(rows, columns=["channel", "rank", "image_id", "u", "v", "activation"])
    return topk, topk[["channel", "rank"]].copy(), np.array(Z, np.float32)


def test_build_with_a_truth_pairs_monosemantic_channels_of_different_concepts():
    rng = np.random.default_rng(1)
    topk, emb, Z = layer_tables(rng)
    truth = pd.DataFrame({"layer": "l", "channel": range(8),
                          "kind": ["mono", "mono", "poly", "mono", "mono", "dead", "mono", "mono"],
                          "concepts": ["a", "b", "a;b", "a", "c", "", "b", "d"]})
    live = np.array([0, 1, 2, 3, 4, 6, 7])
    cfg = ValidationConfig(or_units_per_layer=100)
    units, table, z = build_or_units("l", topk, emb, Z, live, truth, cfg, one_site_per_image=True)
    concept = dict(zip(truth.channel, truth.concepts))
    monos = {0, 1, 3, 4, 6, 7}
    want = {(a, b) for a in monos for b in monos if a < b and concept[a] != concept[b]}
    assert set(zip(units.part_a, units.part_b)) == want
    assert units.channel.min() == 8 and units.channel.is_unique
    assert (table.groupby("channel").size() == 10).all()
    # Embeddings are the parts' own rows; both parts equally represented.
    for (c, r, pc, pr), row in zip(table[["channel", "rank", "part_channel", "part_rank"]].itertuples(index=False), z):
        np.testing.assert_array_equal(row, Z[pc * 10 + pr])
    counts = table.groupby(["channel", "part_channel"]).size()
    assert (counts == 5).all()
    # Activation: the quantile within the parts' top-K, equal for both parts at equal rank.
    np.testing.assert_allclose(table.activation, 1 - table.part_rank / 10)


def test_build_without_a_truth_pairs_far_prototypes_and_is_seeded():
    rng = np.random.default_rng(2)
    topk, emb, Z = layer_tables(rng)
    live = np.arange(8)
    cfg = ValidationConfig(or_units_per_layer=3, or_far_quantile=0.8)
    units, _, _ = build_or_units("l", topk, emb, Z, live, None, cfg, one_site_per_image=False)
    assert len(units) == 3
    # Channels with the same direction (c % 4 equal) have near-identical prototypes: never eligible.
    assert all(a % 4 != b % 4 for a, b in zip(units.part_a, units.part_b))
    assert units.rule.iloc[0].startswith("far prototypes")
    again, _, _ = build_or_units("l", topk, emb, Z, live, None, cfg, one_site_per_image=False)
    pd.testing.assert_frame_equal(units, again)
    other, _, _ = build_or_units("l", topk, emb, Z, live, None, ValidationConfig(or_units_per_layer=3, or_far_quantile=0.8,
                                                                                 seed=5), one_site_per_image=False)
    assert set(zip(other.part_a, other.part_b)) <= set((a, b) for a in range(8) for b in range(8) if a % 4 != b % 4)


def test_no_eligible_pair_gives_empty_tables():
    rng = np.random.default_rng(3)
    topk, emb, Z = layer_tables(rng, n=3)
    truth = pd.DataFrame({"layer": "l", "channel": [0, 1, 2], "kind": "mono", "concepts": "a"})
    units, table, z = build_or_units("l", topk, emb, Z, np.arange(3), truth, ValidationConfig(), True)
    assert units.empty and table.empty and z.shape == (0, 16)
