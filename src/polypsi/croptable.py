"""The distinct crops of a layer, how their embedding is split into jobs, and the per-channel patch tables.

Many top-K sites share a crop: the same site is in the top-K of several channels, and the crop
box is shifted to lie inside the image, so near the border (at ResNet-50 layer4, 160 px crops on
a 7 x 7 grid of 224 px) many sites of one image share one box. A layer's crops are therefore
deduplicated by (image, crop box) over all its channels, and the embedding jobs split those
distinct crops, not the channels: each distinct crop is embedded exactly once per layer, for any
number of shards (`embed_patches`). A table-only job (`patch_embeddings`) then writes each
channel shard's (channel, rank) rows with its crops' embeddings, the tables scoring reads.

Table work (no torch) but for encoding a shard's crops (`embed_patches_stage` imports the embedder only
for a shard with crops): the gather job and an empty shard start in about a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .crops import crop_boxes
from .errors import StageError
from .io import read_json, read_table, write_table
from .runtime import builder_threads
from .shards import channel_shard, shard_rows

CROP_COLUMNS = ["image_id", "y0", "x0", "y1", "x1"]


def site_crops(topk: pd.DataFrame, geom: dict, input_size: int) -> pd.DataFrame:
    """The crop box (image_id, y0, x0, y1, x1) of every row of a top-K table, row for row."""
    boxes = crop_boxes(topk["u"].to_numpy(), topk["v"].to_numpy(), geom, input_size)
    out = pd.DataFrame(boxes.astype(np.int64), columns=CROP_COLUMNS[1:], index=topk.index)
    out.insert(0, "image_id", topk["image_id"].to_numpy(np.int64))
    return out


def distinct_crops(topk: pd.DataFrame, geom: dict, input_size: int) -> pd.DataFrame:
    """The layer's distinct crops over all channels, sorted by image, then box (one image's crops together)."""
    return site_crops(topk, geom, input_size).drop_duplicates().sort_values(CROP_COLUMNS).reset_index(drop=True)


# An embedding job loads its embedder (open_clip's import and the model: about 6 s on a 2-core CPU) before
# its first batch: a layer's crops go to fewer jobs when they fill fewer than this many batches each
# (8 batches of 256 crops of ViT-B/32 take about 3 minutes there, so the load stays near 3% of a job).
MIN_BATCHES_PER_JOB = 8


def crop_shard(crops: pd.DataFrame, shard: int, n_shards: int, batch_size: int = 1) -> pd.DataFrame:
    """Contiguous block `shard` of `n_shards` of the distinct crops (an image's crops stay mostly in one job),
    of whole embedder batches but for the last block, and at least MIN_BATCHES_PER_JOB batches per block
    (later blocks empty: their jobs load no embedder)."""
    min_units = MIN_BATCHES_PER_JOB if batch_size > 1 else 1
    return shard_rows(crops, shard, n_shards, batch_size, min_units).reset_index(drop=True)


def patch_embeddings(topk: pd.DataFrame, channels: np.ndarray, geom: dict, input_size: int,
                     crops: pd.DataFrame, z: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The (channel, rank) rows of `channels` and their crops' embeddings, from the crop table `crops` [n] and `z` [n, d]."""
    rows = topk[topk["channel"].isin(channels)].reset_index(drop=True)
    pos = pd.Series(np.arange(len(crops)), index=pd.MultiIndex.from_frame(crops[CROP_COLUMNS]))
    want = pd.MultiIndex.from_frame(site_crops(rows, geom, input_size))
    missing = ~want.isin(pos.index)
    if missing.any():
        raise StageError(f"{int(missing.sum())} patches have no embedded crop (first: {want[missing][0]}); "
                         "the crop tables do not match the top-K table: rerun embed_patches")
    return rows[["channel", "rank"]].copy(), z[pos.loc[want].to_numpy()]


def embed_patches_stage(job) -> None:
    """Rule embed_patches (and embed_patches_secondary): one crop shard of a layer's distinct crops.

    `shards.channels` sets how many jobs share a layer's crops; rule patch_embeddings then writes the
    per-channel-shard patch tables from them. A shard left empty (crop_shard) writes its empty table without
    importing torch or the embedder: about 3 s of start-up a job less.
    """
    cfg, log, layer, shard = job.cfg, job.logger("polypsi.embed"), job.wildcard("layer"), int(job.wildcard("cshard"))
    topk, geometry = read_table(job.input.topk), read_json(job.input.geometry)
    geom, size = geometry["layers"][layer], geometry["input_size"]
    every = distinct_crops(topk, geom, size)
    crops = crop_shard(every, shard, cfg.shards.channels, cfg.embedder.batch_size)
    n_sites = len(topk[["image_id", "u", "v"]].drop_duplicates())
    log.info("layer %s, crop shard %d of %d: %d of the layer's %d distinct crops (%d patches at %d distinct sites, "
             "%d channels; side %d px)", layer, shard, cfg.shards.channels, len(crops), len(every), len(topk), n_sites,
             topk["channel"].nunique(), geom["crop"])
    z = np.zeros((0, 1), np.float32)
    if len(crops):
        from .embedding import embed_crops, load_embedder  # lazy: torch, for a shard with crops

        paths = read_table(job.input.dataset).set_index("image_id").loc[crops["image_id"].to_numpy(), "path"].tolist()
        device = job.device
        # the embedder loads once the first crops are being cut (reading images overlaps open_clip's import)
        z = embed_crops(lambda: load_embedder(cfg.embedder, cfg, device), paths, crops[CROP_COLUMNS[1:]].to_numpy(),
                        size, cfg.embedder.batch_size, log, builder_threads(device, job.threads))
    write_table(crops, job.output.crops, embeddings={"embedding": z})
    log.info("done: %d crops embedded", len(crops))


def patch_embeddings_stage(job) -> None:
    """Rule patch_embeddings (and patch_embeddings_secondary): every channel shard's patch table of one layer."""
    cfg, log, layer = job.cfg, job.logger("polypsi.embed"), job.wildcard("layer")
    topk, geometry = read_table(job.input.topk), read_json(job.input.geometry)
    geom, size = geometry["layers"][layer], geometry["input_size"]
    parts = [read_table(p, embedding="embedding") for p in job.input.crops]
    crops = pd.concat([t for t, _ in parts], ignore_index=True)
    z = np.concatenate([e for _, e in parts if len(e)]) if len(crops) else np.zeros((0, 1), np.float32)
    if crops.duplicated(CROP_COLUMNS).any():
        raise StageError(f"layer {layer}: a crop was embedded twice across the crop shards; rerun embed_patches")
    layer_channels = np.unique(topk["channel"].to_numpy())
    outputs = job.output.embeddings
    for shard, path in enumerate([outputs] if isinstance(outputs, str) else outputs):
        channels = channel_shard(layer_channels, shard, cfg.shards.channels)
        if len(channels) == 0:  # the plan refuses this when it can probe the model
            raise StageError(f"layer {layer} has {len(layer_channels)} channels, fewer than shards.channels "
                             f"({cfg.shards.channels}): channel shard {shard} is empty; set shards.channels "
                             f"to at most {len(layer_channels)}")
        rows, emb = patch_embeddings(topk, channels, geom, size, crops, z)
        write_table(rows, path, embeddings={"embedding": emb})
    log.info("layer %s: %d patches of %d channels from %d distinct crops, each embedded once (%d crop shards)",
             layer, len(topk), len(layer_channels), len(crops), len(parts))
