"""One trial: what is pasted where at one site of one channel, and its row of the trial table.

The planner (plan.py) makes trials, the runner (run.py) builds their images and measures them.
The trial table keeps fixed column types whether or not a trial has a donor or a region, so a
missing one is written as -1 in its integer columns, NaN in its float ones and "" for no fill
(docs/interventions.md lists the columns); the records here use None instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

CONDITIONS = ("Aligned", "Non-aligned", "Random", "Shuffled-position", "Ablate-elsewhere")
INSERT_CONDITIONS = ("Cluster", "Random", "Off-RF", "Ablate")  # the insertion protocol's, in table order
OK = "ok"

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 in input pixels
NO_BOX: Box = (-1, -1, -1, -1)


@dataclass(frozen=True)
class Site:
    """A top site (image, u, v) of a chosen channel, shared by its five trials."""

    channel: int
    index: float  # the channel's polysemanticity index (the channels are chosen by it)
    psi: float
    k_hat: int
    rank: int
    image_id: int
    u: int
    v: int
    cluster: int
    box: Box  # the replaced square (the crop, or a scaled square on its centre)
    top1_activation: float  # the channel's largest activation: the delta's normaliser
    activation_mined: Optional[float] = None  # None when the patches table has no activations


@dataclass(frozen=True)
class Donor:
    """A patch of another image whose content is pasted: one of the top patches of `channel`."""

    channel: int
    rank: int
    image_id: int
    cluster: int
    u: int
    v: int
    activation: Optional[float]  # its mined activation in its own channel; None when unknown
    box: Box  # the square cut from the donor image
    misalign_px: int  # how far `box` was shifted back inside the donor image


@dataclass
class Trial:
    """One (site, condition): paste `donor`'s square or a `fill` over `region`, or say in `status` why not."""

    site: Site
    condition: str
    region_scale: float
    noise_seed: int  # seeds the noise fill (drawn for every site, whatever the fill)
    region: Optional[Box] = None  # the square changed; None: no free square for an elsewhere control
    donor: Optional[Donor] = None  # None for the fill, or when no donor exists
    fill: Optional[str] = None  # Ablate-elsewhere: mean, zero or noise
    status: str = OK

    def row(self) -> dict:
        """The trial's columns of the trial table, in table order."""
        s, d = self.site, self.donor
        donor_ids = (-1,) * 6 if d is None else (d.channel, d.rank, d.image_id, d.cluster, d.u, d.v)
        donor_box = NO_BOX if d is None else d.box
        region = NO_BOX if self.region is None else self.region
        return dict(
            channel=s.channel, index=s.index, psi=s.psi, k_hat=s.k_hat, site_rank=s.rank, image_id=s.image_id,
            u=s.u, v=s.v,
            cluster=s.cluster, site_y0=s.box[0], site_x0=s.box[1], site_y1=s.box[2], site_x1=s.box[3],
            top1_activation=s.top1_activation, activation_mined=_float(s.activation_mined),
            region_scale=self.region_scale, condition=self.condition, status=self.status,
            donor_channel=donor_ids[0], donor_rank=donor_ids[1], donor_image_id=donor_ids[2],
            donor_cluster=donor_ids[3], donor_u=donor_ids[4], donor_v=donor_ids[5],
            donor_activation=np.nan if d is None else _float(d.activation),
            donor_y0=donor_box[0], donor_x0=donor_box[1], donor_y1=donor_box[2], donor_x1=donor_box[3],
            donor_misalign_px=0 if d is None else d.misalign_px, fill=self.fill or "", noise_seed=self.noise_seed,
            region_y0=region[0], region_x0=region[1], region_y1=region[2], region_x1=region[3],
        )


def _float(x: Optional[float]) -> float:
    return np.nan if x is None else x


def trials_table(trials: list[Trial]) -> pd.DataFrame:
    """One row per trial, in the order given (no trials: the same columns and types, no rows)."""
    if not trials:
        site = Site(0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, NO_BOX, 1.0, 0.0)
        return pd.DataFrame([Trial(site, CONDITIONS[0], 1.0, 0).row()]).iloc[0:0].reset_index(drop=True)
    return pd.DataFrame([t.row() for t in trials])
