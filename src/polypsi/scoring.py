"""Workflow stages around the statistics: score one (layer, channel shard, draw shard); calibrate a layer.

The science lives in `polypsi.stats` and `polypsi.calibration`; this module moves tables
between files and those functions, and writes the per-layer outputs users open.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import Config
from .io import read_table, write_table
from .runtime import get_logger

def channel_shard(channels: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """Channels of one shard: interleaved, so no shard needs the layer's channel count in advance."""
    return channels[channels % n_shards == shard]


def draws_of(shard: int, n_shards: int, m: int) -> list[int]:
    return [d for d in range(m + 1) if d % n_shards == shard]


def load_patch_arrays(topk: pd.DataFrame, emb_tables: list[tuple[pd.DataFrame, np.ndarray]],
                      dataset: pd.DataFrame):
    """Stack embeddings into [n_channels, K, d] (rank order) with the patches' class labels."""
    df = pd.concat([t for t, _ in emb_tables], ignore_index=True)
    z = np.concatenate([e for _, e in emb_tables]) if emb_tables else np.zeros((0, 1), np.float32)
    order = np.lexsort((df["rank"].to_numpy(), df["channel"].to_numpy()))
    df, z = df.iloc[order].reset_index(drop=True), z[order]
    counts = df.groupby("channel").size()
    if counts.nunique() > 1:
        raise ValueError(f"channels have different patch counts {sorted(counts.unique())}; the top-K table is inconsistent")
    channels = counts.index.to_numpy(np.int64)
    k = int(counts.iloc[0]) if len(counts) else 0
    labels_of = dataset.set_index("image_id")["label"]
    merged = df.merge(topk[["channel", "rank", "image_id"]], on=["channel", "rank"], how="left")
    if merged["image_id"].isna().any():
        raise ValueError("embeddings refer to (channel, rank) pairs missing from the top-K table; rerun embed_patches")
    labels = labels_of.loc[merged["image_id"].to_numpy()].to_numpy(np.int64).reshape(len(channels), k)
    return channels, z.reshape(len(channels), k, -1), labels


def score_shard(cfg: Config, layer: str, cshard: int, dshard: int, n_dshards: int, topk_path: str, emb_path: str,
                dataset_path: str, prompts_path: str, out: str, device, log_file: str | None = None) -> None:
    from .stats import TextBank, score_channels

    log = get_logger("polypsi.score", log_file)
    topk, dataset = read_table(topk_path), read_table(dataset_path)
    channels, z, labels = load_patch_arrays(topk, [read_table(emb_path, embedding="embedding")], dataset)
    text = TextBank.from_table(*read_table(prompts_path, embedding="embedding"))
    draws = draws_of(dshard, n_dshards, cfg.nulls.m)
    log.info("layer %s, channel shard %d: %d channels x %d patches x %d dims; draws %s; S-null %s, D-null %s",
             layer, cshard, z.shape[0], z.shape[1], z.shape[2], draws, cfg.nulls.s_null, cfg.nulls.d_null)
    # One call for all draws: the real clustering is computed once and shared by the null draws.
    scores = score_channels(z, labels, channels, text, draws, cfg.stats, cfg.nulls, layer, device, progress=True)
    write_table(scores, out)
    log.info("done")


def calibrate_layer(cfg: Config, layer: str, score_paths: list[str], topk_path: str, emb_paths: list[str],
                    dataset_path: str, geometry: dict, outputs: dict[str, str], log_file: str | None = None) -> None:
    """psi/, null_psi/, patches/ and clusters/ tables of one layer."""
    from .calibration import calibrate
    from .crops import crop_boxes

    log = get_logger("polypsi.calibrate", log_file)
    scores = pd.concat([read_table(p) for p in score_paths], ignore_index=True)
    psi, null_psi = calibrate(scores, cfg.nulls)
    topk, dataset = read_table(topk_path), read_table(dataset_path)
    top1 = topk[topk["rank"] == 0].set_index("channel")["activation"]
    psi["top_activation"] = psi["channel"].map(top1).astype(np.float32)
    dead = ~(psi["top_activation"] > 0)
    # A channel that never fires has arbitrary "top" sites: its scores would describe noise.
    for col in ["S_hat", "Q_hat", "D_hat", "psi", "log_psi"]:
        psi.loc[dead, col] = np.nan
    psi.loc[dead, "status"] = "dead: top activation <= 0"
    log.info("layer %s: %d channels, %d ok, %d dead, %d other flags; %d null neurons",
             layer, len(psi), (psi["status"] == "ok").sum(), dead.sum(),
             ((psi["status"] != "ok") & ~dead).sum(), len(null_psi))
    write_table(psi, outputs["psi"])
    write_table(null_psi, outputs["null_psi"])

    real = scores[scores["draw"] == 0].set_index("channel")
    channels, z, labels = load_patch_arrays(topk, [read_table(p, embedding="embedding") for p in emb_paths], dataset)
    k = z.shape[1]
    patches = topk[topk["channel"].isin(channels)].sort_values(["channel", "rank"]).reset_index(drop=True)
    patches["cluster"] = np.concatenate([np.asarray(real.loc[c, "assignments"], dtype=np.int64) for c in channels])
    patches["label"] = labels.reshape(-1)
    g = geometry["layers"][layer]
    boxes = crop_boxes(patches["u"].to_numpy(), patches["v"].to_numpy(), g, geometry["input_size"])
    patches[["y0", "x0", "y1", "x1"]] = boxes
    write_table(patches, outputs["patches"], embeddings={"embedding": z.reshape(len(channels) * k, -1)})

    rows = []
    for c in channels:
        r = real.loc[c]
        for j in range(len(r["cluster_size"])):
            rows.append((c, j, int(r["cluster_size"][j]), float(r["cluster_silhouette"][j]),
                         r["cluster_concept_1"][j], float(r["cluster_gap"][j]), r["cluster_concept_2"][j],
                         float(r["cluster_similarity_1"][j])))
    clusters = pd.DataFrame(rows, columns=["channel", "cluster", "size", "silhouette", "concept_1", "gap",
                                           "concept_2", "similarity_1"])
    write_table(clusters, outputs["clusters"])
    log.info("done")
