"""Batched S, Q and D ingredients: cosine silhouette from Gram matrices, NMI, purity gaps."""

from __future__ import annotations

import numpy as np
import torch


def cosine_distances(G: torch.Tensor) -> torch.Tensor:
    """1 - cosine from a Gram matrix of unit vectors, clipped to [0, 2] with a zero diagonal (as scikit-learn)."""
    D = (1.0 - G).clamp_(0.0, 2.0)
    D.diagonal(dim1=-2, dim2=-1).zero_()
    return D


def silhouette_gram(G: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cosine silhouette [U] and per-point silhouettes [U, K] of partitions of unit vectors.

    G: [U, K, K] Gram matrices; labels: [U, K] in 0..k-1. Same conventions as
    sklearn.metrics.silhouette_samples: a point alone in its cluster scores 0.
    """
    return silhouette_distances(cosine_distances(G), labels, k)


def silhouette_distances(D: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """silhouette_gram from the distance matrices D = cosine_distances(G), which several k can share."""
    A = torch.nn.functional.one_hot(labels, k).to(D.dtype)  # [U, K, k]
    DA = torch.bmm(D, A)  # summed distance of each point to each cluster
    n = A.sum(1)  # [U, k]
    own_n = n.gather(1, labels)  # [U, K]
    a = DA.gather(2, labels.unsqueeze(-1)).squeeze(-1) / (own_n - 1).clamp_min(1)
    mean_to = DA / n.unsqueeze(1)  # inf/nan for empty clusters, masked below
    mask = A.bool() | (n == 0).unsqueeze(1)
    b = mean_to.masked_fill(mask, float("inf")).amin(-1)
    s = (b - a) / torch.maximum(a, b)
    s = torch.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    s = s.masked_fill(own_n <= 1, 0.0)
    return s.mean(-1), s


def nmi(y: np.ndarray, l: np.ndarray) -> np.ndarray:
    """Arithmetic NMI of label rows y [N, K] and cluster rows l [N, K] (natural log), as scikit-learn.

    Both hold small non-negative integers (e.g. class index per row, cluster id). Each row's value
    depends on that row alone, bit for bit: its non-empty cells are summed in (label, cluster)
    order, so splitting channels or draws into other batches cannot change a float sum.
    """
    y, l, rows, cy, cl = _label_rows(y, l)
    N, K = y.shape
    if N == 0:
        return np.zeros(0)
    # Integer counts are exact whatever the batch; only the non-empty cells enter the float sums.
    ny, nl = _row_counts(y, rows, cy, N), _row_counts(l, rows, cl, N)
    cells, n = np.unique((rows * cy + y.ravel()) * cl + l.ravel(), return_counts=True)  # sorted: row, label, cluster
    r, yy, ll = cells // (cy * cl), (cells // cl) % cy, cells % cl
    p = n / K
    ratio = p / ((ny[r * cy + yy] / K) * (nl[r * cl + ll] / K))
    # bincount adds its weights one by one in input order: a row's sum sees only its own cells
    mi = np.clip(np.bincount(r, weights=p * np.log(ratio), minlength=N), 0.0, None)
    hy, n_y = _row_entropy(ny, N, cy, K)
    hl, n_l = _row_entropy(nl, N, cl, K)
    # Rounding can put a perfect match a few ulp above 1; NMI is bounded by 1.
    out = np.minimum(mi / np.maximum((hy + hl) / 2.0, np.finfo(np.float64).eps), 1.0)
    out[mi == 0] = 0.0
    out[(n_y == 1) & (n_l == 1)] = 1.0  # two constant labelings agree perfectly
    return out


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Adjusted Rand index [N] of label rows a [N, K] and b [N, K], as scikit-learn's `adjusted_rand_score`.

    Labels are non-negative integers. The pair counts are integers, as in scikit-learn's pair
    confusion matrix, and enter the same float expression, so each row's value is the same to the bit.
    """
    a, b, rows, ca, cb = _label_rows(a, b)
    N, K = a.shape
    if N == 0:
        return np.zeros(0)
    cells = _row_counts(a * cb + b, rows, ca * cb, N).reshape(N, ca * cb)
    na, nb = _row_counts(a, rows, ca, N).reshape(N, ca), _row_counts(b, rows, cb, N).reshape(N, cb)
    same = (cells ** 2).sum(1)
    tp = same - K  # ordered pairs together in both
    fp = (nb ** 2).sum(1) - same  # together in b only
    fn = (na ** 2).sum(1) - same  # together in a only
    tn = K * K - tp - fp - fn - K
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    out[(fn == 0) & (fp == 0)] = 1.0  # the same partition (scikit-learn's special case)
    return out


def _label_rows(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Two label arrays [N, K] as int64, the row of each of their flattened entries, and each one's label count."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    rows = np.repeat(np.arange(a.shape[0]), a.shape[1])
    return a, b, rows, int(a.max(initial=-1)) + 1, int(b.max(initial=-1)) + 1


def _row_counts(labels: np.ndarray, rows: np.ndarray, c: int, N: int) -> np.ndarray:
    """Flat counts [N * c] of each row's labels (0..c-1)."""
    return np.bincount(rows * c + labels.ravel(), minlength=N * c)


def _row_entropy(counts: np.ndarray, N: int, c: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Entropy [N] of each row's labels from flat counts [N * c], summed over its non-empty labels in order."""
    idx = np.flatnonzero(counts)
    p = counts[idx] / K
    rows = idx // c
    return np.bincount(rows, weights=-(p * np.log(p)), minlength=N), np.bincount(rows, minlength=N)


def dense_labels(y: np.ndarray) -> np.ndarray:
    """Map each row's arbitrary class ids to 0..C-1 (row-wise)."""
    out = np.empty_like(y, dtype=np.int64)
    for i, row in enumerate(np.asarray(y)):
        out[i] = np.unique(row, return_inverse=True)[1].reshape(-1)
    return out


def top2_gaps(
    sims: torch.Tensor, valid: torch.Tensor, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cluster purity gap from similarities [U, k, n] to n candidates.

    valid: [U, k] which cluster slots exist; allowed: optional [U, n] candidate mask.
    Returns (D [U] = mean gap over valid clusters, gap [U, k], top-2 indices [U, k, 2], top-1 similarity [U, k]).
    """
    if allowed is not None:
        sims = sims.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    top, idx = sims.topk(2, dim=-1)
    gap = (top[..., 0] - top[..., 1]).masked_fill(~valid, 0.0)
    D = gap.sum(-1) / valid.sum(-1).clamp_min(1)
    return D, gap, idx, top[..., 0]


def canonical_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Renumber clusters by size (largest first), ties by their smallest member index."""
    U, K = labels.shape
    A = torch.nn.functional.one_hot(labels, k)
    size = A.sum(1)  # [U, k]
    pos = torch.arange(K, device=labels.device).view(1, K, 1).expand(U, K, k)
    first = torch.where(A.bool(), pos, torch.full_like(pos, K)).amin(1)  # [U, k]
    key = (K - size) * (K + 1) + first  # small key = big cluster, then early member
    order = key.argsort(-1)  # new id -> old id
    rank = order.argsort(-1)  # old id -> new id
    return rank.gather(1, labels)


NAMES_COMPARED = 3  # best concepts of each cluster that the naming margin compares


def activation_weights(act: np.ndarray) -> np.ndarray:
    """Per-patch weights [n, K] of a cluster's share: each patch's activation relative to its channel's top one.

    act: [n, K] activations of each channel's top patches. Weights are act / max(act), clipped at 0;
    a channel whose top activation is not positive (dead) weighs every patch 1, as counting does.
    """
    act = np.asarray(act, dtype=np.float64)
    top = act.max(axis=-1, keepdims=True)
    live = top > 0
    return np.where(live, np.clip(act / np.where(live, top, 1.0), 0.0, None), 1.0)


def concept_contrast(sims: torch.Tensor, proto: torch.Tensor, sizes: torch.Tensor,
                     mass: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced concept contrast [U] and effective number of named concepts [U] of clusterings.

    sims: [U, k, C] cosine of each cluster prototype to each concept (templates averaged);
    proto: [U, k, d] unit cluster prototypes; sizes: [U, k] cluster sizes (0 for absent slots);
    mass: [U, k] the clusters' summed patch weights (activation_weights), which give the shares w
    (default: the sizes, i.e. shares by count).
    Two clusters are different concepts when both what they are named after and what they look
    like differ:
    - naming margin M_ij = (max_c (sims[i, c] - sims[j, c]) + max_c (sims[j, c] - sims[i, c])) / 2,
      c over the union of both clusters' NAMES_COMPARED best concepts: each cluster matches one of
      its own best names better than the other cluster does. It is 0 for identical name profiles
      and for profiles that differ by a constant (context that lowers or raises every name alike),
      small for one concept seen in two contexts, large for two concepts; it varies continuously
      (no atom at 0 in the index's null distribution, whose median is the chance level); and
      comparing only the clusters' own best names keeps a large vocabulary's many irrelevant
      concepts from adding noise to it;
    - prototype distance 1 - cos(p_i, p_j).
    contrast = sum over ordered pairs i != j of w_i w_j sqrt(M_ij (1 - cos(p_i, p_j))) / (1 - 1/k), with w
    the shares of the k clusters: a share-weighted mean of the pairs' contrast times the evenness of the
    split (Gini-Simpson 1 - sum w^2 over its maximum 1 - 1/k), so a 47/3 split weighs 0.23 of a 25/25
    one, and splitting one concept into more clusters earns nothing by their number alone. Shares by
    activation mass count what each mode contributes to the channel's response: a weakly activating
    mode that a large K reaches into (patches far below the top activation) weighs little.
    Effective concepts: 1 / sum_g s_g^2 over the shares s_g of clusters merged by their best concept
    (1 for one name or a negligible second one, 2 for two balanced names).
    """
    mass = (sizes if mass is None else mass).to(sims.dtype)
    w = mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)
    n_clusters = (sizes > 0).sum(-1).to(sims.dtype)
    U, k, C = sims.shape
    best = sims.topk(min(NAMES_COMPARED, C), dim=-1).indices  # [U, k, r]
    both = torch.cat([best.unsqueeze(2).expand(-1, -1, k, -1), best.unsqueeze(1).expand(-1, k, -1, -1)], -1)
    s_i = sims.unsqueeze(2).expand(-1, -1, k, -1).gather(-1, both)  # [U, i, j, 2r] sims[i, c]
    s_j = sims.unsqueeze(1).expand(-1, k, -1, -1).gather(-1, both)  # sims[j, c]
    margin = ((s_i - s_j).amax(-1) + (s_j - s_i).amax(-1)) / 2
    distance = (1.0 - torch.bmm(proto, proto.transpose(1, 2)).to(sims.dtype)).clamp_min(0.0)
    pair = w.unsqueeze(-1) * w.unsqueeze(1)
    pair = pair * (1.0 - torch.eye(sims.shape[1], dtype=sims.dtype, device=sims.device))
    evenness_max = 1.0 - 1.0 / n_clusters.clamp_min(2.0)  # one cluster: no pair, contrast 0
    contrast = (pair * (margin.clamp_min(0.0) * distance).sqrt()).sum((1, 2)) / evenness_max
    name = sims.argmax(-1)  # [U, k]
    shares = torch.zeros_like(sims).scatter_add_(-1, name.unsqueeze(-1), w.unsqueeze(-1)).sum(1)  # [U, C]
    effective = 1.0 / (shares**2).sum(-1).clamp_min(1e-12)
    return contrast, effective
