"""Workflow stages around the statistics: score one (layer, channel shard, draw shard); calibrate a layer.

The science lives in `polypsi.stats` and `polypsi.calibration`; this module moves tables
between files and those functions, and writes the per-layer outputs users open.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .calibration import calibrate, dead_rows
from .index import add_index, index_chance
from .crops import crop_boxes
from .errors import StageError
from .io import read_json, read_table, write_table
from .shards import draws_of
from .stats import SCORE_COLUMNS, TextBank
from .validation.or_units import build_or_units


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


def top_activations(topk: pd.DataFrame, channels: np.ndarray, k: int) -> np.ndarray:
    """Activations [n, k] of the channels' top patches, in load_patch_arrays' order (channel, then rank)."""
    rows = topk[topk["channel"].isin(channels)].sort_values(["channel", "rank"])
    if len(rows) != len(channels) * k:
        raise StageError(f"the top-K table has {len(rows)} rows for {len(channels)} channels x {k} embedded patches; "
                         "rerun merge_topk and embed_patches")
    return rows["activation"].to_numpy(np.float64).reshape(len(channels), k)


def score_stage(job) -> None:
    """Rule score: raw S, Q, D of one layer's channel shard for one shard of the draws (0 = real, 1..M = nulls)."""
    cfg, log = job.cfg, job.logger("polypsi.score")
    # OR-units (rule score_or_units) are one table per layer: no channel-shard wildcard.
    layer, cshard, dshard = job.wildcard("layer"), job.wildcards.get("cshard", "OR-units"), int(job.wildcard("dshard"))
    topk, dataset = read_table(job.input.topk), read_table(job.input.dataset)
    if topk.empty:  # a layer without eligible OR-unit pairs
        log.info("layer %s: no units to score", layer)
        write_table(pd.DataFrame({c: pd.Series(dtype="float64") for c in SCORE_COLUMNS}), job.output.scores)
        return
    channels, z, labels = load_patch_arrays(topk, [read_table(job.input.embeddings, embedding="embedding")], dataset)
    text = TextBank.from_table(*read_table(job.input.prompts, embedding="embedding"))
    draws = draws_of(dshard, cfg.shards.draws, cfg.nulls.m)
    log.info("layer %s, channel shard %s: %d channels x %d patches x %d dims; draws %s; S-null %s, D-null %s",
             layer, cshard, z.shape[0], z.shape[1], z.shape[2], draws, cfg.nulls.s_null, cfg.nulls.d_null)
    # One call for all draws: the real clustering is computed once and shared by the null draws.
    from .stats import score_channels  # lazy: torch; or_units and calibrate import this module too

    scores = score_channels(z, labels, channels, text, draws, cfg.stats, cfg.nulls, layer, job.device, progress=True,
                            activations=top_activations(topk, channels, z.shape[1]))
    write_table(scores, job.output.scores)
    log.info("done")


def _with_peers(psi: pd.DataFrame, channels: np.ndarray, z: np.ndarray, topk: pd.DataFrame) -> pd.DataFrame:
    """psi with the peers' scores of each unit (NaN for dead channels), from its top patches and activations."""
    from .stats.peers import pach_polysemanticity, semanticlens_polysemanticity  # lazy: torch (or_units needs none)

    act = top_activations(topk, channels, z.shape[1])
    peers = pd.DataFrame({
        "channel": channels,
        "semanticlens": semanticlens_polysemanticity(z, act),
        "monosemanticity": pach_polysemanticity(z, act),
    })
    out = psi.merge(peers, on="channel", how="left", validate="one_to_one")
    out.loc[dead_rows(out), ["semanticlens", "monosemanticity"]] = np.nan
    return out


def _or_unit_rows(job, chance: float, dataset: pd.DataFrame, scores: pd.DataFrame,
                  topk: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """psi and null_psi rows of the layer's OR-units (their draws' scores and top-K table given), calibrated
    like channels against their own draws."""
    cfg = job.cfg
    units = read_table(job.input.or_units)
    if scores.empty:
        return pd.DataFrame(), pd.DataFrame()
    psi, null_psi = calibrate(scores, cfg.nulls.m, cfg.calibration)
    top1 = topk[topk["rank"] == 0].set_index("channel")["activation"]
    psi["top_activation"] = psi["channel"].map(top1).astype(np.float32)
    channels, z, _ = load_patch_arrays(topk, [read_table(job.input.or_embeddings, embedding="embedding")], dataset)
    psi = _with_peers(add_index(psi, chance, cfg.index), channels, z, topk)
    null_psi = add_index(null_psi, chance, cfg.index)
    parts = units.set_index("channel")[["part_a", "part_b"]]
    for t in (psi, null_psi):
        t["unit_kind"] = "or_unit"
        t[["part_a", "part_b"]] = parts.loc[t["channel"]].to_numpy()
    return psi, null_psi


def or_units_stage(job) -> None:
    """Rule or_units: the layer's synthetic OR-units, their top-K table and their (reused) patch embeddings."""
    cfg, log, layer = job.cfg, job.logger("polypsi.or_units"), job.wildcard("layer")
    topk = read_table(job.input.topk)
    parts = [read_table(p, embedding="embedding") for p in job.input.embeddings]
    emb = pd.concat([t for t, _ in parts], ignore_index=True)
    Z = np.concatenate([e for _, e in parts])
    top1 = topk[topk["rank"] == 0].set_index("channel")["activation"]
    live = top1.index[top1 > 0].to_numpy()
    truth = None
    if "truth" in job.input and job.input.truth:
        t = pd.read_csv(job.input.truth[0])  # UNIT_TRUTH is a list: one file or none
        truth = t[t["layer"] == layer]
    units, table, z = build_or_units(layer, topk, emb, Z, live, truth, cfg.validation, cfg.mining.one_site_per_image)
    if units.empty:
        log.warning("layer %s: no eligible pair of channels for OR-units; the recovery report has no OR-unit rows", layer)
    else:
        log.info("layer %s: %d OR-units (%s)", layer, len(units), units["rule"].iloc[0])
    write_table(units, job.output.units)
    write_table(table, job.output.topk)
    write_table(table[["channel", "rank"]], job.output.embeddings, embeddings={"embedding": z})


def _neuron_view(job, psi: pd.DataFrame, scores: pd.DataFrame, topk: pd.DataFrame, dataset: pd.DataFrame,
                 channels: np.ndarray, or_scores: pd.DataFrame | None,
                 or_topk: pd.DataFrame | None) -> tuple[pd.DataFrame, np.ndarray]:
    """psi with the neuron-embedding scores of every unit, and the neuron-view cluster of each channel's patches.

    OR-units reuse their parts' neuron embeddings, row for row, as they reuse their parts' crops.
    """
    from .stats.neuron import NEURON_COLUMNS, neuron_scores  # lazy: torch and scikit-learn (or_units needs neither)

    cfg, layer = job.cfg, job.wildcard("layer")
    ne_table, ne = read_table(job.input.neuron_embeddings, embedding="embedding")
    units, Z, labels, clip = [], [], [], []
    real = scores[scores["draw"] == 0].set_index("channel")
    ch, z, y = load_patch_arrays(topk, [(ne_table, ne)], dataset)
    if not np.array_equal(ch, channels):
        raise StageError(f"{job.input.neuron_embeddings} covers other channels than the top-K table; "
                         "rerun neuron_embeddings")
    units.append(ch)
    Z.append(z)
    labels.append(y)
    clip.append(np.stack([np.asarray(real.loc[c, "assignments"], dtype=np.int64) for c in ch]))
    if or_scores is not None and (psi["unit_kind"] == "or_unit").any():
        or_topk = or_topk.sort_values(["channel", "rank"])
        or_ids, k = or_topk["channel"].unique(), z.shape[1]
        # z holds channel ch[i]'s rank r (ranks 0..K-1) at [i, r]
        part = pd.Series(np.arange(len(ch)), index=ch).loc[or_topk["part_channel"]].to_numpy()
        units.append(or_ids)
        Z.append(z[part, or_topk["part_rank"].to_numpy()].reshape(len(or_ids), k, -1))
        labels_of = dataset.set_index("image_id")["label"]
        labels.append(labels_of.loc[or_topk["image_id"].to_numpy()].to_numpy(np.int64).reshape(len(or_ids), k))
        or_real = or_scores[or_scores["draw"] == 0].set_index("channel")
        clip.append(np.stack([np.asarray(or_real.loc[c, "assignments"], dtype=np.int64) for c in or_ids]))
    table, assign = neuron_scores(np.concatenate(Z), np.concatenate(labels), np.concatenate(clip),
                                  np.concatenate(units), stats=cfg.stats, seed=cfg.nulls.seed, layer=layer,
                                  threshold=cfg.neuron_embeddings.foote_threshold)
    out = psi.merge(table, on="channel", how="left", validate="one_to_one")
    out.loc[dead_rows(out), NEURON_COLUMNS] = np.nan
    return out, assign[: len(channels)]


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
    live = psi.loc[~dead, "channel"].to_numpy()
    # The chance level comes from the real channels' null draws only (OR-units never enter them).
    chance = index_chance(scores, cfg.nulls.m, cfg.calibration.holdout_null_neurons, live)
    channels, z, labels = load_patch_arrays(topk, [read_table(p, embedding="embedding") for p in job.input.embeddings],
                                            dataset)
    psi = _with_peers(add_index(psi, chance, cfg.index), channels, z, topk)
    null_psi = add_index(null_psi, chance, cfg.index)
    null_psi.loc[~null_psi["channel"].isin(live), "index"] = np.nan  # the null neuron of a dead channel
    psi["unit_kind"], null_psi["unit_kind"] = "channel", "channel"
    or_scores = or_topk = None
    if "or_scores" in job.input:
        or_scores = pd.concat([read_table(p) for p in job.input.or_scores], ignore_index=True)
        or_topk = read_table(job.input.or_topk)
        or_psi, or_null = _or_unit_rows(job, chance, dataset, or_scores, or_topk)
        psi = pd.concat([psi, or_psi], ignore_index=True)
        null_psi = pd.concat([null_psi, or_null], ignore_index=True)
    ne_clusters = None
    if "neuron_embeddings" in job.input:
        psi, ne_clusters = _neuron_view(job, psi, scores, topk, dataset, channels, or_scores, or_topk)
    ch = psi[psi["unit_kind"] == "channel"]  # OR-units are counted apart
    log.info("layer %s: %d channels, %d ok, %d dead, %d other flags; %d null neurons; %d OR-units; "
             "index chance level (median null S x contrast) %.4f",
             layer, len(ch), (ch["status"] == "ok").sum(), dead.sum(), ((ch["status"] != "ok") & ~dead).sum(),
             len(null_psi), (psi["unit_kind"] == "or_unit").sum(), chance)
    write_table(psi, job.output.psi)
    write_table(null_psi, job.output.null_psi)

    real = scores[scores["draw"] == 0].set_index("channel")
    k = z.shape[1]
    patches = topk[topk["channel"].isin(channels)].sort_values(["channel", "rank"]).reset_index(drop=True)
    patches["cluster"] = np.concatenate([np.asarray(real.loc[c, "assignments"], dtype=np.int64) for c in channels])
    patches["label"] = labels.reshape(-1)
    if ne_clusters is not None:  # the same patches clustered on the model's own view (browser)
        patches["ne_cluster"] = ne_clusters.reshape(-1)
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
