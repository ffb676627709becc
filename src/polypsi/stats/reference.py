"""Plain per-channel reference of the scorer: scikit-learn, scipy and numpy, one channel and draw at a time.

It draws the same null objects (Q permutations, D subsets, mixing matrices) as the batched
scorer from the same seeds, but builds the null embeddings explicitly in the embedding
space (the batched scorer only ever touches their Gram matrices), clusters with
scikit-learn's KMeans (or a plain spherical Lloyd loop seeded by scikit-learn's
k-means++) and scores with sklearn.metrics. Slow; it exists to check the batched scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.metrics import normalized_mutual_info_score, silhouette_samples

from ..config import NullConfig, StatsConfig
from .metrics import NAMES_COMPARED
from .nulls import NullDraw, null_draw, structure_free_sample, unit_rng
from .table import rows_to_frame
from .text import TextBank


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def spherical_kmeans(X: np.ndarray, k: int, n_init: int, max_iter: int, rng: np.random.Generator):
    """Cosine k-means: assign to the nearest centroid direction, centroid = normalised member mean.

    Returns (labels, objective = summed cosine of points to their centroid) of the best restart.
    """
    best = (None, -np.inf)
    for _ in range(n_init):
        _, idx = kmeans_plusplus(X, k, random_state=int(rng.integers(2**31)))
        lab = np.argmax(X @ X[idx].T, axis=1)
        for _ in range(max_iter):
            cent = np.zeros((k, X.shape[1]))
            np.add.at(cent, lab, X)
            norm = np.linalg.norm(cent, axis=1)
            sim = X @ (cent / np.where(norm > 0, norm, 1)[:, None]).T
            sim[:, norm == 0] = -np.inf
            new = np.argmax(sim, axis=1)
            for j in range(k):  # an emptied cluster takes the worst-fitting point of a cluster with >1 members
                counts = np.bincount(new, minlength=k)
                if counts[j] == 0:
                    own = sim[np.arange(len(X)), new]
                    own[counts[new] <= 1] = np.inf
                    new[np.argmin(own)] = j
            if np.array_equal(new, lab):
                break
            lab = new
        cent = np.zeros((k, X.shape[1]))
        np.add.at(cent, lab, X)
        obj = np.linalg.norm(cent, axis=1).sum()
        if obj > best[1]:
            best = (lab, obj)
    return best


def cluster_reference(X: np.ndarray, stats: StatsConfig, rng: np.random.Generator):
    """Best partition for each K' and its cosine silhouette; returns (S, k_hat, labels, samples)."""
    results = []
    for k in range(stats.k_min, stats.k_max + 1):
        if stats.kmeans == "euclidean":
            km = KMeans(k, n_init=stats.n_init, max_iter=stats.max_iter, random_state=int(rng.integers(2**31)))
            lab = km.fit_predict(X)
        else:
            lab, _ = spherical_kmeans(X, k, stats.n_init, stats.max_iter, rng)
        samples = silhouette_samples(X, lab, metric="cosine")
        results.append((float(samples.mean()), k, lab, samples))
    best = max(results, key=lambda r: r[0])  # first K' on ties
    return max(0.0, best[0]), best[1], best[2], best[3]


def canonical(lab: np.ndarray) -> np.ndarray:
    """Clusters renumbered by size (largest first), ties by smallest member index."""
    ids = np.unique(lab)
    order = sorted(ids, key=lambda j: (-np.sum(lab == j), np.flatnonzero(lab == j)[0]))
    remap = {old: new for new, old in enumerate(order)}
    return np.array([remap[v] for v in lab])


def purity_gap(proto: np.ndarray, cand: np.ndarray) -> tuple[float, int, int, float]:
    """(top-1 minus top-2 cosine, index of top-1, index of top-2, top-1 cosine) of one prototype."""
    sims = _unit(cand) @ (proto / np.linalg.norm(proto))
    order = np.argsort(-sims, kind="stable")
    return float(sims[order[0]] - sims[order[1]]), int(order[0]), int(order[1]), float(sims[order[0]])


def concept_means(emb: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    return _unit(np.stack([emb[ids == c].mean(0) for c in range(n)]))


def candidates(text: TextBank, which: str, level: str, ids_override=None):
    emb, ids, names = (
        (text.emb, text.concept_id, text.concepts) if which == "main" else (text.null_emb, text.null_concept_id, text.null_concepts)
    )
    if ids_override is not None:
        ids = ids_override
    if level == "concept":
        return concept_means(emb, ids, len(names)), np.arange(len(names))
    return emb, ids


def contrast_reference(protos, mass, text: TextBank) -> tuple[float, float]:
    """(concept contrast, effective concepts) by the definition in metrics.concept_contrast, pair by pair.

    mass: each cluster's summed patch weights (its size when every patch weighs 1)."""
    E, _ = candidates(text, "main", "concept")
    P = [p / np.linalg.norm(p) for p in protos]
    sims = [_unit(E) @ p for p in P]
    names = [int(np.argmax(s)) for s in sims]
    w = np.asarray(mass, dtype=float) / np.sum(mass)
    total = 0.0
    for i in range(len(protos)):
        for j in range(len(protos)):
            if i != j:
                names_ = np.union1d(np.argsort(-sims[i], kind="stable")[:NAMES_COMPARED],
                                    np.argsort(-sims[j], kind="stable")[:NAMES_COMPARED])
                d = sims[i][names_] - sims[j][names_]
                margin = (np.max(d) + np.max(-d)) / 2
                total += w[i] * w[j] * np.sqrt(max(margin, 0.0) * max(1.0 - float(P[i] @ P[j]), 0.0))
    shares = {}
    for n, wi in zip(names, w):
        shares[n] = shares.get(n, 0.0) + wi
    k = len(protos)  # clusters, whatever their mass (as the batched scorer's n_clusters)
    return total / (1.0 - 1.0 / max(k, 2)), 1.0 / sum(v * v for v in shares.values())


def _d_score(protos, cand) -> float:
    return float(np.mean([purity_gap(p, cand)[0] for p in protos]))


@dataclass
class _NullDraw:
    """One null draw of one channel, for the D-null."""

    X: np.ndarray  # [K, d] real patches
    o: NullDraw  # its random objects
    rng: np.random.Generator  # its generator, after the S-null's clustering
    protos: list[np.ndarray]  # real cluster prototypes
    Xn: np.ndarray  # S-null patches
    k: int  # their K-hat
    labels: np.ndarray  # and clusters
    text: TextBank
    stats: StatsConfig
    free: tuple | None = None  # (patches, k, labels) of the structure-free sample the D-null clustered


def structure_free_clusters(u: _NullDraw) -> tuple[np.ndarray, int, np.ndarray]:
    """The clustered structure-free sample of a null draw: the gaussian S-null's, else one drawn and clustered."""
    if u.o.s_gauss is not None:
        return u.Xn, u.k, u.labels
    if u.free is None:
        gauss = u.o.d_gauss if u.o.d_gauss is not None else u.rng.standard_normal((len(u.X) - 1, len(u.X) - 1))
        Xn = structure_free_sample(u.X, gauss)
        _, k, lab, _ = cluster_reference(Xn, u.stats, u.rng)
        u.free = (Xn, k, lab)
    return u.free


def _d_unrelated_prompts(u: _NullDraw) -> float:
    E0, ids0 = candidates(u.text, "null", u.stats.gap_level)
    return _d_score(u.protos, E0[np.isin(ids0, np.flatnonzero(u.o.d_subset))])


def _d_random_directions(u: _NullDraw) -> float:
    """D of structure-free patches clustered like real ones."""
    Xn, k, lab = structure_free_clusters(u)
    E, _ = candidates(u.text, "main", u.stats.gap_level)
    return _d_score([Xn[lab == j].mean(0) for j in range(k)], E)


def _d_shuffle(u: _NullDraw) -> float:
    ids = u.text.concept_id[u.o.d_prompt_perm]
    return _d_score(u.protos, candidates(u.text, "main", u.stats.gap_level, ids_override=ids)[0])


# D-null of one null draw, by nulls.d_null (keys as nulls.D_NULL_DRAWS).
D_NULLS = {
    "unrelated_prompts": _d_unrelated_prompts,
    "random_directions": _d_random_directions,
    "shuffle": _d_shuffle,
}


def score_channels_reference(Z, labels, channels, text: TextBank, draws, stats: StatsConfig, nulls: NullConfig, layer: str,
                             weights=None):
    level = stats.gap_level
    E, E_ids = candidates(text, "main", level)
    per_draw = {m: dict(S=[], Q=[], D=[], k_hat=[], contrast=[], index_k=[], details=[]) for m in draws}
    weights = np.ones(labels.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    for X, y, c, w in zip(Z.astype(np.float64), labels, channels, weights):
        K = len(X)
        S, k_hat, lab, samples = cluster_reference(X, stats, unit_rng(nulls.seed, layer, c, 0))
        lab = canonical(lab)
        protos = [X[lab == j].mean(0) for j in range(k_hat)]
        for m in draws:
            r = per_draw[m]
            if m == 0:
                gaps = [purity_gap(p, E) for p in protos]
                r["S"].append(S)
                r["Q"].append(normalized_mutual_info_score(y, lab))
                r["D"].append(float(np.mean([g[0] for g in gaps])))
                r["k_hat"].append(k_hat)
                c_, e_ = contrast_reference(protos, [np.sum(w[lab == j]) for j in range(k_hat)], text)
                r["contrast"].append(c_)
                r["index_k"].append(e_)
                r["details"].append(dict(
                    assignments=lab.tolist(),
                    cluster_size=[int(np.sum(lab == j)) for j in range(k_hat)],
                    cluster_silhouette=[float(samples[lab == j].mean()) for j in range(k_hat)],
                    cluster_concept_1=[text.concepts[E_ids[g[1]]] for g in gaps],
                    cluster_concept_2=[text.concepts[E_ids[g[2]]] for g in gaps],
                    cluster_gap=[g[0] for g in gaps],
                    cluster_similarity_1=[g[3] for g in gaps],
                ))
                continue
            rng = unit_rng(nulls.seed, layer, c, m)
            o = null_draw(
                rng, K, s_null=nulls.s_null, d_null=nulls.d_null,
                n_main_concepts=len(text.concepts), n_null_concepts=len(text.null_concepts),
                n_main_prompts=len(text.emb), d_fraction=nulls.d_null_fraction, d=X.shape[1],
            )
            Xn = structure_free_sample(X, o.s_gauss) if o.s_gauss is not None else X @ o.s_rotation.T
            S_m, k_m, lab_m, _ = cluster_reference(Xn, stats, rng)
            r["S"].append(S_m)
            r["k_hat"].append(k_m)
            r["Q"].append(normalized_mutual_info_score(y, lab[o.permutation]))
            u = _NullDraw(X, o, rng, protos, Xn, k_m, lab_m, text, stats)
            r["D"].append(D_NULLS[nulls.d_null](u))
            Xf, k_f, lab_f = structure_free_clusters(u)  # after the D-null: its draws come first
            c_, e_ = contrast_reference([Xf[lab_f == j].mean(0) for j in range(k_f)],
                                        [np.sum(w[lab_f == j]) for j in range(k_f)], text)
            r["contrast"].append(c_)
            r["index_k"].append(e_)
    return rows_to_frame(np.asarray(channels), list(draws), per_draw)
