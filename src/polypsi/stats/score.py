"""score_channels: checks the inputs and runs the scorer that stats.backend names."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..config import NullConfig, StatsConfig
from .batched import score_channels_batched
from .metrics import activation_weights
from .text import TextBank

NORM_TOL = 1e-2  # e.g. bf16 embeddings normalised before the cast


def _as_draws(draw: int | Sequence[int], m: int) -> list[int]:
    draws = [int(draw)] if np.ndim(draw) == 0 else [int(d) for d in draw]
    bad = [d for d in draws if not 0 <= d <= m]
    if bad or not draws:
        raise ValueError(f"draw {bad or draws} is outside 0..nulls.m ({m}); draw 0 is the real data")
    if len(set(draws)) != len(draws):
        raise ValueError(f"draws {draws} contain duplicates")
    return draws


def check_inputs(Z, labels, channels, text: TextBank, stats: StatsConfig, layer: str):
    Z = np.asarray(Z, dtype=np.float32)
    labels = np.asarray(labels)
    channels = np.asarray(channels, dtype=np.int64).reshape(-1)
    if Z.ndim != 3:
        raise ValueError(f"layer {layer}: patch embeddings must be [channels, K, d], got shape {Z.shape}")
    n, K, d = Z.shape
    if labels.shape != (n, K):
        raise ValueError(f"layer {layer}: labels must be [channels, K] = {(n, K)}, got {labels.shape}")
    if len(channels) != n:
        raise ValueError(f"layer {layer}: {len(channels)} channel ids for {n} channels of embeddings")
    if K <= stats.k_max:
        raise ValueError(f"layer {layer}: K={K} patches per channel; stats.k_max={stats.k_max} needs K > k_max")
    if text.dim != d:
        raise ValueError(f"layer {layer}: patch embeddings have d={d} but prompt embeddings d={text.dim}; "
                         "embed both with the same CLIP model")
    if not np.isfinite(Z).all():
        c = int(channels[np.argwhere(~np.isfinite(Z).all(-1))[0, 0]])
        raise ValueError(f"layer {layer}, channel {c}: patch embeddings contain NaN or inf")
    norms = np.linalg.norm(Z, axis=-1, keepdims=True)
    bad = np.abs(norms[..., 0] - 1) > NORM_TOL
    if bad.any():
        c = int(channels[np.argwhere(bad)[0, 0]])
        raise ValueError(f"layer {layer}, channel {c}: patch embeddings are not L2-normalised "
                         f"(norms {norms[bad].min():.3g}..{norms[bad].max():.3g}); re-run the embedding stage")
    Z = Z / norms  # exact unit rows (the Gram matrices assume a unit diagonal)
    return Z, labels.astype(np.int64), channels


def check_activations(activations, channels: np.ndarray, shape: tuple[int, int], layer: str) -> np.ndarray:
    """Patch weights [n, K] of the clusters' shares from the patches' activations (all 1 when None)."""
    if activations is None:
        return np.ones(shape)
    act = np.asarray(activations, dtype=np.float64)
    if act.shape != shape:
        raise ValueError(f"layer {layer}: activations must be [channels, K] = {shape}, got {act.shape}")
    if not np.isfinite(act).all():
        c = int(channels[np.argwhere(~np.isfinite(act))[0, 0]])
        raise ValueError(f"layer {layer}, channel {c}: patch activations contain NaN or inf")
    return activation_weights(act)


def _reference(Z, labels, channels, text, draws, stats, nulls, layer, *, weights, device, progress, chunk_units):
    """The per-channel reference: numpy on the CPU, one channel and draw at a time (no batches)."""
    from .reference import score_channels_reference  # lazy: scikit-learn takes 1-2 s to import; only this backend

    return score_channels_reference(Z, labels, channels, text, draws, stats, nulls, layer, weights)


# The scorer of each stats.backend.
BACKENDS = {"torch": score_channels_batched, "sklearn": _reference}


def score_channels(
    Z: np.ndarray,
    labels: np.ndarray,
    channels: np.ndarray,
    text: TextBank,
    draw: int | Sequence[int],
    stats: StatsConfig,
    nulls: NullConfig,
    layer: str,
    device: str | torch.device = "cpu",
    progress: bool = False,
    chunk_units: int | None = None,
    activations: np.ndarray | None = None,
) -> pd.DataFrame:
    """Raw S, Q, D and K-hat of n channels for one draw (0 = real data, 1..M = null draws).

    Z: [n, K, d] unit patch embeddings; labels: [n, K] class labels of the patches' images;
    activations: [n, K] the patches' activations, which weigh each cluster's share in the index's
    contrast (metrics.activation_weights; without them every patch counts 1).
    `draw` may also be a list of draws (the real clustering is then computed once).
    Every random choice is seeded by (nulls.seed, layer, channel, draw), so the result does
    not depend on how channels are split into shards or chunks (chunk_units: units, i.e. channels x
    draws, per batch; by default set by the device, see batched.chunk_size).
    """
    draws = _as_draws(draw, nulls.m)
    Z, labels, channels = check_inputs(Z, labels, channels, text, stats, layer)
    weights = check_activations(activations, channels, Z.shape[:2], layer)
    return BACKENDS[stats.backend](
        Z, labels, channels, text, draws, stats, nulls, layer,
        weights=weights, device=device, progress=progress, chunk_units=chunk_units,
    )
