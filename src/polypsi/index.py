"""The polysemanticity index in the `index` column (docs/index.md).

index.method "contrast" (default): index = S x contrast - chance, where
- S is the channel's cosine silhouette at K-hat (its clusters are apart in the embedding space),
- contrast is its balanced concept contrast (stats.metrics.concept_contrast): over pairs of
  clusters, weighted by how evenly the top patches' activation splits between them (whatever their number), how clearly both their
  names (naming margin over their best concepts) and their prototypes (cosine distance) differ;
  near 0 when the clusters carry the same names,
- chance is the layer's chance level: the median of S x contrast over the reference null draws
  of its live channels. A null draw clusters a structure-free sample of the channel's own
  patches (same mean and spectrum, no clusters), so a held-out null neuron sits at 0.
It is an effect size (a product of a silhouette and a cosine margin): more patches make it
less noisy; they do not push it towards a bound as a sigmoid of a z-score does.
index.method "psi": the paper's PSI (S_hat x Q_hat x D_hat).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .calibration import dead_rows
from .config import IndexConfig


def raw_index(table: pd.DataFrame) -> pd.Series:
    """S x contrast of the rows of a score or psi table."""
    return table["S"].astype(float) * table["contrast"].astype(float)


def reference_draws(scores: pd.DataFrame, m: int, holdout: bool) -> pd.DataFrame:
    """The null draws that calibrate real channels: 1..M-1 when draw M is held out as a null neuron, else 1..M."""
    last = m - 1 if holdout else m
    return scores[(scores["draw"] >= 1) & (scores["draw"] <= last)]


def index_chance(scores: pd.DataFrame, m: int, holdout: bool, live: np.ndarray) -> float:
    """Median S x contrast of the reference null draws of the live channels (NaN if there are none)."""
    ref = reference_draws(scores, m, holdout)
    values = raw_index(ref[ref["channel"].isin(live)]).to_numpy(float)
    return float(np.median(values)) if len(values) else float("nan")


def add_index(table: pd.DataFrame, chance: float, cfg: IndexConfig) -> pd.DataFrame:
    """`table` (a psi/ or null_psi/ table) with `index_chance` and `index` (NaN for dead channels)."""
    out = table.copy()
    out["index_chance"] = chance
    if cfg.method == "contrast":
        out["index"] = (raw_index(out) - chance).where(~dead_rows(out))
    else:
        out["index"] = out["psi"].astype(float)
    return out
