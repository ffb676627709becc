"""Batched k-means on Gram matrices: many channels, null draws, restarts and K' at once.

With K = 50 patches per channel every k-means quantity is a function of the K x K Gram
matrix G = Z Z^T: for a cluster with indicator a, the summed member vector s has
x_i . s = (G a)_i and |s|^2 = a^T G a. One batched matmul G @ A, with the indicators of
every restart and every K' side by side in A, therefore runs one Lloyd step for all of
them, and the cost no longer depends on the embedding dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .metrics import cosine_distances, silhouette_distances
from .nulls import n_local_trials


def _gather_rows(D2: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """D2 [U, R, K, K] (expanded), idx [U, R, L] -> rows D2[u, r, idx] as [U, R, L, K]."""
    U, R, K, _ = D2.shape
    return D2.gather(2, idx.unsqueeze(-1).expand(U, R, idx.shape[-1], K))


def sq_distances(G: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [U, K, K] from Gram matrices (clipped at 0): (G_ii + G_jj) - 2 G_ij."""
    diag = G.diagonal(dim1=1, dim2=2)
    # In place: fresh K x K buffers per operation cost more than the arithmetic at large K. 2 G_ij is
    # exact, so subtracting it fused (alpha=2) rounds as the separate product and difference did.
    return (diag.unsqueeze(2) + diag.unsqueeze(1)).sub_(G, alpha=2).clamp_min_(0)


def kmeanspp(G: torch.Tensor, k: int, u: torch.Tensor, D2: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (scikit-learn's variant) for R restarts: initial labels [U, R, K].

    u: [U, R, k_max, trials + 1] uniforms; step 0 uses u[..., 0, 0], step t uses u[..., t, 1:].
    D2: sq_distances(G), when the caller seeds several K' from one matrix.
    """
    U, K, _ = G.shape
    R = u.shape[1]
    D2 = (sq_distances(G) if D2 is None else D2).unsqueeze(1).expand(U, R, K, K)
    first = (u[:, :, 0, 0] * K).long().clamp_max(K - 1)
    closest = _gather_rows(D2, first.unsqueeze(-1)).squeeze(2)  # [U, R, K]
    centers = [first]
    L = n_local_trials(k)
    for t in range(1, k):
        pot = closest.sum(-1, keepdim=True)
        cand = torch.searchsorted(closest.cumsum(-1).contiguous(), (u[:, :, t, 1 : 1 + L] * pot).contiguous())
        cand = cand.clamp_max(K - 1)
        trial = torch.minimum(_gather_rows(D2, cand), closest.unsqueeze(2))  # [U, R, L, K]
        best = trial.sum(-1).argmin(-1)  # candidate that lowers the potential most
        closest = trial.gather(2, best.view(U, R, 1, 1).expand(U, R, 1, K)).squeeze(2)
        centers.append(cand.gather(2, best.unsqueeze(-1)).squeeze(-1))
    c = torch.stack(centers, -1)  # [U, R, k]
    return D2.gather(3, c.unsqueeze(2).expand(U, R, K, k)).argmin(-1)


class _Layout:
    """Column layout of the side-by-side indicator matrix.

    Labels are kept point-major, [U, K, B] with one column b = (K' index a, restart r) per
    partition; cluster j of partition b is column off[a] + r * k_a + j of A [U, K, C].
    """

    def __init__(self, ks: list[int], R: int, device):
        self.ks, self.R = ks, R
        self.off = [0]
        for k in ks:
            self.off.append(self.off[-1] + R * k)
        self.C = self.off[-1]
        self.base = torch.tensor([self.off[a] + r * k for a, k in enumerate(ks) for r in range(R)], device=device)

    def columns(self, lab: torch.Tensor) -> torch.Tensor:
        """lab [U, K, B] -> column of A of each point in each partition, [U, K, B]."""
        return lab + self.base

    def blocks(self, x: torch.Tensor):
        """Yield (a, k, view [..., R, k]) of the last dimension of x (length C)."""
        for a, k in enumerate(self.ks):
            yield a, k, x[..., self.off[a] : self.off[a + 1]].unflatten(-1, (self.R, k))


def _stats(G: torch.Tensor, col: torch.Tensor, C: int):
    """x_i . s_j [U, K, C], cluster sizes n_j and |s_j|^2 [U, C] for the partitions given by col."""
    U, K, _ = G.shape
    A = torch.zeros(U, K, C, device=G.device, dtype=G.dtype).scatter_(2, col, 1.0)
    GA = torch.bmm(G, A)
    flat = col.reshape(U, -1)
    n = torch.zeros(U, C, device=G.device, dtype=G.dtype).scatter_add_(1, flat, torch.ones_like(flat, dtype=G.dtype))
    ss = torch.zeros_like(n).scatter_add_(1, flat, GA.gather(2, col).reshape(U, -1))
    return GA, n, ss


def _lloyd_step(G: torch.Tensor, lab: torch.Tensor, lay: _Layout, spherical: bool) -> torch.Tensor:
    """One assignment step for every (unit, K', restart): new labels [U, K, B]."""
    GA, n, ss = _stats(G, lay.columns(lab), lay.C)
    n, ss = n.unsqueeze(1), ss.unsqueeze(1)
    if spherical:  # cosine to the centroid's direction
        score = GA * ss.clamp_min(1e-30).rsqrt()
    else:  # minus squared Euclidean distance to the centroid, up to |x_i|^2
        inv = 1.0 / n.clamp_min(1)
        score = GA * (2 * inv) - ss * inv * inv
    empty = n == 0
    if empty.any():
        score = score.masked_fill(empty, float("-inf"))
    new = torch.empty_like(lab)
    R = lay.R
    for a, k, sc in lay.blocks(score):  # sc [U, K, R, k]
        new[:, :, a * R : (a + 1) * R] = sc.max(-1).indices  # first maximum on ties
    U, K, B = new.shape
    counts = torch.zeros(U, lay.C, device=G.device, dtype=torch.int32)
    counts.scatter_add_(1, lay.columns(new).reshape(U, -1), torch.ones(U, K * B, device=G.device, dtype=torch.int32))
    if (counts == 0).any():
        for a, k, sc in lay.blocks(score):
            _fill_empty(new[:, :, a * R : (a + 1) * R], sc, k)
    return new


def _fill_empty(lab: torch.Tensor, score: torch.Tensor, k: int) -> None:
    """Give each empty cluster the worst-fitting point of a cluster with >1 members (in place).

    lab: [U, K, R] (a view into the label tensor); score: [U, K, R, k] each point's score to each centroid.
    """
    U, K, R = lab.shape
    counts = torch.zeros(U, R, k, dtype=torch.long, device=lab.device)
    counts.scatter_add_(2, lab.transpose(1, 2), torch.ones(U, R, K, dtype=torch.long, device=lab.device))
    if not (counts == 0).any():
        return
    own = score.gather(-1, lab.unsqueeze(-1)).squeeze(-1).clone()  # [U, K, R]
    for j in range(k):
        empty = counts[..., j] == 0
        if not empty.any():
            continue
        own_count = counts.gather(2, lab.transpose(1, 2)).transpose(1, 2)  # [U, K, R]
        worst = own.masked_fill(own_count <= 1, float("inf")).argmin(1)  # [U, R]
        u, r = empty.nonzero(as_tuple=True)
        p = worst[u, r]
        old = lab[u, p, r]
        counts[u, r, old] -= 1
        counts[u, r, j] += 1
        lab[u, p, r] = j
        own[u, p, r] = float("inf")


def objective(G: torch.Tensor, lab: torch.Tensor, lay: _Layout, spherical: bool) -> torch.Tensor:
    """Quality of each (unit, K', restart) partition [U, nk, R] from labels [U, K, B]; higher is better.

    spherical: summed cosine of points to their centroid direction (sum_j |s_j|);
    euclidean: minus the inertia (sum_i |x_i|^2 - sum_j |s_j|^2 / n_j).
    """
    _, n, ss = _stats(G, lay.columns(lab), lay.C)
    per = ss.clamp_min(0).sqrt() if spherical else ss / n.clamp_min(1)
    out = torch.stack([v.sum(-1) for _, _, v in lay.blocks(per)], 1)  # [U, nk, R]
    if not spherical:
        out = out - G.diagonal(dim1=1, dim2=2).sum(-1).view(-1, 1, 1)
    return out


@dataclass
class SearchResult:
    labels: torch.Tensor  # [U, nk, K] best restart's labels for each K'
    silhouette: torch.Tensor  # [U, nk] mean cosine silhouette for each K'
    samples: torch.Tensor  # [U, nk, K] per-point silhouettes
    objective: torch.Tensor  # [U, nk] k-means objective of the kept restart
    n_iter: int


def _lloyd_points(G: torch.Tensor, lab: torch.Tensor, lay: _Layout, max_iter: int, spherical: bool):
    lab = lab.contiguous()
    out = lab.clone()
    act = torch.arange(len(G), device=G.device)
    G_act, lab_act = G, lab
    it = 0
    for it in range(1, max_iter + 1):
        new = _lloyd_step(G_act, lab_act, lay, spherical)
        changed = (new != lab_act).flatten(1).any(1)
        out[act] = new
        if not changed.any():
            break
        if changed.sum() < 0.8 * len(act):  # drop converged units once enough have finished
            act, G_act, new = act[changed], G_act[changed], new[changed]
        lab_act = new
    return out, it


def lloyd(G: torch.Tensor, lab: torch.Tensor, ks: list[int], *, max_iter: int, spherical: bool):
    """Lloyd iterations from labels [U, nk, R, K] until no label changes (or max_iter): (labels, iterations).

    A unit whose restarts all reached a fixed point is frozen and dropped from the batch,
    so its result does not depend on the other units of the batch.
    """
    U, nk, R, K = lab.shape
    lay = _Layout(ks, R, G.device)
    out, it = _lloyd_points(G, lab.permute(0, 3, 1, 2).reshape(U, K, nk * R), lay, max_iter, spherical)
    return out.view(U, K, nk, R).permute(0, 2, 3, 1), it


def cluster_search(
    G: torch.Tensor, u: torch.Tensor, ks: list[int], *, max_iter: int, spherical: bool = True
) -> SearchResult:
    """k-means for every K' in ks with R restarts each, keep the best restart, score it.

    G: [U, K, K] Gram matrices of unit vectors; u: [U, len(ks), R, k_max, trials + 1] uniforms.
    """
    U, K, _ = G.shape
    R, nk = u.shape[2], len(ks)
    lay = _Layout(ks, R, G.device)
    # Once for every K'. Seeding reads only some rows, but building just those (R restarts x L trials per
    # step) measured no faster than the whole K x K matrix up to K = 200.
    D2 = sq_distances(G)
    init = torch.cat([kmeanspp(G, k, u[:, a], D2).transpose(1, 2) for a, k in enumerate(ks)], 2)  # [U, K, B]
    out, it = _lloyd_points(G, init, lay, max_iter, spherical)
    obj = objective(G, out, lay, spherical)  # [U, nk, R]
    best = obj.argmax(-1)  # first best restart on ties
    labels = out.view(U, K, nk, R).gather(3, best.view(U, 1, nk, 1).expand(U, K, nk, 1)).squeeze(3).transpose(1, 2)
    sil, samples = [], []
    D = cosine_distances(G)  # the K^2 distances, once for every K'
    for a, k in enumerate(ks):
        m, s = silhouette_distances(D, labels[:, a].contiguous(), k)
        sil.append(m)
        samples.append(s)
    return SearchResult(
        labels=labels,
        silhouette=torch.stack(sil, 1),
        samples=torch.stack(samples, 1),
        objective=obj.gather(2, best.unsqueeze(-1)).squeeze(-1),
        n_iter=it,
    )
