"""Patch-swap trials on the colour-detector model (tests/interventions/worlds.py): the activation
after every paste is known in advance, and changes outside a site's cell cannot reach the site."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from polypsi.config import InterventionConfig
from polypsi.interventions.plan import free_position, max_free_scale, region_box
from polypsi.interventions.run import paste, run_interventions
from polypsi.interventions.statistics import summarize
from polypsi.interventions.trial import CONDITIONS

from .worlds import GEOMETRY, K, S, UNIT_STD, ZERO_MEAN, ColourNet, colour_world, expected_activation


def _run(tmp_path, workers=0, **kw):
    dataset, patches, psi = colour_world(tmp_path)
    cfg = InterventionConfig(n_channels=3, sites_per_channel=7, batch_size=5, **kw)
    trials = run_interventions(ColourNet().eval(), "act", psi, patches, dataset, GEOMETRY, cfg, "cpu", S,
                               ZERO_MEAN, UNIT_STD, workers=workers)
    return trials, patches


def test_known_detector_effects(tmp_path):
    trials, patches = _run(tmp_path)
    assert set(trials["channel"]) == {0}  # channel 1 has k_hat 1, channel 2 is dead
    assert (trials["status"] == "ok").all()
    assert (trials["region_scale"] == 1.0).all()  # auto: the whole 8 px cell leaves room elsewhere
    assert len(trials) == 7 * len(CONDITIONS)
    colour = patches.set_index(["channel", "image_id"])["colour"]
    for r in trials.itertuples(index=False):
        site_colour = colour[(0, r.image_id)]
        assert r.activation_before == pytest.approx(expected_activation(0, site_colour), abs=1e-5)
        assert r.activation_before == pytest.approx(r.activation_mined, abs=1e-5)
        if r.condition in ("Shuffled-position", "Ablate-elsewhere"):
            # the changed square lies outside the site's cell, which is all the site sees
            box = (r.region_y0, r.region_x0, r.region_y1, r.region_x1)
            assert box[2] - box[0] == K and box[3] - box[1] == K
            assert not (box[0] < r.site_y1 and r.site_y0 < box[2] and box[1] < r.site_x1 and r.site_x0 < box[3])
            expected_after = r.activation_before
        else:
            assert (r.region_y0, r.region_x0) == (r.u * K, r.v * K)
            assert r.donor_image_id != r.image_id
            donor_colour = colour[(r.donor_channel, r.donor_image_id)]
            expected_after = expected_activation(0, donor_colour)
            if r.condition == "Aligned":
                assert r.donor_channel == 0 and r.donor_cluster == r.cluster
            elif r.condition == "Non-aligned":
                assert r.donor_channel == 0 and r.donor_cluster != r.cluster
            else:
                assert r.donor_channel == 1  # unrelated (no shared image) and live: channel 2 is dead
        assert r.activation_after == pytest.approx(expected_after, abs=1e-5), r
        assert r.delta_norm == pytest.approx((expected_after - r.activation_before) / 1.0, abs=1e-5)

    summary = summarize(trials)
    by = summary.set_index("condition")
    # red sites: Aligned 0, Non-aligned -0.5, Random -1; yellow sites: Aligned 0, Non-aligned +0.5, Random -0.5
    assert by.loc["Aligned", "mean_delta"] == pytest.approx(0, abs=1e-5)
    assert by.loc["Non-aligned", "mean_delta"] == pytest.approx((4 * -0.5 + 3 * 0.5) / 7, abs=1e-5)
    assert by.loc["Random", "mean_delta"] == pytest.approx((4 * -1 + 3 * -0.5) / 7, abs=1e-5)
    assert by.loc["Shuffled-position", "mean_delta"] == pytest.approx(0, abs=1e-5)
    assert by.loc["Ablate-elsewhere", "mean_delta"] == pytest.approx(0, abs=1e-5)
    assert by.loc["Random", "t"] > 0 and by.loc["Random", "pvalue"] < 1e-3
    assert (by["n"] == 7).all()


def test_extractor_callable_hooks_removed_and_box_check(tmp_path, caplog):
    dataset, patches, psi = colour_world(tmp_path)
    model = ColourNet().eval()
    cfg = InterventionConfig(n_channels=1, sites_per_channel=2)
    a = run_interventions(model, "act", psi, patches, dataset, GEOMETRY, cfg, "cpu", S, ZERO_MEAN, UNIT_STD)
    assert not model.act._forward_hooks  # the hooks added for the run are gone
    b = run_interventions(lambda x: {"act": model(x)}, "act", psi, patches, dataset, GEOMETRY, cfg, "cpu", S,
                          ZERO_MEAN, UNIT_STD)
    pd.testing.assert_frame_equal(a, b)
    assert "differ from the embedded crop boxes" not in caplog.text
    shifted = patches.assign(y0=patches.y0 + 1)
    with caplog.at_level("WARNING", logger="polypsi.interventions"):
        run_interventions(model, "act", psi, shifted, dataset, GEOMETRY, cfg, "cpu", S, ZERO_MEAN, UNIT_STD)
    assert "2 of 2 site regions differ from the embedded crop boxes" in caplog.text


def test_images_built_in_threads_give_the_same_trials(tmp_path):
    serial, _ = _run(tmp_path, fill="noise")
    for workers in (1, 3):
        ahead, _ = _run(tmp_path, workers=workers, fill="noise")
        pd.testing.assert_frame_equal(serial, ahead)
    assert serial["activation_after"].notna().sum() > 20


def test_trials_are_seeded(tmp_path):
    a, _ = _run(tmp_path, seed=3)
    b, _ = _run(tmp_path, seed=3)
    c, _ = _run(tmp_path, seed=4)
    pd.testing.assert_frame_equal(a, b)
    cols = ["donor_image_id", "region_y0", "region_x0"]
    assert not a[cols].equals(c[cols])


def test_no_free_position_is_reported_not_silent(tmp_path):
    dataset, patches, psi = colour_world(tmp_path)
    geom = {"input_size": S, "layers": {"act": dict(GEOMETRY["layers"]["act"], crop=20)}}
    cfg = InterventionConfig(n_channels=1, sites_per_channel=3, region_scale=1.0)
    trials = run_interventions(ColourNet().eval(), "act", psi, patches, dataset, geom, cfg, "cpu", S,
                               ZERO_MEAN, UNIT_STD)
    elsewhere = trials["condition"].isin(["Shuffled-position", "Ablate-elsewhere"])
    assert trials.loc[elsewhere, "status"].str.startswith("no_free_position").all()
    assert trials.loc[elsewhere, "activation_after"].isna().all()
    assert (trials.loc[~elsewhere, "status"] == "ok").all()
    by = summarize(trials).set_index("condition")
    assert by.loc["Shuffled-position", "n"] == 0 and by.loc["Shuffled-position", "n_dropped"] == 3
    assert by.loc["Shuffled-position", "dropped_reasons"] == "no_free_position=3"
    assert np.isnan(by.loc["Shuffled-position", "pvalue"])
    # a smaller replaced square leaves room again; the largest such scale matches brute force
    sites = trials.drop_duplicates("site_rank")
    best = max_free_scale(sites, geom["layers"]["act"], S)
    rng = np.random.default_rng(0)

    def feasible(scale):
        return all(free_position(rng, S, side, side, box) is not None
                   for box in [region_box(u, v, geom["layers"]["act"], S, scale)
                               for u, v in zip(sites.u, sites.v)] for side in [box[2] - box[0]])

    assert feasible(best) and not feasible(best + 1 / 20)
    # region_scale null picks the largest scale that works at every site of the 4x4 grid
    grid = pd.DataFrame([(u, v) for u in range(4) for v in range(4)], columns=["u", "v"])
    auto = run_interventions(ColourNet().eval(), "act", psi, patches, dataset, geom,
                             cfg.model_copy(update={"region_scale": None}), "cpu", S, ZERO_MEAN, UNIT_STD)
    assert (auto["status"] == "ok").all()
    assert auto["region_scale"].unique().tolist() == [max_free_scale(grid, geom["layers"]["act"], S)] != [1.0]
    trials2 = run_interventions(ColourNet().eval(), "act", psi, patches, dataset, geom,
                                cfg.model_copy(update={"region_scale": 0.4}), "cpu", S, ZERO_MEAN, UNIT_STD)
    assert (trials2["status"] == "ok").all()


def test_paste_resizes_and_blends():
    img = torch.zeros(3, 16, 16)
    out = paste(img, torch.ones(3, 4, 4), (2, 3, 10, 11))
    assert out[:, 2:10, 3:11].eq(1).all() and out.sum() == 3 * 64 and img.sum() == 0
    soft = paste(img, torch.ones(3, 8, 8), (0, 0, 8, 8), blend_px=2)
    assert soft[0, 4, 4] == 1 and 0 < soft[0, 0, 4] < soft[0, 1, 4] < 1
