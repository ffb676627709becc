"""The insertion protocol on the colour-detector model (tests/interventions/worlds.py): a cell pasted at
the measured site sets the site's activation to the pasted colour's known value, and a paste outside the
site's cell cannot reach it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polypsi.config import InterventionConfig
from polypsi.interventions.causal import channel_table, cluster_table
from polypsi.interventions.insert import measured_site, neutral_images, run_insertions, select_insert_channels

from .worlds import GEOMETRY, K, S, UNIT_STD, ZERO_MEAN, ColourNet, colour_world, expected_activation


def _run(tmp_path, workers=0, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    dataset, patches, psi = colour_world(tmp_path)
    cfg = InterventionConfig(batch_size=4, insert=dict(images=2, donors=2, neutral_quantile=0.5, **kw))
    trials, sig = run_insertions(ColourNet().eval(), "act", psi, patches, dataset, GEOMETRY, cfg, "cpu", S,
                                 ZERO_MEAN, UNIT_STD, workers=workers)
    return trials, sig, patches, dataset


def test_insertion_raises_the_site_by_the_known_amounts(tmp_path):
    trials, sig, patches, dataset = _run(tmp_path)
    # live channels only: 0 (red/yellow) and 1 (green, k_hat 1 is fine here); 2 is dead, 3 an OR-unit
    assert set(trials["channel"]) == {0, 1}
    assert (trials["status"] == "ok").all()
    colour = dict(zip(patches["image_id"], patches["colour"]))  # colour of each image's one cell
    top = patches.groupby("channel")["image_id"].apply(set)
    assert set(trials[["u", "v"]].itertuples(index=False, name=None)) == {(1, 1)}  # nearest the centre
    for r in trials.itertuples(index=False):
        c = r.channel
        assert r.image_id not in top[c]  # a neutral image is never one of the channel's top images
        assert r.activation_before == pytest.approx(0.0, abs=1e-6)  # neutral: the channel is silent
        assert r.donor_image_id != r.image_id
        if r.condition in ("Cluster", "Random"):
            assert (r.region_y0, r.region_x0, r.region_y1, r.region_x1) == (K, K, 2 * K, 2 * K)
            expected = expected_activation(c, colour[r.donor_image_id])
            if r.condition == "Cluster":
                assert r.donor_channel == c and r.donor_cluster == r.cluster
            else:
                assert r.donor_channel != c
        elif r.condition == "Off-RF":  # the same patch outside the site's cell: nothing reaches the site
            assert r.donor_channel == c
            box = (r.region_y0, r.region_x0, r.region_y1, r.region_x1)
            assert not (box[0] < 2 * K and K < box[2] and box[1] < 2 * K and K < box[3])
            expected = 0.0
        else:  # Ablate: the mean colour (black here) over the site's cell
            assert r.fill == "mean"
            expected = 0.0
        assert r.activation_after == pytest.approx(expected, abs=1e-5), r
        assert r.delta_norm == pytest.approx(expected, abs=1e-5)
    red = trials[(trials.channel == 0) & (trials.condition == "Cluster") & (trials.cluster == 0)]
    yellow = trials[(trials.channel == 0) & (trials.condition == "Cluster") & (trials.cluster == 1)]
    assert red["activation_after"].to_numpy() == pytest.approx(1.0) and yellow["activation_after"].to_numpy() == \
        pytest.approx(0.5)
    # 2 neutral images x 2 donor slots = 4 paired units per channel
    assert trials.groupby("channel")["site_rank"].nunique().to_dict() == {0: 4, 1: 4}

    cl = cluster_table(trials, alpha=0.05, min_effect=0.1, signatures=sig)
    ch = channel_table(trials, cl).set_index("channel")
    assert ch.loc[0, "n_driving"] == 2 and ch.loc[0, "share_driving"] == 1.0  # red and yellow each drive it
    assert ch.loc[1, "n_driving"] == 1 and not ch.loc[1, "causal_polysemantic"]


def test_a_cluster_below_min_effect_does_not_drive(tmp_path):
    trials, sig, _, _ = _run(tmp_path)
    cl = cluster_table(trials, alpha=0.05, min_effect=0.6).set_index(["channel", "cluster"])
    assert bool(cl.loc[(0, 0), "drives"]) and not bool(cl.loc[(0, 1), "drives"])  # yellow raises only 0.5


def test_insertion_is_seeded(tmp_path):
    a = _run(tmp_path / "a")[0]
    b = _run(tmp_path / "b")[0]
    cols = ["channel", "site_rank", "condition", "cluster", "image_id", "donor_image_id", "region_y0", "region_x0"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_images_built_in_threads_give_the_same_trials(tmp_path):
    trials, sig, _, _ = _run(tmp_path)
    ahead, sig_ahead, _, _ = _run(tmp_path, workers=3)
    pd.testing.assert_frame_equal(trials, ahead)
    pd.testing.assert_frame_equal(sig, sig_ahead)
    assert trials["activation_after"].notna().sum() > 10


def test_measured_site_leaves_room_outside_the_crop():
    geom = dict(stride=16.0, offset=6.5, crop=80, height=8, width=8)
    u, v, room = measured_site(geom, 128, 42)
    # centre (70.5, 86.5) px; its crop box spans x in [47, 127), leaving 47 px on the left for a 42 px square
    # (sites nearer the centre, e.g. (4, 4) with box [31, 111), leave at most 31 px)
    assert room and (u, v) == (4, 5)
    u, v, room = measured_site(geom, 128, 60)
    assert not room  # no site's crop leaves 60 px free


def test_neutral_images_under_the_quantile():
    maxima = pd.Series([0.0, 0.1, 0.2, 0.9, 1.0, 0.05], index=[10, 11, 12, 13, 14, 15])
    ids, thr = neutral_images(maxima, 0.5, 5, np.random.default_rng(0), exclude={11})
    assert thr == pytest.approx(0.15) and ids == [10, 15]


def test_select_insert_channels_spreads_over_the_index():
    psi = pd.DataFrame(dict(channel=range(10), index=np.arange(10.0), status="ok"))
    patches = pd.DataFrame(dict(channel=range(10)))
    assert select_insert_channels(psi, patches, 4)["channel"].tolist() == [9, 6, 3, 0]
    assert len(select_insert_channels(psi, patches, None)) == 10


def test_prototype_order_puts_shifted_donors_last():
    """Members nearest the prototype come first, but one whose square must be shifted at its image border
    (its content would land away from the measured site) goes after every aligned member."""
    from polypsi.interventions.insert import prototype_order

    emb = [np.array([1.0, 0.0]), np.array([0.9, 0.1]), np.array([0.0, 1.0]), np.array([0.95, 0.05])]
    members = pd.DataFrame({"rank": [0, 1, 2, 3], "embedding": emb})
    assert prototype_order(members)["rank"].tolist() == [1, 3, 0, 2]
    shifted = np.array([False, True, False, False])
    assert prototype_order(members, shifted)["rank"].tolist() == [3, 0, 2, 1]
    # without embeddings: by rank, shifted members last
    assert prototype_order(members.drop(columns="embedding"), shifted)["rank"].tolist() == [0, 2, 3, 1]
