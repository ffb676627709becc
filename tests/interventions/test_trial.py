"""A trial's row of the trial table: fixed columns and types, with or without a donor or a region."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from polypsi.interventions.trial import Donor, Site, Trial, trials_table

# The trial table's columns before the activations (docs/interventions.md, "Trial table").
PLAN_COLUMNS = [
    "channel", "index", "psi", "k_hat", "site_rank", "image_id", "u", "v", "cluster", "site_y0", "site_x0", "site_y1",
    "site_x1", "top1_activation", "activation_mined", "region_scale", "condition", "status", "donor_channel",
    "donor_rank", "donor_image_id", "donor_cluster", "donor_u", "donor_v", "donor_activation", "donor_y0",
    "donor_x0", "donor_y1", "donor_x1", "donor_misalign_px", "fill", "noise_seed", "region_y0", "region_x0",
    "region_y1", "region_x1",
]

SITE = Site(channel=3, index=0.25, psi=0.7, k_hat=2, rank=1, image_id=9, u=1, v=2, cluster=0, box=(8, 16, 16, 24),
            top1_activation=2.0, activation_mined=1.5)
DONOR = Donor(channel=3, rank=4, image_id=5, cluster=0, u=2, v=2, activation=1.2, box=(16, 16, 24, 24), misalign_px=0)


def test_row_without_donor_or_region_keeps_column_types():
    row = Trial(SITE, "Shuffled-position", 1.0, noise_seed=7, status="no_donor: none").row()
    assert list(row) == PLAN_COLUMNS
    assert [row[f"donor_{k}"] for k in ("channel", "rank", "image_id", "cluster", "u", "v")] == [-1] * 6
    assert [row[f"donor_{k}"] for k in ("y0", "x0", "y1", "x1")] == [-1] * 4
    assert [row[f"region_{k}"] for k in ("y0", "x0", "y1", "x1")] == [-1] * 4
    assert np.isnan(row["donor_activation"]) and row["donor_misalign_px"] == 0 and row["fill"] == ""


def test_table_of_mixed_trials_has_integer_donor_columns():
    trials = [
        Trial(SITE, "Aligned", 1.0, 7, region=SITE.box, donor=DONOR),
        Trial(SITE, "Ablate-elsewhere", 1.0, 7, region=(0, 0, 8, 8), fill="mean"),
        Trial(replace(SITE, activation_mined=None), "Random", 1.0, 7, status="no_donor: none"),
    ]
    table = trials_table(trials)
    assert list(table.columns) == PLAN_COLUMNS
    assert table["donor_image_id"].tolist() == [5, -1, -1] and table["donor_image_id"].dtype == np.int64
    assert table["region_y0"].tolist() == [8, 0, -1] and table["region_y0"].dtype == np.int64
    assert table["fill"].tolist() == ["", "mean", ""]
    assert table["donor_activation"].dtype == np.float64 and np.isnan(table["donor_activation"].iloc[1])
    assert table["activation_mined"].dtype == np.float64 and np.isnan(table["activation_mined"].iloc[2])
