"""Workflow stages around the statistics: score one (layer, channel shard, draw shard); calibrate a layer.

The science lives in `polypsi.stats` and `polypsi.calibration`; this module moves tables
between files and those functions, and writes the per-layer outputs users open.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .calibration import calibrate
from .crops import crop_boxes
from .errors import StageError
from .io import read_json, read_table, write_table
from .shards import draws_of
from .stats import TextBank, score_channels


def load_patch_arrays(topk: pd.DataFrame, emb_tables: list[tuple[pd.DataFrame, np.ndarray]],
                      dataset: pd.DataFrame):
    """Stack embeddings into [n_channels, K, d] (rank order) with the patches' class labels."""
    df = pd.concat([t for t, _ in emb_tables], ignore_index=True)
    z = np.concatenate([e for _, e in emb_tables]) if emb_tables else np.zeros((0, 1), np.float32)
    order = np.lexsort((df["rank"].to_numpy(), df["channel"].to_numpy()))
    df, z = df.iloc[order].reset_index(drop=True), z[order]
    counts = df.groupby("channel").size()
    if counts.nunique() > 1:
        raise StageError(f"channels have different patch counts {sorted(counts.unique())}; the top-K table is inconsistent")
    channels = counts.index.to_numpy(np.int64)
    k = int(counts.iloc[0]) if len(counts) else 0
    labels_of = dataset.set_index("image_id")["label"]
    merged = df.merge(topk[["channel", "rank", "image_id"]], on=["channel", "rank"], how="left")
    if merged["image_id"].isna().any():
        raise StageError("embeddings refer to (channel, rank) pairs missing from the top-K table; rerun embed_patches")
    labels = labels_of.loc[merged["image_id"].to_numpy()].to_numpy(np.int64).reshape(len(channels), k)
    return channels, z.reshape(len(channels), k, -1), labels


def score_stage(job) -> None:
    """Rule score: raw S, Q, D of one layer's channel shard for one shard of the draws (0 = real, 1..M = nulls)."""
    cfg, log = job.cfg, job.logger("polypsi.score")
    layer, cshard, dshard = job.wildcard("layer"), int(job.wildcard("cshard")), int(job.wildcard("dshard"))
    topk, dataset = read_table(job.input.topk), read_table(job.input.dataset)
    channels, z, labels = load_patch_arrays(topk, [read_table(job.input.embeddings, embedding="embedding")], dataset)
    text = TextBank.from_table(*read_table(job.input.prompts, embedding="embedding"))
    draws = draws_of(dshard, cfg.shards.draws, cfg.nulls.m)
    log.info("layer %s, channel shard %d: %d channels x %d patches x %d dims; draws %s; S-null %s, D-null %s",
             layer, cshard, z.shape[0], z.shape[1], z.shape[2], draws, cfg.nulls.s_null, cfg.nulls.d_null)
    # One call for all draws: the real clustering is computed once and shared by the null draws.
    scores = score_channels(z, labels, channels, text, draws, cfg.stats, cfg.nulls, layer, job.device, progress=True)
    write_table(scores, job.output.scores)
    log.info("done")


def calibrate_stage(job) -> None:
    """Rule calibrate: the psi/, null_psi/, patches/ and clusters/ tables of one layer."""
    cfg, log, layer = job.cfg, job.logger("polypsi.calibrate"), job.wildcard("layer")
    geometry = read_json(job.input.geometry)
    scores = pd.concat([read_table(p) for p in job.input.scores], ignore_index=True)
    psi, null_psi = calibrate(scores, cfg.nulls.m, cfg.calibration)
    topk, dataset = read_table(job.input.topk), read_table(job.input.dataset)
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
    write_table(psi, job.output.psi)
    write_table(null_psi, job.output.null_psi)

    real = scores[scores["draw"] == 0].set_index("channel")
    channels, z, labels = load_patch_arrays(topk, [read_table(p, embedding="embedding") for p in job.input.embeddings],
                                            dataset)
    k = z.shape[1]
    patches = topk[topk["channel"].isin(channels)].sort_values(["channel", "rank"]).reset_index(drop=True)
    patches["cluster"] = np.concatenate([np.asarray(real.loc[c, "assignments"], dtype=np.int64) for c in channels])
    patches["label"] = labels.reshape(-1)
    g = geometry["layers"][layer]
    boxes = crop_boxes(patches["u"].to_numpy(), patches["v"].to_numpy(), g, geometry["input_size"])
    patches[["y0", "x0", "y1", "x1"]] = boxes
    write_table(patches, job.output.patches, embeddings={"embedding": z.reshape(len(channels) * k, -1)})

    rows = []
    for c in channels:
        r = real.loc[c]
        for j in range(len(r["cluster_size"])):
            rows.append((c, j, int(r["cluster_size"][j]), float(r["cluster_silhouette"][j]),
                         r["cluster_concept_1"][j], float(r["cluster_gap"][j]), r["cluster_concept_2"][j],
                         float(r["cluster_similarity_1"][j])))
    clusters = pd.DataFrame(rows, columns=["channel", "cluster", "size", "silhouette", "concept_1", "gap",
                                           "concept_2", "similarity_1"])
    write_table(clusters, job.output.clusters)
    log.info("done")
