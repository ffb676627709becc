"""Raw S, Q, D of channels (draw 0) and of their null draws (draws 1..M), batched in torch (stats.backend: torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..config import NullConfig, StatsConfig
from .kmeans import cluster_search
from .metrics import canonical_labels, concept_contrast, dense_labels, nmi, top2_gaps
from .nulls import TANGENT_MIN_COS, NullDraw, helmert_basis, kmeans_uniforms, mixing_matrices, null_draw, unit_rng
from .table import rows_to_frame
from .text import TextBank

def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class _Real:
    """The real clustering of a chunk of channels at K-hat."""

    S: np.ndarray
    k_hat: np.ndarray  # [n] chosen K'
    labels: torch.Tensor  # [n, K] canonical cluster ids
    samples: torch.Tensor  # [n, K] per-point silhouettes at K-hat
    proto: torch.Tensor  # [n, k_max, d] unit cluster prototypes (zeros beyond K-hat)
    valid: torch.Tensor  # [n, k_max] cluster slot exists
    sizes: torch.Tensor  # [n, k_max] cluster sizes
    mass: torch.Tensor  # [n, k_max] summed patch weights of each cluster (its share of the response)


def _best_k(res, ks: list[int]):
    sil = res.silhouette
    a = sil.argmax(1)  # first K' on ties
    S = sil.gather(1, a.unsqueeze(1)).squeeze(1).clamp_min(0)
    k_hat = torch.tensor(ks, device=sil.device)[a]
    return a, S, k_hat


def _search(G, unif, stats: StatsConfig, ks):
    return cluster_search(
        G, unif, ks, max_iter=stats.max_iter, spherical=stats.kmeans == "spherical"
    )


def _real(Zc, G, unif, stats: StatsConfig, ks, W: torch.Tensor | None = None) -> _Real:
    """The real clustering; W [n, K] weighs each patch in its cluster's mass (default: 1, the size)."""
    res = _search(G, unif, stats, ks)
    a, S, k_hat = _best_k(res, ks)
    idx = a.view(-1, 1, 1).expand(-1, 1, G.shape[1])
    raw = res.labels.gather(1, idx).squeeze(1)
    labels = canonical_labels(raw, stats.k_max)
    samples = res.samples.gather(1, idx).squeeze(1)
    A = torch.nn.functional.one_hot(labels, stats.k_max).to(Zc.dtype)  # [n, K, k_max]
    proto = _normalise(torch.bmm(A.transpose(1, 2), Zc))
    sizes = A.sum(1)
    mass = sizes.double() if W is None else torch.bmm(A.transpose(1, 2).double(), W.unsqueeze(-1)).squeeze(-1)
    return _Real(S.cpu().numpy().astype(float), k_hat.cpu().numpy(), labels, samples, proto, sizes > 0, sizes, mass)


def _contrast(proto: torch.Tensor, sizes: torch.Tensor, mass: torch.Tensor,
              text: TextBank) -> tuple[np.ndarray, np.ndarray]:
    """(concept contrast, effective concepts) of clusterings, against the main concepts (templates averaged)."""
    E, _ = text.candidates("main", "concept")
    sims = torch.einsum("nkd,cd->nkc", proto, torch.from_numpy(E).to(proto.device))
    contrast, eff = concept_contrast(sims.double(), proto.double(), sizes, mass)
    return contrast.cpu().numpy(), eff.cpu().numpy()


def _shuffled_sims(proto: torch.Tensor, text: TextBank, level: str, perms: np.ndarray) -> torch.Tensor:
    """Similarities [U, k, n] to the candidates after shuffling which concept each main prompt belongs to."""
    T = torch.from_numpy(text.emb).to(proto.device)
    if level == "prompt":  # a prompt-level gap ignores concept membership: unchanged (degenerate)
        return torch.einsum("nkd,pd->nkp", proto, T)
    new_ids = torch.from_numpy(text.concept_id[perms]).to(proto.device)  # [U, P]
    sums = torch.zeros(len(proto), len(text.concepts), T.shape[1], device=proto.device)
    for u in range(len(proto)):
        sums[u].index_add_(0, new_ids[u], T)
    return torch.bmm(proto, _normalise(sums).transpose(1, 2))


def _score_chunk(Z, y, W, chans, text, draws, stats: StatsConfig, nulls: NullConfig, layer, dev, ks):
    """Rows of one chunk of channels for the requested draws (as dicts), plus cluster details for draw 0.

    W: [n, K] patch weights of the clusters' shares (metrics.activation_weights)."""
    n, K, d = Z.shape
    Zc = torch.from_numpy(Z).to(dev)
    Wc = torch.from_numpy(np.asarray(W, dtype=np.float64)).to(dev)
    G = torch.bmm(Zc, Zc.transpose(1, 2))
    rngs = {(c, m): unit_rng(nulls.seed, layer, c, m) for c in chans for m in set(draws) | {0}}
    unif0 = np.stack([kmeans_uniforms(rngs[c, 0], len(ks), stats.n_init, stats.k_max) for c in chans])
    real = _real(Zc, G, torch.from_numpy(unif0).float().to(dev), stats, ks, Wc)
    level = stats.gap_level
    E, E_ids = text.candidates("main", level)
    E_t = torch.from_numpy(E).to(dev)
    sims_main = torch.einsum("nkd,pd->nkp", real.proto, E_t)
    D_real, gap, top_idx, top_sim = top2_gaps(sims_main, real.valid)
    y_dense = dense_labels(y)
    lab_np = real.labels.cpu().numpy()
    out: dict[int, dict] = {}
    if 0 in draws:
        contrast, eff = _contrast(real.proto, real.sizes, real.mass, text)
        out[0] = dict(S=real.S, Q=nmi(y_dense, lab_np), D=D_real.cpu().numpy().astype(float), k_hat=real.k_hat,
                      contrast=contrast, index_k=eff)
        out[0]["details"] = _details(real, gap, top_idx, top_sim, E_ids, text.concepts)
    nd = [m for m in draws if m > 0]
    if not nd:
        return out
    # Null draws of all channels in the chunk, stacked as units (draw-major).
    flat = [
        null_draw(
            rngs[c, m], K, s_null=nulls.s_null, d_null=nulls.d_null,
            n_main_concepts=len(text.concepts), n_null_concepts=len(text.null_concepts),
            n_main_prompts=len(text.emb), d_fraction=nulls.d_null_fraction,
        )
        for m in nd
        for c in chans
    ]
    Gr = G.repeat(len(nd), 1, 1)
    if nulls.s_null == "gaussian":
        Gn, scale = _null_gram(Gr, np.stack([o.s_gauss for o in flat]))
    else:  # a rotation of the embedding space leaves the Gram matrix exactly unchanged
        Gn, scale = Gr, None
    unif = np.stack(
        [kmeans_uniforms(rngs[c, m], len(ks), stats.n_init, stats.k_max) for m in nd for c in chans]
    )
    res = _search(Gn, torch.from_numpy(unif).float().to(dev), stats, ks)
    a, S_null, k_null = _best_k(res, ks)
    perm = np.stack([o.permutation for o in flat])
    lab_rep = np.tile(lab_np, (len(nd), 1))
    Q_null = nmi(np.tile(y_dense, (len(nd), 1)), np.take_along_axis(lab_rep, perm, 1))
    batch = _NullBatch(
        real=real, flat=flat, Z=Zc, W=Wc, G=Gr, res=res, best=a, scale=scale, reps=len(nd), text=text,
        stats=stats, nulls=nulls, ks=ks,
        uniforms=lambda: np.stack(
            [kmeans_uniforms(rngs[c, m], len(ks), stats.n_init, stats.k_max) for m in nd for c in chans]
        ),
        normals=lambda: np.stack([rngs[c, m].standard_normal((K - 1, K - 1)) for m in nd for c in chans]),
    )
    D_null = D_NULLS[nulls.d_null](batch)
    # Drawn after the D-null, so that adding the index left S, Q and D of every draw unchanged.
    C_null, eff_null = _contrast_null(batch)
    S_null, k_null, D_null = (t.cpu().numpy() for t in (S_null, k_null, D_null))
    for i, m in enumerate(nd):
        sl = slice(i * n, (i + 1) * n)
        out[m] = dict(S=S_null[sl], Q=Q_null[sl], D=D_null[sl], k_hat=k_null[sl], contrast=C_null[sl],
                      index_k=eff_null[sl])
    return out


def mixing_matrices_torch(gauss: torch.Tensor) -> torch.Tensor:
    """nulls.mixing_matrices in torch, on the normals' device (float64 [..., K-1, K-1] -> [..., K, K])."""
    K = gauss.shape[-1] + 1
    q, r = torch.linalg.qr(gauss)
    O = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar: R's signs moved into Q
    B = torch.tensor(helmert_basis(K), device=gauss.device)  # a copy: the cached basis is read-only
    return 1.0 / K + B @ O @ B.T


def _mixing(gauss: np.ndarray, device: torch.device) -> torch.Tensor:
    """The gaussian S-null's mixing matrices on `device`. On the CPU numpy's (the tables as they were); elsewhere
    the QR decompositions run on the device: at K = 50 they were a third of the scorer's work that stays on the
    CPU (docs/performance.md). Equal to rounding (tests/stats/test_metrics.py)."""
    if device.type == "cpu":
        return torch.from_numpy(mixing_matrices(gauss))
    return mixing_matrices_torch(torch.from_numpy(gauss).to(device))


def _null_gram(G: torch.Tensor, gauss: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrices of the gaussian S-null's patches, from the real Gram matrices G [U, K, K].

    Same construction as nulls.structure_free_sample, in K-space: the central projection
    x / (x . m) has Gram G / (a a^T) with a = x . m = (G 1) / sqrt(1^T G 1).
    Returns (Gram [U, K, K] of the unit null patches, M [U, K, K] with null patches = M Z).
    """
    dtype = G.dtype
    G = G.double()  # float64 so that rounding noise cannot pose as structure (e.g. identical patches)
    a = G.sum(-1) / G.sum((-1, -2)).clamp_min(1e-12).sqrt().unsqueeze(-1)  # cosine to the mean direction
    ok = a.amin(-1, keepdim=True) > TANGENT_MIN_COS
    a = torch.where(ok, a, torch.ones_like(a))
    W = _mixing(gauss, G.device) / a.unsqueeze(1)
    Gw = W @ G @ W.transpose(1, 2)
    norm = Gw.diagonal(dim1=1, dim2=2).clamp_min(1e-12).sqrt()
    Gn = Gw / (norm.unsqueeze(2) * norm.unsqueeze(1))
    return Gn.to(dtype), (W / norm.unsqueeze(2)).to(dtype)


@dataclass
class _NullBatch:
    """The null draws of a chunk of channels, stacked as units (draw-major), for the D-null."""

    real: _Real
    flat: list[NullDraw]  # [U] random objects of each unit
    Z: torch.Tensor  # [n, K, d] real patches of the chunk
    W: torch.Tensor  # [n, K] their weights; null patch i of a channel takes its real patch i's weight
    G: torch.Tensor  # [U, K, K] real Gram matrices of each unit
    res: object  # the S-null's cluster search
    best: torch.Tensor  # [U] index of its best K'
    scale: torch.Tensor | None  # [U, K, K] M with S-null patches = M Z (gaussian S-null only)
    reps: int  # null draws in the chunk
    text: TextBank
    stats: StatsConfig
    nulls: NullConfig
    ks: list[int]
    uniforms: Callable[[], np.ndarray]  # next k-means uniforms of every unit from its generator
    normals: Callable[[], np.ndarray]  # next [K-1, K-1] standard normals of every unit from its generator
    _free: tuple | None = None

    def structure_free(self, gauss: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unit prototypes [U, k_max, d], cluster sizes and masses [U, k_max]) of a clustered structure-free sample.

        The gaussian S-null's sample when there is one; otherwise one drawn from `gauss` (or from
        each unit's generator) and clustered like a real channel. Computed once per batch.
        """
        if self._free is None:
            res, a, M = self.res, self.best, self.scale
            if self.nulls.s_null != "gaussian":
                Gn, M = _null_gram(self.G, gauss if gauss is not None else self.normals())
                res = _search(Gn, torch.from_numpy(self.uniforms()).float().to(Gn.device), self.stats, self.ks)
                a, _, _ = _best_k(res, self.ks)
            Z = self.Z.repeat(self.reps, 1, 1)
            K = Z.shape[1]
            labels = res.labels.gather(1, a.view(-1, 1, 1).expand(-1, 1, K)).squeeze(1)
            A = torch.nn.functional.one_hot(labels, self.stats.k_max).to(Z.dtype)  # [U, K, k_max]
            proto = _normalise(torch.bmm(torch.bmm(A.transpose(1, 2), M), Z))  # cluster sums of the null patches
            mass = torch.bmm(A.transpose(1, 2).double(), self.W.repeat(self.reps, 1).unsqueeze(-1)).squeeze(-1)
            self._free = (proto, A.sum(1), mass)
        return self._free


def _d_random_directions(b: _NullBatch) -> torch.Tensor:
    """D of structure-free patches unit(W Z) = M Z, clustered like a real channel, against the main prompts."""
    proto, sizes, _ = b.structure_free(
        np.stack([o.d_gauss for o in b.flat]) if b.nulls.s_null != "gaussian" else None
    )
    E, _ = b.text.candidates("main", b.stats.gap_level)
    sims = torch.einsum("nkd,pd->nkp", proto, torch.from_numpy(E).to(proto.device))
    return top2_gaps(sims, sizes > 0)[0]


def _contrast_null(b: _NullBatch) -> tuple[np.ndarray, np.ndarray]:
    """Concept contrast of a structure-free sample (shared with the S-null or random-directions D-null)."""
    return _contrast(*b.structure_free(), b.text)


def _d_unrelated_prompts(b: _NullBatch) -> torch.Tensor:
    """D of the real prototypes against a random subset of the unrelated-domain prompts."""
    text = b.text
    if len(text.null_concepts) == 0:
        raise ValueError("nulls.d_null is unrelated_prompts but the prompt table has no 'null' set; "
                         "set prompts.null_concepts or choose nulls.d_null: random_directions")
    dev = b.real.proto.device
    proto = b.real.proto.repeat(b.reps, 1, 1)
    E0, ids0 = text.candidates("null", b.stats.gap_level)
    sims = torch.einsum("nkd,pd->nkp", proto, torch.from_numpy(E0).to(dev))
    allowed = torch.from_numpy(np.stack([o.d_subset for o in b.flat])[:, ids0]).to(dev)
    return top2_gaps(sims, b.real.valid.repeat(b.reps, 1), allowed)[0]


def _d_shuffle(b: _NullBatch) -> torch.Tensor:
    """D of the real prototypes after shuffling which concept each main prompt belongs to."""
    proto = b.real.proto.repeat(b.reps, 1, 1)
    sims = _shuffled_sims(proto, b.text, b.stats.gap_level, np.stack([o.d_prompt_perm for o in b.flat]))
    return top2_gaps(sims, b.real.valid.repeat(b.reps, 1))[0]


# D-null of a batch of null draws, by nulls.d_null (keys as nulls.D_NULL_DRAWS).
D_NULLS: dict[str, Callable[[_NullBatch], torch.Tensor]] = {
    "unrelated_prompts": _d_unrelated_prompts,
    "random_directions": _d_random_directions,
    "shuffle": _d_shuffle,
}


def _details(real: _Real, gap, top_idx, top_sim, cand_ids: np.ndarray, names: list[str]) -> list[dict]:
    lab = real.labels.cpu().numpy()
    samp = real.samples.cpu().numpy()
    gap, top_idx, top_sim = gap.cpu().numpy(), top_idx.cpu().numpy(), top_sim.cpu().numpy()
    rows = []
    for i in range(len(lab)):
        k = int(real.k_hat[i])
        size = np.bincount(lab[i], minlength=k)[:k]
        sil = np.bincount(lab[i], weights=samp[i], minlength=k)[:k] / np.maximum(size, 1)
        rows.append(dict(
            assignments=lab[i].tolist(),
            cluster_size=size.tolist(),
            cluster_silhouette=sil.astype(float).tolist(),
            cluster_concept_1=[names[cand_ids[top_idx[i, j, 0]]] for j in range(k)],
            cluster_concept_2=[names[cand_ids[top_idx[i, j, 1]]] for j in range(k)],
            cluster_gap=gap[i, :k].astype(float).tolist(),
            cluster_similarity_1=top_sim[i, :k].astype(float).tolist(),
        ))
    return rows


# On the CPU a chunk holds at most this many Gram-matrix entries (units x K x K), 20 MB in float64 (K > 100
# lowers chunk_units). Buffers above the C allocator's 32 MB mmap limit are fresh pages from the kernel at
# every operation: at K = 200, 256-unit chunks spent a third of their time in the kernel and ran 1.7x
# slower than 64-unit ones. Results do not depend on the chunks.
CHUNK_GRAM_ENTRIES = 256 * 100 * 100
CPU_CHUNK_UNITS = 256
# On a GPU a chunk costs a fixed ~2,300 torch operations (kernel launches, ~90 of them waiting for the device)
# whatever its size, so chunks are as large as this memory allows. A unit needs about 80 bytes per Gram entry
# plus 64 KB (peak growth measured on the CPU: 69 KB a unit at K = 10, 200 KB at K = 50, 2.4 MB at K = 200).
DEVICE_CHUNK_BYTES = 1 << 30


def chunk_size(device: torch.device, K: int, chunk_units: int | None = None) -> int:
    """Units (channels x draws) per batch: chunk_units if given (capped on the CPU), else by device."""
    if device.type == "cpu":
        return min(chunk_units or CPU_CHUNK_UNITS, CHUNK_GRAM_ENTRIES // K**2)
    return chunk_units or max(1, DEVICE_CHUNK_BYTES // (80 * K**2 + (64 << 10)))


def score_channels_batched(
    Z: np.ndarray,
    labels: np.ndarray,
    channels: np.ndarray,
    text: TextBank,
    draws: list[int],
    stats: StatsConfig,
    nulls: NullConfig,
    layer: str,
    *,
    weights: np.ndarray,
    device: str | torch.device = "cpu",
    progress: bool = False,
    chunk_units: int | None = None,
) -> pd.DataFrame:
    """The score table of checked inputs (see score.score_channels), in batches of units (chunk_size)."""
    dev = torch.device(device)
    ks = list(range(stats.k_min, stats.k_max + 1))
    n_null = sum(m > 0 for m in draws)
    chunk_units = chunk_size(dev, Z.shape[1], chunk_units)
    step = max(1, chunk_units // (1 + n_null))
    starts = range(0, len(channels), step)
    if progress:
        from tqdm.auto import tqdm  # lazy: only when progress bars are asked for

        starts = tqdm(starts, desc=f"score {layer}", unit="chunk")
    parts: dict[int, list] = {m: [] for m in draws}
    with torch.no_grad():
        for s in starts:
            sl = slice(s, s + step)
            res = _score_chunk(Z[sl], labels[sl], weights[sl], channels[sl].tolist(), text, draws, stats, nulls, layer, dev, ks)
            for m in draws:
                parts[m].append(res[m])
    per_draw = {}
    for m in draws:
        merged = {key: np.concatenate([p[key] for p in parts[m]]) for key in ("S", "Q", "D", "k_hat", "contrast", "index_k")}
        if m == 0:
            merged["details"] = [row for p in parts[m] for row in p["details"]]
        per_draw[m] = merged
    return rows_to_frame(channels, draws, per_draw)
