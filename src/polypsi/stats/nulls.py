"""Seeded random objects of the null draws, shared by the batched scorer and the reference.

Every random choice of a (layer, channel, draw) comes from one generator seeded by exactly
that key, so a channel's scores never depend on which other channels share its shard or
batch. The generator is consumed in a fixed order: first the null objects both backends
share (null_draw: Q permutation, D-null objects, S-null normals), then what only one backend
uses (k-means seeding, explicit rotations).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np


def unit_rng(seed: int, layer: str, channel: int, draw: int) -> np.random.Generator:
    """The generator of one (layer, channel, draw)."""
    return np.random.default_rng([int(seed) % (1 << 64), zlib.crc32(layer.encode()), int(channel), int(draw)])


def n_local_trials(k: int) -> int:
    """Candidates per greedy k-means++ step (scikit-learn's rule)."""
    return 2 + int(math.log(k))


def kmeans_uniforms(rng: np.random.Generator, n_k: int, n_init: int, k_max: int) -> np.ndarray:
    """Uniforms driving k-means++ seeding: [n_k, n_init, k_max, trials + 1] (one fixed-size block)."""
    return rng.random((n_k, n_init, k_max, n_local_trials(k_max) + 1))


@functools.lru_cache(maxsize=8)
def helmert_basis(K: int) -> np.ndarray:
    """[K, K-1] orthonormal basis of the vectors that sum to zero."""
    B = np.zeros((K, K - 1))
    for j in range(1, K):
        B[:j, j - 1] = 1.0
        B[j, j - 1] = -j
        B[:, j - 1] /= math.sqrt(j * (j + 1))
    B.setflags(write=False)
    return B


def haar_orthogonal(gauss: np.ndarray) -> np.ndarray:
    """Haar-distributed matrices of O(n) from standard normal [..., n, n]: QR with R's signs moved into Q."""
    q, r = np.linalg.qr(gauss)
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def mixing_matrices(gauss: np.ndarray) -> np.ndarray:
    """W [..., K, K] of the structure-free ("gaussian") null from normals [..., K-1, K-1]: X' = W X.

    W = 11^T/K + B O B^T with O Haar on the centred subspace. X' keeps the sample mean and
    the singular values and feature-space directions of the centred samples exactly, and
    draws the samples' loadings on them uniformly at random. For i.i.d. Gaussian patches this
    is their exact distribution given the sample mean and covariance (a rotation test in
    sample space), so clusters in the loadings are what the null removes.
    """
    K = gauss.shape[-1] + 1
    B = helmert_basis(K)
    return 1.0 / K + B @ haar_orthogonal(gauss) @ B.T


# Below this cosine to the mean direction a patch has no usable central projection (it would land
# at or beyond infinity), and the null mixes the unit vectors themselves.
TANGENT_MIN_COS = 0.2


def structure_free_sample(X: np.ndarray, gauss: np.ndarray) -> np.ndarray:
    """The gaussian S-null's patches for unit rows X [K, d] (explicit version; the scorer uses Gram matrices).

    Patches are centrally projected onto the plane tangent to the sphere at their mean direction
    (x / (x . m), which undoes the L2 normalisation exactly for Gaussian patches whose spread is
    orthogonal to m), redrawn there given their mean and covariance (mixing_matrices), and
    normalised back onto the sphere. Mixing the unit vectors directly would apply the
    normalisation's flattening of the spectrum twice and understate S under the null.
    """
    m = X.mean(0)
    a = X @ (m / np.linalg.norm(m))
    T = X / a[:, None] if a.min() > TANGENT_MIN_COS else X
    out = mixing_matrices(gauss) @ T
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def rotation_matrix(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar rotation of the embedding space (the paper's S-null; leaves every cosine unchanged)."""
    return haar_orthogonal(rng.standard_normal((d, d)))


def d_null_subset_size(n_main: int, n_null: int, fraction: float) -> int:
    """Unrelated-domain concepts per D-null draw: a share of the pool, capped at the main set's size.

    The cap keeps real and null gaps over the same number of candidates when the pool is
    large enough (the top-1 minus top-2 gap shrinks as candidates are added).
    """
    n = min(n_main, int(math.floor(fraction * n_null)))
    if n < 2:
        raise ValueError(
            f"the unrelated-domain prompt set has {n_null} concepts; a D-null draw needs at least 2 "
            f"(nulls.d_null_fraction={fraction}). Add concepts to prompts.null_concepts or use "
            "nulls.d_null: random_directions"
        )
    return n


@dataclass
class NullDraw:
    """The random objects of one null draw of one channel."""

    permutation: np.ndarray  # [K] Q-null: cluster labels l -> l[permutation]
    s_gauss: np.ndarray | None = None  # [K-1, K-1] normals of the gaussian S-null (see mixing_matrices)
    s_rotation: np.ndarray | None = None  # [d, d] rotation S-null (reference only)
    d_subset: np.ndarray | None = None  # [C0] bool, unrelated concepts used by this draw
    d_gauss: np.ndarray | None = None  # [K-1, K-1] random_directions D-null when s_null is not gaussian
    d_prompt_perm: np.ndarray | None = None  # [P] shuffle D-null: prompt p gets concept of prompt perm[p]


def _draw_unrelated_prompts(rng, out: NullDraw, K, s_null, n_main_concepts, n_null_concepts, n_main_prompts, fraction):
    n = d_null_subset_size(n_main_concepts, n_null_concepts, fraction)
    mask = np.zeros(n_null_concepts, dtype=bool)
    mask[rng.choice(n_null_concepts, size=n, replace=False)] = True
    out.d_subset = mask


def _draw_random_directions(rng, out: NullDraw, K, s_null, n_main_concepts, n_null_concepts, n_main_prompts, fraction):
    if s_null != "gaussian":  # otherwise the D-null reuses the S-null's structure-free sample
        out.d_gauss = rng.standard_normal((K - 1, K - 1))


def _draw_shuffle(rng, out: NullDraw, K, s_null, n_main_concepts, n_null_concepts, n_main_prompts, fraction):
    out.d_prompt_perm = rng.permutation(n_main_prompts)


# The D-nulls (nulls.d_null) and how each draws its random objects; the scorers hold matching tables.
D_NULL_DRAWS = {
    "unrelated_prompts": _draw_unrelated_prompts,
    "random_directions": _draw_random_directions,
    "shuffle": _draw_shuffle,
}


def null_draw(
    rng: np.random.Generator,
    K: int,
    *,
    s_null: str,
    d_null: str,
    n_main_concepts: int,
    n_null_concepts: int,
    n_main_prompts: int,
    d_fraction: float,
    d: int | None = None,
) -> NullDraw:
    """Draw the null objects of one (channel, draw). `d` is needed only for explicit rotations (drawn last)."""
    if s_null not in ("gaussian", "rotation"):
        raise ValueError(f"unknown nulls.s_null {s_null!r}; use gaussian or rotation")
    out = NullDraw(permutation=rng.permutation(K))
    D_NULL_DRAWS[d_null](rng, out, K, s_null, n_main_concepts, n_null_concepts, n_main_prompts, d_fraction)
    if s_null == "gaussian":
        out.s_gauss = rng.standard_normal((K - 1, K - 1))
    elif d is not None:  # the batched scorer never needs the rotation itself
        out.s_rotation = rotation_matrix(rng, d)
    return out
