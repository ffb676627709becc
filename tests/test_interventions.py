"""Patch-swap interventions on a model whose channels are known colour detectors.

The test model is one strided convolution + ReLU: each feature-map site sees exactly one
8x8 cell of a 32x32 image (stride 8, crop 8), and its channels compute, averaged over the cell,
  channel 0: r - 0.5 g - b  (red -> 1, yellow -> 0.5, green/blue/grey -> 0)
  channel 1: g - r - b      (green -> 1)
  channel 2: b - r - g      (blue -> 1)
so the activation after pasting a uniform patch over a site's cell is known in advance, and
changes outside the cell cannot reach the site.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats
from torch import nn

from polypsi.config import InterventionConfig
from polypsi.interventions import (
    CONDITIONS,
    donor_box,
    free_position,
    holm,
    max_free_scale,
    paste,
    plan_trials,
    plot_summary,
    region_box,
    run_interventions,
    select_channels,
    summarize,
)

S, K = 32, 8  # image side, cell side (= stride = crop)
COLOURS = {"red": (1, 0, 0), "yellow": (1, 1, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}
ZERO_MEAN, UNIT_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


class ColourNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=K, stride=K, bias=False)
        w = torch.tensor([[1.0, -0.5, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
        with torch.no_grad():
            self.conv.weight.copy_(w[:, :, None, None].expand(3, 3, K, K) / K**2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


def expected_activation(channel: int, colour: str) -> float:
    w = [[1.0, -0.5, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]][channel]
    return max(0.0, float(np.dot(w, COLOURS[colour])))


GEOMETRY = {"input_size": S, "layers": {"act": {"stride": float(K), "offset": (K - 1) / 2, "crop": K,
                                                "channels": 3, "height": S // K, "width": S // K}}}


def _world(tmp_path):
    """Images with one coloured cell on grey; patches/psi tables as the pipeline would write them."""
    # (colour, u, v) per image; channel 0's top sites are red (cluster 0) then yellow (cluster 1).
    specs = [("red", 1, 1), ("red", 2, 0), ("red", 0, 3), ("red", 3, 2),
             ("yellow", 1, 2), ("yellow", 2, 3), ("yellow", 0, 0),
             ("green", 1, 1), ("green", 3, 3), ("blue", 2, 2), ("blue", 0, 1)]
    rows, patches = [], []
    for i, (colour, u, v) in enumerate(specs):
        arr = np.full((S, S, 3), 128, np.uint8)
        arr[u * K:(u + 1) * K, v * K:(v + 1) * K] = np.array(COLOURS[colour], np.uint8) * 255
        path = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(path)
        rows.append(dict(image_id=i, path=str(path), label=0, class_name="x"))
        for ch in range(3):
            a = expected_activation(ch, colour)
            if a > 0:
                patches.append(dict(channel=ch, image_id=i, u=u, v=v, activation=a, colour=colour,
                                     cluster=int(colour == "yellow"), y0=u * K, x0=v * K, y1=(u + 1) * K,
                                     x1=(v + 1) * K))
    patches = pd.DataFrame(patches).sort_values(["channel", "activation", "image_id"], ascending=[True, False, True])
    patches["rank"] = patches.groupby("channel").cumcount()
    psi = pd.DataFrame(dict(channel=[0, 1, 2], psi=[0.9, 0.5, 0.0], k_hat=[2, 1, 2],
                            status=["ok", "ok", "dead: top activation <= 0"], top_activation=[1.0, 1.0, 1.0]))
    return pd.DataFrame(rows), patches.reset_index(drop=True), psi


def _run(tmp_path, **kw):
    dataset, patches, psi = _world(tmp_path)
    cfg = InterventionConfig(n_channels=3, sites_per_channel=7, batch_size=5, **kw)
    trials = run_interventions(ColourNet().eval(), "act", psi, patches, dataset, GEOMETRY, cfg, "cpu", S,
                               ZERO_MEAN, UNIT_STD)
    return trials, patches


def test_select_channels_skips_and_counts(tmp_path):
    _, patches, psi = _world(tmp_path)
    chosen, skipped = select_channels(psi, patches, 10)
    assert chosen["channel"].tolist() == [0]
    assert skipped == {"status 'dead: top activation <= 0'": 1, "k_hat < 2 (no second cluster for Non-aligned)": 1}


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
    dataset, patches, psi = _world(tmp_path)
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


def test_trials_are_seeded(tmp_path):
    a, _ = _run(tmp_path, seed=3)
    b, _ = _run(tmp_path, seed=3)
    c, _ = _run(tmp_path, seed=4)
    pd.testing.assert_frame_equal(a, b)
    cols = ["donor_image_id", "region_y0", "region_x0"]
    assert not a[cols].equals(c[cols])


def test_no_free_position_is_reported_not_silent(tmp_path):
    dataset, patches, psi = _world(tmp_path)
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


def test_donor_box_keeps_offset_to_site():
    # a corner site whose crop was shifted inside the image: the donor square sits at the same offset
    # from the donor's site centre, so the donor content lands where the replaced content was
    box, shift = donor_box((0, 32, 32, 64), 0, 7, 4, 3, 8.0, 64)
    assert box == (32, 0, 64, 32) and shift == 0
    box, shift = donor_box((8, 8, 40, 40), 3, 3, 7, 6, 8.0, 64)  # would leave the image: shifted back
    assert box == (32, 32, 64, 64) and shift == 8


def test_matched_and_random_donors():
    acts = {0: [1.0, 0.95, 0.7, 0.5, 0.3], 1: [0.9, 0.6, 0.4]}
    rows = []
    for cl, values in acts.items():
        for a in values:
            rows.append(dict(channel=0, cluster=cl, activation=a))
    rows.append(dict(channel=1, cluster=0, activation=2.0))
    rows.append(dict(channel=1, cluster=0, activation=1.2))
    patches = pd.DataFrame(rows).sort_values(["channel", "activation"], ascending=[True, False])
    patches["rank"] = patches.groupby("channel").cumcount()
    patches["image_id"] = np.arange(len(patches))
    patches["u"], patches["v"] = 1, 1
    chosen = pd.DataFrame(dict(channel=[0], psi=[1.0], k_hat=[2], top1_activation=[1.0]))
    cfg = InterventionConfig(sites_per_channel=3, region_scale=1.0)
    plan = plan_trials(chosen, patches, GEOMETRY["layers"]["act"], S, cfg).set_index(["site_rank", "condition"])
    # site rank 0 (1.0, cluster 0): closest other cluster-0 donor 0.95; other cluster 0.9; channel 1 rel 1.0
    assert plan.loc[(0, "Aligned"), "donor_activation"] == 0.95
    assert plan.loc[(0, "Non-aligned"), "donor_activation"] == 0.9
    assert plan.loc[(0, "Random"), "donor_activation"] == 2.0
    assert plan.loc[(0, "Shuffled-position"), "donor_image_id"] == plan.loc[(0, "Aligned"), "donor_image_id"]
    # site rank 2 (0.9, cluster 1): aligned 0.6, non-aligned the closest of cluster 0, i.e. 0.95
    assert plan.loc[(2, "Aligned"), "donor_activation"] == 0.6
    assert plan.loc[(2, "Non-aligned"), "donor_activation"] == 0.95
    seen = set()
    for seed in range(30):
        p = plan_trials(chosen, patches, GEOMETRY["layers"]["act"], S,
                        cfg.model_copy(update={"donor": "random", "seed": seed}))
        seen.add(p.loc[(p.site_rank == 0) & (p.condition == "Aligned"), "donor_activation"].item())
    assert seen == {0.95, 0.7, 0.5, 0.3}


def test_free_position_matches_brute_force():
    rng = np.random.default_rng(0)
    for size, h, avoid in [(32, 8, (8, 8, 16, 16)), (20, 8, (6, 6, 14, 14)), (16, 10, (3, 3, 13, 13))]:
        allowed = {(y, x) for y in range(size - h + 1) for x in range(size - h + 1)
                   if y + h <= avoid[0] or y >= avoid[2] or x + h <= avoid[1] or x >= avoid[3]}
        seen = set()
        for _ in range(300):
            box = free_position(rng, size, h, h, avoid)
            if box is None:
                break
            seen.add(box[:2])
        assert seen <= allowed
        assert (box is None) == (not allowed)
        if len(allowed) < 40:
            assert seen == allowed


def test_paste_resizes_and_blends():
    img = torch.zeros(3, 16, 16)
    out = paste(img, torch.ones(3, 4, 4), (2, 3, 10, 11))
    assert out[:, 2:10, 3:11].eq(1).all() and out.sum() == 3 * 64 and img.sum() == 0
    soft = paste(img, torch.ones(3, 8, 8), (0, 0, 8, 8), blend_px=2)
    assert soft[0, 4, 4] == 1 and 0 < soft[0, 0, 4] < soft[0, 1, 4] < 1


def _random_trials(seed=0, n_channels=4, n_sites=6):
    rng = np.random.default_rng(seed)
    shift = dict(zip(CONDITIONS, [0.2, -0.1, -0.3, 0.0, 0.01]))
    rows = []
    for c in range(n_channels):
        for s in range(n_sites):
            site_effect = rng.normal(0, 0.1)  # shared by a site's trials: pairing removes it
            for cond in CONDITIONS:
                rows.append(dict(channel=c, site_rank=s, condition=cond, status="ok",
                                 delta_norm=shift[cond] + site_effect + rng.normal(0, 0.05)))
    return pd.DataFrame(rows)


def test_summary_against_scipy():
    trials = _random_trials()
    # drop two trials (one Aligned, one Random) as a failed position/donor would
    trials.loc[(trials.condition == "Aligned") & (trials.channel == 1) & (trials.site_rank == 2), "status"] = \
        "no_donor: no donor of the same cluster in another image"
    trials.loc[(trials.condition == "Random") & (trials.channel == 3) & (trials.site_rank == 0), "status"] = \
        "no_donor: no unrelated channel with a patch in another image"
    summary = summarize(trials, confidence=0.9)
    ok = trials[trials.status == "ok"]
    wide = ok.pivot(index=["channel", "site_rank"], columns="condition", values="delta_norm")
    for r in summary.itertuples(index=False):
        x = wide[r.condition].dropna().to_numpy()
        assert r.n == len(x)
        assert r.mean_delta == pytest.approx(x.mean())
        assert r.sem == pytest.approx(stats.sem(x))
        lo, hi = stats.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi))
        if r.condition == "Aligned":
            assert r.n_dropped == 1 and np.isnan(r.pvalue)
            continue
        pair = wide[["Aligned", r.condition]].dropna()
        ref = stats.ttest_rel(pair["Aligned"], pair[r.condition])
        assert r.n_pairs == len(pair) == (22 if r.condition == "Random" else 23)
        assert r.t == pytest.approx(ref.statistic) and r.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=0)
        ci = ref.confidence_interval(0.9)
        assert (r.diff_ci_low, r.diff_ci_high) == pytest.approx((ci.low, ci.high))
        d = pair["Aligned"] - pair[r.condition]
        assert r.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert summary.set_index("condition").loc["Random", "dropped_reasons"] == "no_donor=1"
    p = summary["pvalue"].iloc[1:].tolist()
    assert summary["pvalue_holm"].iloc[1:].tolist() == pytest.approx(holm(p))


def test_summary_channel_unit_against_scipy():
    trials = _random_trials(seed=1, n_channels=5)
    summary = summarize(trials, unit="channel").set_index("condition")
    means = trials.groupby(["channel", "condition"])["delta_norm"].mean().unstack()
    for cond in CONDITIONS[1:]:
        ref = stats.ttest_rel(means["Aligned"], means[cond])
        assert summary.loc[cond, "n_pairs"] == 5
        assert summary.loc[cond, "t"] == pytest.approx(ref.statistic)
        assert summary.loc[cond, "pvalue"] == pytest.approx(ref.pvalue, rel=1e-9, abs=0)
    assert summary.loc["Aligned", "mean_delta"] == pytest.approx(means["Aligned"].mean())


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_plot_writes_png(tmp_path):
    trials = _random_trials()
    plot_summary(summarize(trials), trials, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
