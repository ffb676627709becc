"""Scores of units on their neuron embeddings (Foote 2024), beside the embedder's (docs/neuron_embeddings.md).

The same clustering as the embedder's view (k-means over K' = k_min..k_max, the K' of the best cosine
silhouette, the same restarts and seeds as the unit's real draw), on the unit's neuron embeddings:
- ne_S, ne_k_hat: the silhouette at the chosen K' and K' itself;
- ne_Q: NMI of those clusters with the patches' image classes (Q on the model's own view);
- ne_ari: adjusted Rand index between those clusters and the embedder's (1: both views split the
  patches alike; about 0: unrelated splits);
- foote_k: Foote's count of feature clusters, the connected components of the graph joining two
  examples whose neuron embeddings' cosine exceeds `threshold` (stats.peers.foote_components).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..config import StatsConfig
from .batched import _normalise, _real
from .metrics import adjusted_rand, dense_labels, nmi
from .nulls import kmeans_uniforms, unit_rng
from .peers import foote_components

NEURON_COLUMNS = ["ne_S", "ne_k_hat", "ne_Q", "ne_ari", "foote_k"]
FOOTE_VALUES = 1 << 22  # embedding values per Foote chunk (32 MB in float64; its copies are per chunk too)


def neuron_scores(Z: np.ndarray, labels: np.ndarray, clip_clusters: np.ndarray, units: np.ndarray, *,
                  stats: StatsConfig, seed: int, layer: str, threshold: float,
                  chunk: int = 256) -> tuple[pd.DataFrame, np.ndarray]:
    """(table with `channel` and NEURON_COLUMNS, neuron-embedding cluster of each patch [n, K]).

    Z [n, K, d] neuron embeddings in rank order; labels [n, K] the patches' image classes;
    clip_clusters [n, K] the embedder-view clusters; units [n] channel (or OR-unit) ids, which seed
    the k-means restarts as the real draw does. A unit whose embeddings are all zero (a channel whose
    weights are zero) gets NaN scores and cluster -1.
    """
    Z = np.asarray(Z)  # float32 stays float32: float64 copies are made per chunk below
    n, K, d = Z.shape
    ks = list(range(stats.k_min, stats.k_max + 1))
    S, k_hat, assign = np.full(n, np.nan), np.zeros(n, np.int64), np.full((n, K), -1, np.int64)
    # Float64 a chunk at a time: a layer whose last convolution is 3x3 has d = 9 x its input channels
    # (4,608 for ResNet-18's layer4), and a float64 copy of every unit's embeddings would be GBs.
    live = ((Z != 0).any(-1) & ~np.isnan(Z).any(-1)).all(1)  # every example's norm > 0
    idx = np.flatnonzero(live)
    for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        Zc = _normalise(torch.from_numpy(np.asarray(Z[part], dtype=np.float64)))
        G = torch.bmm(Zc, Zc.transpose(1, 2))
        unif = np.stack([kmeans_uniforms(unit_rng(seed, layer, int(units[i]), 0), len(ks), stats.n_init,
                                         stats.k_max) for i in part])
        real = _real(Zc, G, torch.from_numpy(unif).to(Zc.dtype), stats, ks)
        S[part], k_hat[part] = real.S, real.k_hat
        assign[part] = real.labels.cpu().numpy()
    Q = np.full(n, np.nan)
    if len(idx):
        Q[idx] = nmi(dense_labels(np.asarray(labels)[idx]), assign[idx])
    ari = np.full(n, np.nan)
    if len(idx):
        ari[idx] = adjusted_rand(dense_labels(np.asarray(clip_clusters)[idx]), assign[idx])
    foote, per = np.full(n, np.nan), max(1, FOOTE_VALUES // max(1, K * d))
    for i in range(0, n, per):
        foote[i:i + per] = foote_components(Z[i:i + per], threshold)[0]
    foote[~live] = np.nan
    table = pd.DataFrame({"channel": np.asarray(units, dtype=np.int64), "ne_S": S,
                          "ne_k_hat": np.where(live, k_hat, 0), "ne_Q": Q, "ne_ari": ari, "foote_k": foote})
    return table, assign
