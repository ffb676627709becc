"""Synthetic OR-units (after MAIA's synthetic "A OR B" neurons, Schwettmann et al. 2023, Rott Shaham et al. 2024).

An OR-unit of channels a and b responds with max(q_a, q_b), where q is a channel's activation
quantile-normalised over the dataset. Both parts then reach the same values at the same ranks,
so the unit's top-K interleaves the two channels' own rankings (a0, b0, a1, b1, ...) and both
parts are equally represented; a site both parts hold counts once (with one site per image,
an image does). Its top-K, crops and embeddings follow from the parts' mined top-K lists: no
second pass over the dataset and no new embeddings.

Pairs must show clearly different content, so that the unit is polysemantic by construction:
- with a known truth (a plug-in's truth/units.csv, e.g. the planted world): two monosemantic
  channels with different concepts;
- otherwise: two live channels whose top-patch prototypes (unit mean embedding) are far apart,
  their cosine in the lowest `validation.or_far_quantile` of all live-channel pairs of the layer.
The negatives are the single channels (with a truth, the monosemantic ones).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from ..config import ValidationConfig

UNIT_COLUMNS = ["channel", "part_a", "part_b", "rule", "prototype_cosine"]


def prototypes(channels: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """[n, d] unit mean embedding of each channel's top patches (Z: [n, K, d])."""
    p = Z.mean(1)
    return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)


def eligible_pairs(channels: np.ndarray, Z: np.ndarray, live: np.ndarray, truth: pd.DataFrame | None,
                   cfg: ValidationConfig) -> tuple[list[tuple[int, int]], np.ndarray, str]:
    """(pairs (a < b), their prototype cosines, rule name) of one layer's channels."""
    index = {int(c): i for i, c in enumerate(channels)}
    P = prototypes(channels, Z)
    cosine = P @ P.T
    alive = set(live.tolist())
    if truth is not None:
        t = truth[truth["kind"] == "mono"]
        mono = [int(c) for c in t["channel"] if int(c) in index and int(c) in alive]
        concept = dict(zip(t["channel"].astype(int), t["concepts"].astype(str)))
        pairs = [(a, b) for i, a in enumerate(mono) for b in mono[i + 1:] if concept[a] != concept[b]]
        rule = "truth: monosemantic, different concepts"
    else:
        rows = np.array([i for i, c in enumerate(channels) if int(c) in alive], dtype=int)
        ia, ib = np.triu_indices(len(rows), k=1)
        cos = cosine[rows[ia], rows[ib]]
        if not len(cos):
            return [], np.zeros(0), "far prototypes"
        cut = np.quantile(cos, cfg.or_far_quantile)
        keep = cos <= cut
        pairs = [(int(channels[rows[a]]), int(channels[rows[b]])) for a, b in zip(ia[keep], ib[keep])]
        rule = f"far prototypes: cosine <= {cut:.4f} (quantile {cfg.or_far_quantile})"
    cos = np.array([float(cosine[index[a], index[b]]) for a, b in pairs])
    return pairs, cos, rule


def choose_pairs(pairs: list[tuple[int, int]], n: int, seed: int, layer: str) -> np.ndarray:
    """Indices of min(n, len(pairs)) pairs drawn without replacement, seeded by (validation.seed, layer)."""
    rng = np.random.default_rng([int(seed) % (1 << 64), zlib.crc32(layer.encode())])
    return np.sort(rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)) if pairs else np.zeros(0, int)


def interleave(a: pd.DataFrame, b: pd.DataFrame, K: int, one_site_per_image: bool) -> pd.DataFrame:
    """The top-K of max(q_a, q_b) from two rank-ordered top-K lists (columns rank, image_id, u, v, ...)."""
    key = ["image_id"] if one_site_per_image else ["image_id", "u", "v"]
    both = pd.concat([a.assign(part=0), b.assign(part=1)], ignore_index=True)
    both = both.sort_values(["rank", "part"], kind="stable")  # equal quantile at equal rank; part a first
    both = both.drop_duplicates(key, keep="first").head(K).reset_index(drop=True)
    both["part_rank"] = both["rank"]
    both["rank"] = np.arange(len(both))
    return both


def build_or_units(layer: str, topk: pd.DataFrame, emb: pd.DataFrame, Z: np.ndarray, live: np.ndarray,
                   truth: pd.DataFrame | None, cfg: ValidationConfig, one_site_per_image: bool,
                   ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(units table, OR-unit top-K table, its embeddings [rows, d]) of one layer.

    topk: the layer's top-K table (channel, rank, image_id, u, v, activation); emb: (channel, rank)
    of the rows of Z [rows, d]. OR-units get channel ids after the layer's largest channel id; their
    `activation` is the quantile 1 - part_rank / K, the same for both parts at the same rank.
    """
    K = int(topk.groupby("channel").size().max())
    order = np.lexsort((emb["rank"].to_numpy(), emb["channel"].to_numpy()))
    emb, Z = emb.iloc[order].reset_index(drop=True), Z[order]
    channels = np.unique(emb["channel"].to_numpy())
    Zc = Z.reshape(len(channels), K, -1)
    pairs, cos, rule = eligible_pairs(channels, Zc, live, truth, cfg)
    chosen = choose_pairs(pairs, cfg.or_units_per_layer, cfg.seed, layer)
    first_id = int(topk["channel"].max()) + 1
    row_of = {int(c): i for i, c in enumerate(channels)}
    by_channel = {int(c): g.sort_values("rank") for c, g in topk.groupby("channel")}
    units, tables, embs = [], [], []
    for j, p in enumerate(chosen):
        a, b = pairs[p]
        uid = first_id + j
        t = interleave(by_channel[a], by_channel[b], K, one_site_per_image)
        t["part_channel"] = np.where(t["part"] == 0, a, b)
        t["activation"] = (1.0 - t["part_rank"] / K).astype(np.float32)
        t["channel"] = uid
        embs.append(np.stack([Zc[row_of[int(c)], int(r)] for c, r in zip(t["part_channel"], t["part_rank"])]))
        tables.append(t.drop(columns="part"))
        units.append((uid, a, b, rule, float(cos[p])))
    units = pd.DataFrame(units, columns=UNIT_COLUMNS)
    if not tables:
        cols = ["channel", "rank", "image_id", "u", "v", "activation", "part_channel", "part_rank"]
        return units, pd.DataFrame(columns=cols), np.zeros((0, Z.shape[1]), np.float32)
    table = pd.concat(tables, ignore_index=True)
    keep = ["channel", "rank", "image_id", "u", "v", "activation", "part_channel", "part_rank"]
    return units, table[keep], np.concatenate(embs).astype(np.float32)
