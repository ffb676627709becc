"""Test worlds: a model whose channels are known colour detectors with the tables the pipeline would
give it, and random trial tables with known condition shifts.

The model is one strided convolution + ReLU: each feature-map site sees exactly one
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
import torch
from PIL import Image
from torch import nn

from polypsi.interventions.trial import CONDITIONS

S, K = 32, 8  # image side, cell side (= stride = crop)
COLOURS = {"red": (1, 0, 0), "yellow": (1, 1, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}
ZERO_MEAN, UNIT_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
WEIGHTS = [[1.0, -0.5, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]


class ColourNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=K, stride=K, bias=False)
        w = torch.tensor(WEIGHTS)
        with torch.no_grad():
            self.conv.weight.copy_(w[:, :, None, None].expand(3, 3, K, K) / K**2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


def expected_activation(channel: int, colour: str) -> float:
    return max(0.0, float(np.dot(WEIGHTS[channel], COLOURS[colour])))


GEOMETRY = {"input_size": S, "layers": {"act": {"stride": float(K), "offset": (K - 1) / 2, "crop": K,
                                                "channels": 3, "height": S // K, "width": S // K}}}


def colour_world(folder):
    """Images with one coloured cell on grey; (dataset, patches, psi) tables as the pipeline would write them."""
    # (colour, u, v) per image; channel 0's top sites are red (cluster 0) then yellow (cluster 1).
    specs = [("red", 1, 1), ("red", 2, 0), ("red", 0, 3), ("red", 3, 2),
             ("yellow", 1, 2), ("yellow", 2, 3), ("yellow", 0, 0),
             ("green", 1, 1), ("green", 3, 3), ("blue", 2, 2), ("blue", 0, 1)]
    rows, patches = [], []
    for i, (colour, u, v) in enumerate(specs):
        arr = np.full((S, S, 3), 128, np.uint8)
        arr[u * K:(u + 1) * K, v * K:(v + 1) * K] = np.array(COLOURS[colour], np.uint8) * 255
        path = folder / f"img{i}.png"
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
    # Channel 3 is an OR-unit (a synthetic validation row): highest index, eligible by every other test,
    # but never chosen nor a Random donor.
    psi = pd.DataFrame(dict(channel=[0, 1, 2, 3], index=[0.4, 0.7, np.nan, 5.0], psi=[0.9, 0.5, 0.0, 1.0],
                            k_hat=[2, 1, 2, 2], status=["ok", "ok", "dead: top activation <= 0", "ok"],
                            top_activation=[1.0, 1.0, 1.0, 1.0], unit_kind=["channel"] * 3 + ["or_unit"]))
    return pd.DataFrame(rows), patches.reset_index(drop=True), psi


def random_trials(seed=0, n_channels=4, n_sites=6):
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
