"""Channel choice, squares and donors: the seeded plan, before any forward pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polypsi.config import InterventionConfig
from polypsi.interventions.plan import donor_box, free_position, plan_trials, select_channels

from .worlds import GEOMETRY, S, colour_world


def test_select_channels_skips_and_counts(tmp_path):
    _, patches, psi = colour_world(tmp_path)
    chosen, skipped = select_channels(psi, patches, 10)
    assert chosen["channel"].tolist() == [0]
    # the OR-unit (channel 3, no patches) is not even counted as skipped: it is not a channel
    assert skipped == {"status 'dead: top activation <= 0'": 1, "k_hat < 2 (no second cluster for Non-aligned)": 1}


def test_select_channels_ranks_by_index_not_psi():
    """Highest index first (ties by channel), PSI kept beside it; an OR-unit never, even with patches."""
    psi = pd.DataFrame(dict(channel=[0, 1, 2, 3, 4, 5, 6], index=[0.1, 0.9, -0.2, 0.9, np.nan, 0.5, 8.0],
                            psi=[0.99, 0.1, 0.5, 0.2, 0.7, 0.98, 1.0], k_hat=2,
                            status=["ok", "ok", "ok", "ok", "ok", "low_null_sd:Q", "ok"],
                            unit_kind=["channel"] * 6 + ["or_unit"]))
    patches = pd.DataFrame(dict(channel=np.repeat(np.arange(7), 2), cluster=np.tile([0, 1], 7)))
    chosen, skipped = select_channels(psi, patches, 3)
    assert chosen["channel"].tolist() == [1, 3, 0]
    assert chosen["psi"].tolist() == [0.1, 0.2, 0.99]
    assert skipped == {"status 'low_null_sd:Q'": 1, "no finite index": 1}
    with pytest.raises(ValueError, match=r"lacks columns \['index'\]"):
        select_channels(psi.drop(columns="index"), patches, 3)


def test_plan_carries_index_and_psi(tmp_path):
    _, patches, psi = colour_world(tmp_path)
    chosen, _ = select_channels(psi, patches, 10)
    trials = plan_trials(chosen.assign(top1_activation=1.0), patches, GEOMETRY["layers"]["act"], S,
                         InterventionConfig(sites_per_channel=2, region_scale=1.0))
    assert list(trials.columns[:3]) == ["channel", "index", "psi"]
    assert (trials["index"] == 0.4).all() and (trials["psi"] == 0.9).all()


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


def test_donor_pool_sorts_each_channel_by_rank_with_relative_activations():
    """One sort for the table, a slice per channel: rank order, rel = activation / the channel's top (NaN for a
    channel that never fires), extra columns aligned with their rows, image sets per channel."""
    from polypsi.interventions.plan import _donor_pool, _image_sets, _unrelated_channels

    rng = np.random.default_rng(0)
    n, k = 5, 4
    df = pd.DataFrame({"channel": np.repeat(np.arange(n), k), "rank": np.tile(np.arange(k), n),
                       "image_id": np.arange(n * k) % 7, "u": 0, "v": 0, "cluster": 0,
                       "activation": rng.uniform(1, 2, n * k).astype(np.float32)})
    df.loc[df["channel"] == 3, "activation"] = -1.0
    df["tag"] = [f"{c}-{r}" for c, r in zip(df["channel"], df["rank"])]
    pool = _donor_pool(df.sample(frac=1, random_state=0), extra=("tag",))
    assert list(pool) == list(range(n))
    for c, g in pool.items():
        want = df[df["channel"] == c]
        assert g["rank"].tolist() == list(range(k)) and g["tag"].tolist() == [f"{c}-{r}" for r in range(k)]
        rel = want["activation"].to_numpy() / want["activation"].max()
        if c == 3:
            assert g["rel"].isna().all()
        else:
            np.testing.assert_array_equal(g["rel"].to_numpy(), rel)
    images = _image_sets(pool)
    assert images[0] == {0, 1, 2, 3} and images[1] == {4, 5, 6, 0}
    # channel 0's images {0, 1, 2, 3}: channel 1's {4, 5, 6, 0} shares one, 2's {1, 2, 3, 4} three, 4's {2, 3, 4, 5} two
    assert _unrelated_channels(0, images, live={1, 2, 4}) == [1]
    assert _unrelated_channels(0, images, live={2, 4}) == [4]
