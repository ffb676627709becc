"""Robustness analyses of the report: top-k subsets, null-seed split, text-head D."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from polypsi.config import CalibrationConfig, NullConfig, StatsConfig
from polypsi.report import robustness
from polypsi.stats import TextBank, score_channels
from polypsi.stats.synthetic import make_world, planted_channels

D_DIM = 32


def _patches_table(Z, labels, clusters, channels, rng, shuffle=True):
    n, K, _ = Z.shape
    df = pd.DataFrame({
        "channel": np.repeat(channels, K),
        "rank": np.tile(np.arange(K), n),
        "label": labels.reshape(-1),
        "cluster": clusters.reshape(-1),
    })
    emb = Z.reshape(n * K, -1)
    if shuffle:  # files need not be sorted; the analyses must not depend on row order
        perm = rng.permutation(len(df))
        df, emb = df.iloc[perm].reset_index(drop=True), emb[perm]
    return df, emb


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    world = make_world(rng, d=D_DIM, n_concepts=12, n_null_concepts=20)
    Z, labels, truth = planted_channels(rng, world, n=6, k=2, K=16, separation=1.5)
    channels = np.array([3, 7, 1, 9, 4, 0])
    return rng, world, Z, labels, truth, channels


def test_patch_arrays_orders_by_channel_and_rank_and_takes_first_k(planted):
    rng, _, Z, labels, truth, channels = planted
    df, emb = _patches_table(Z, labels, truth, channels, rng)
    ch, z, lab, cl = robustness.patch_arrays(df, emb)
    order = np.argsort(channels)
    np.testing.assert_array_equal(ch, channels[order])
    np.testing.assert_allclose(z, Z[order])
    np.testing.assert_array_equal(lab, labels[order])
    ch, z, lab, cl = robustness.patch_arrays(df, emb, k=10)
    np.testing.assert_allclose(z, Z[order][:, :10])
    np.testing.assert_array_equal(cl, truth[order][:, :10])
    with pytest.raises(ValueError, match="exceeds the 16 mined patches"):
        robustness.patch_arrays(df, emb, k=20)


def test_cluster_d_reproduces_the_scorers_d(planted):
    """D from the stored assignments equals the D the scorer computed for the real draw."""
    rng, world, Z, labels, _, channels = planted
    stats_cfg, nulls = StatsConfig(), NullConfig(m=3)
    s = score_channels(Z, labels, channels, world.text, 0, stats_cfg, nulls, "layer4")
    assign = np.stack(s["assignments"].to_numpy())
    df, emb = _patches_table(Z, labels, assign, channels, rng)
    for level in ["concept", "prompt"]:
        got = robustness.cluster_d(df, emb, world.text, level, stats_cfg.k_max).set_index("channel")["D"]
        if level == "concept":
            np.testing.assert_allclose(got.loc[channels].to_numpy(), s["D"].to_numpy(), atol=1e-5)
        # Brute force: unit mean prototype per cluster, top-1 minus top-2 over the candidates.
        E, _ = world.text.candidates("main", level)
        for i, c in enumerate(channels):
            gaps = []
            for j in np.unique(assign[i]):
                p = Z[i][assign[i] == j].mean(0)
                sims = np.sort(E @ (p / np.linalg.norm(p)))[::-1]
                gaps.append(sims[0] - sims[1])
            assert got.loc[c] == pytest.approx(np.mean(gaps), abs=1e-5)


def test_text_head_same_embedder_agrees_and_other_embedder_differs(planted):
    rng, world, Z, labels, truth, channels = planted
    df, emb = _patches_table(Z, labels, truth, channels, rng)
    # The second embedder's table in another row order: rows are matched by (channel, rank).
    perm = rng.permutation(len(df))
    th = robustness.text_head(df, emb, world.text, df.iloc[perm].reset_index(drop=True), emb[perm], world.text,
                              "concept", 5)
    np.testing.assert_allclose(th.D_primary, th.D_secondary, atol=1e-6)
    # A different embedding space (a random rotation of images and texts together) leaves D unchanged...
    q, _ = np.linalg.qr(rng.standard_normal((D_DIM, D_DIM)))
    t = world.text
    rot = TextBank(t.emb @ q, t.concept_id, t.concepts, t.null_emb @ q, t.null_concept_id, t.null_concepts)
    th = robustness.text_head(df, emb, t, df, (emb @ q).astype(np.float32), rot, "concept", 5)
    np.testing.assert_allclose(th.D_primary, th.D_secondary, atol=1e-5)
    # ...while unrelated text embeddings change it.
    other = make_world(np.random.default_rng(5), d=D_DIM, n_concepts=12).text
    th = robustness.text_head(df, emb, t, df, emb, other, "concept", 5)
    assert not np.allclose(th.D_primary, th.D_secondary, atol=1e-3)
    with pytest.raises(ValueError, match="no embedding for channel"):
        robustness.text_head(df, emb, t, df.iloc[1:], emb[1:], t, "concept", 5)


def test_text_head_rows_say_when_skipped():
    psi = pd.DataFrame({"channel": [0, 1, 2, 3], "psi": [0.1, 0.2, 0.3, 0.4], "status": ["ok"] * 4})
    (row,) = robustness.text_head_rows("layer4", None, psi, None)
    assert row["note"].startswith("skipped") and np.isnan(row["rho"]) and row["n"] == 0
    th = pd.DataFrame({"channel": [0, 1, 2, 3], "D_primary": [0.1, 0.2, 0.3, 0.4], "D_secondary": [1, 2, 4, 3]})
    (row,) = robustness.text_head_rows("layer4", th, psi.assign(status=["ok", "ok", "ok", "dead"]), "open_clip:RN50")
    assert row["n"] == 3 and row["rho"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def mixed():
    """Planted two-cluster channels (0..5) and structure-free ones (6..11), with their score draws."""
    from polypsi.stats.synthetic import noise_channels

    rng = np.random.default_rng(1)
    world = make_world(rng, d=D_DIM, n_concepts=12, n_null_concepts=20)
    Zp, lp, truth = planted_channels(rng, world, n=6, k=2, K=16, separation=2.0)
    Zn, ln = noise_channels(rng, 6, K=16, d=D_DIM)
    Z, labels = np.concatenate([Zp, Zn]), np.concatenate([lp, ln])
    clusters = np.concatenate([truth, np.zeros_like(ln)])
    # Interleave the planted clusters along the rank order, as activations would.
    perm = np.argsort(rng.random(labels.shape), axis=1)
    Z = np.take_along_axis(Z, perm[..., None], 1)
    labels, clusters = np.take_along_axis(labels, perm, 1), np.take_along_axis(clusters, perm, 1)
    channels = np.arange(12)
    nulls = NullConfig(m=6)
    scores = score_channels(Z, labels, channels, world.text, list(range(7)), StatsConfig(), nulls, "layer4")
    return world, Z, labels, clusters, channels, nulls, scores


def test_seed_split_calibrates_each_half_by_hand(mixed):
    _, _, _, _, channels, nulls, scores = mixed
    split = robustness.seed_split(scores, CalibrationConfig())
    assert split.attrs["draws"] == {"odd": [1, 3, 5], "even": [2, 4, 6]}
    assert len(split) == len(channels)
    for name, draws in split.attrs["draws"].items():
        ref = scores[scores.draw.isin(draws)].groupby("channel")[["S", "Q", "D"]]
        mu, sd = ref.mean(), ref.std(ddof=1)
        real = scores[scores.draw == 0].set_index("channel")[["S", "Q", "D"]]
        hats = expit((real - mu) / (sd + CalibrationConfig().eps))
        want = hats.prod(axis=1).loc[split.channel]
        np.testing.assert_allclose(split[f"psi_{name}"], want, rtol=1e-6)
    psi = split.rename(columns={"psi_odd": "psi", "status_odd": "status"})
    (row,) = robustness.seed_rows("layer4", split, psi)
    ok = split[(split.status_odd == "ok") & (split.status_even == "ok")]
    assert row["n"] == len(ok)
    with pytest.raises(ValueError, match="at least 2 odd and 2 even"):
        robustness.seed_split(scores[scores.draw <= 2], CalibrationConfig())


def test_k_sensitivity_rescoring(mixed):
    from polypsi.calibration import calibrate

    world, Z, labels, clusters, channels, nulls, scores = mixed
    rng = np.random.default_rng(2)
    df, emb = _patches_table(Z, labels, clusters, channels, rng)
    stats_cfg = StatsConfig()
    res = robustness.k_sensitivity(df, emb, world.text, [4, 8, 12], stats_cfg, nulls, CalibrationConfig(), 4,
                                   "layer4")
    # k=4 cannot be clustered with k_max=5 and is skipped; the mined K=16 is re-scored with 4 draws as a control.
    assert sorted(res.k.unique()) == [8, 12, 16] and (res.m == 4).all()
    # The K=16, 4-draw control is the run's own calibration restricted to draws 0..4.
    full = calibrate(scores[scores.draw <= 4], 4, CalibrationConfig(holdout_null_neurons=False))[0]
    ctrl = res[res.k == 16].set_index("channel").loc[channels]
    np.testing.assert_allclose(ctrl.psi, full.set_index("channel").loc[channels].psi, rtol=1e-5)
    # Planted channels keep out-ranking structure-free ones with only 8 patches.
    k8 = res[res.k == 8].set_index("channel").psi
    assert k8.loc[:5].min() > k8.loc[6:].median()
    psi, _ = calibrate(scores, nulls.m, CalibrationConfig())
    rows = robustness.k_sensitivity_rows("layer4", res, psi, [4, 8, 12], 16, nulls.m)
    assert [r["setting"] for r in rows] == ["K=4", "K=8", "K=12", "K=16, 4 draws"]
    assert rows[0]["note"].startswith("skipped") and rows[0]["n"] == 0
    assert rows[1]["rho"] > 0.3 and rows[3]["rho"] > rows[1]["rho"] - 0.5
    with pytest.raises(ValueError, match="must lie in 3..nulls.m"):
        robustness.k_sensitivity(df, emb, world.text, [8], stats_cfg, nulls, CalibrationConfig(), 9, "layer4")
