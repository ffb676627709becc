"""Report stages: read a run's tables, write the CSV tables, figures and the browser.

One stage per Snakemake rule (`<rule>_stage(job)`); every number and figure comes from the
job's input files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..calibration import channels_only
from ..io import read_json, read_table, write_csv, write_table
from ..stats import SCORE_COLUMNS, TextBank
from . import robustness, stats
from .browser import build_browser, causal_records


def _by_layer(layers: list[str], paths) -> dict[str, pd.DataFrame]:
    paths = list(paths)
    if len(paths) != len(layers):
        raise ValueError(f"expected one file per layer {layers}, got {len(paths)}: {paths}")
    return {layer: read_table(p) for layer, p in zip(layers, paths)}


def _channels_by_layer(layers: list[str], paths, need: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    """psi/ or null_psi/ tables by layer, real channels only: OR-units (validation units with their own
    rows) enter no statistic, figure, gallery or browser page. `need`: columns every table must have."""
    out = {}
    for layer, df in _by_layer(layers, paths).items():
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ValueError(f"psi table of layer {layer!r} lacks column(s) {missing}; it must come from the "
                             "calibrate stage: rerun it")
        out[layer] = channels_only(df)
    return out


def _text_bank(path):
    return TextBank.from_table(*read_table(path, embedding="embedding"))


def _raw_scores(paths) -> pd.DataFrame | None:
    """The score columns calibration reads (and `k` where present) of score tables, empty ones left out."""
    parts = []
    for p in paths:
        names = pq.read_schema(p).names
        t = pd.read_parquet(p, columns=[c for c in [*SCORE_COLUMNS, "k"] if c in names])
        if len(t):  # an empty shard's float columns would turn the others' integer ones to float
            parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else None


def k_sensitivity_stage(job) -> None:
    """Rule k_sensitivity: PSI of every channel from its first k patches, for each k in report.k_values.

    Tables only: the raw scores of k < K come from the k_scores shards; those at the mined K (in
    report.k_values, or the control when m < nulls.m) are the run's own scores of draws 0..m, the
    same numbers a re-scoring would give (every draw is seeded per channel and draw).
    """
    cfg, layer, log = job.cfg, job.wildcard("layer"), job.logger("polypsi.report")
    m = robustness.k_draws(cfg.report.k_sensitivity_draws, cfg.nulls)
    K = robustness.mined_k(pd.read_parquet(job.input.topk, columns=["channel"]))
    ks = robustness.k_table_ks(cfg.report.k_values, K, cfg.stats, cfg.nulls, m, layer, log)
    subsets = _raw_scores(job.input.k_scores) if any(k < K for k in ks) else None
    full = _raw_scores(job.input.scores) if K in ks else None
    log.info("layer %s: k %s (mined K=%d) calibrated against %d null draws", layer, ks, K, m)
    write_table(robustness.k_sensitivity_table(subsets, full, ks, K, m, cfg.calibration), job.output.table)


def seed_split_stage(job) -> None:
    """Rule seed_split: PSI calibrated with the odd and with the even null draws of the run's scores."""
    scores = pd.concat([read_table(p) for p in job.input.scores], ignore_index=True)
    split = robustness.seed_split(scores, job.cfg.calibration)
    job.logger("polypsi.report").info("null-seed split: draws %s", split.attrs.get("draws"))
    write_table(split, job.output.table)


def text_head_stage(job) -> None:
    """Rule text_head: raw D of the run's clusters with the run's embedder and with the second one."""
    patches, emb = read_table(job.input.patches, embedding="embedding")
    parts = [read_table(p, embedding="embedding") for p in job.input.secondary]
    sec = pd.concat([t for t, _ in parts], ignore_index=True)
    sec_emb = np.concatenate([e for _, e in parts])
    th = robustness.text_head(patches, emb, _text_bank(job.input.prompts), sec, sec_emb,
                              _text_bank(job.input.secondary_prompts), job.cfg.stats.gap_level, job.cfg.stats.k_max)
    write_table(th, job.output.table)


def browser_stage(job) -> None:
    """Rule browser: the static neuron browser of all channels (pages; the sprites come from rule sprites)."""
    cfg, layers = job.cfg, list(job.cfg.model.layers)
    cols = ["channel", "rank", "image_id", "activation", "cluster", "label", "y0", "x0", "y1", "x1"]
    # and the neuron-view cluster of each patch where the run has one (not the embeddings: they are large)
    patches = {l: pd.read_parquet(p, columns=[*cols, *[c for c in ("ne_cluster",) if c in pq.read_schema(p).names]])
               for l, p in zip(layers, job.input.patches)}
    causal = {}  # the insertion protocol's channels, where the run has it (interventions/<layer>_causal.parquet)
    if "causal" in job.input and job.input.causal:
        layer = cfg.intervention_layer
        causal[layer] = causal_records(read_table(job.input.causal[0]), read_table(job.input.trials[0]))
    build_browser(job.output.browser, _channels_by_layer(layers, job.input.psi, ("index",)),
                  _by_layer(layers, job.input.clusters), patches, read_table(job.input.dataset),
                  dict(zip(layers, job.input.sprites)), title=f"polypsi · {cfg.run_name}", thumb=cfg.report.thumb_size,
                  log_file=job.log, causal=causal)


def report_stage(job) -> None:
    """Rule report: the paper's tables and figures.

    Inputs psi, null_psi, clusters, patches, k_sensitivity, seed_split (lists in layer order),
    text_head (empty when no second embedder), dataset, geometry; the outputs name every file.
    """
    from . import figures  # lazy: matplotlib and seaborn, for this stage only (the other report stages draw nothing)
    from .gallery import gallery_table, pick_channels, plot_gallery  # lazy: matplotlib, as above

    cfg, inp, out, log = job.cfg, job.input, job.output, job.logger("polypsi.report")
    layers = list(cfg.model.layers)
    rep = cfg.report
    # The galleries rank by the index: a psi table without it fails here, before any figure is drawn.
    real, null = _channels_by_layer(layers, inp["psi"], ("index",)), _channels_by_layer(layers, inp["null_psi"])

    auroc = stats.auroc_table(real, null)
    write_csv(auroc, out["auroc"])
    ks = stats.ks_table(real)
    write_csv(ks, out["ks"])
    khat = stats.k_hat_table(real, null, rep.high_psi_quantile)
    write_csv(khat, out["k_hat"])
    diag = stats.null_diagnostics(real, cfg.nulls, cfg.calibration.sd_tol)
    write_csv(diag, out["null_diagnostics"])
    flagged = diag[diag.n_low_sd > 0]
    for r in flagged.itertuples():
        log.warning("%s: %d of %d channels have a %s-null (%s) sd below %g; their %s_hat is unreliable",
                    r.layer, r.n_low_sd, r.n_channels, r.component, r.null, r.sd_tol, r.component)
    log.info("AUROC of PSI: %s", {r.layer: round(r.auroc, 4) for r in auroc[auroc.metric == "psi"].itertuples()})

    rows = []
    subsets = _by_layer(layers, inp["k_sensitivity"])
    K = cfg.mining.topk
    for layer, path in zip(layers, inp["patches"]):
        counts = pd.read_parquet(path, columns=["channel"]).groupby("channel").size()
        K = int(counts.max()) if len(counts) else K  # patches per channel as mined
        rows += robustness.k_sensitivity_rows(layer, subsets[layer], real[layer], rep.k_values, K, cfg.nulls.m)
    splits = _by_layer(layers, inp["seed_split"])
    for layer in layers:
        rows += robustness.seed_rows(layer, splits[layer], real[layer])
    th = _by_layer(layers, inp["text_head"]) if len(inp["text_head"]) else None
    sec_name = None
    if cfg.secondary_embedder is not None:
        sec_name = f"{cfg.secondary_embedder.source}:{cfg.secondary_embedder.name}"
    for layer in layers:
        rows += robustness.text_head_rows(layer, None if th is None else th[layer], real[layer], sec_name)
    rob = pd.DataFrame(rows, columns=robustness.ROBUSTNESS_COLUMNS)
    write_csv(rob, out["robustness"])

    figures.psi_histograms(real, null, out["fig_hist"])
    figures.roc_curves(real, null, out["fig_roc"])
    figures.depth_violins(real, ks, out["fig_violin"])
    figures.k_sensitivity(rob, out["fig_k"], K)
    figures.k_hat_hist(khat, out["fig_khat"])
    if th is None:
        figures.message_figure(out["fig_text_head"], "Text-head sensitivity (D)",
                               "Skipped: no secondary_embedder configured.\nSet `secondary_embedder:` in the config.")
    else:
        d = pd.concat([t.assign(layer=l)[t.channel.isin(stats.ok_rows(real[l]).channel)] for l, t in th.items()])
        figures.paired_scatter(d, "D_primary", "D_secondary", out["fig_text_head"], "raw D (run embedder)",
                               f"raw D ({sec_name})", rob, "text_head")
    d = pd.concat([s.assign(layer=l) for l, s in splits.items()])
    d = d[(d.status_odd == "ok") & (d.status_even == "ok")]
    figures.paired_scatter(d.assign(log_odd=np.log(d.psi_odd), log_even=np.log(d.psi_even)), "log_odd", "log_even",
                           out["fig_seeds"], "log PSI (odd null draws)", "log PSI (even null draws)", rob, "null_seeds")

    dataset = read_table(inp["dataset"])
    input_size = int(read_json(inp["geometry"])["input_size"])
    tables = []
    for li, layer in enumerate(layers):
        clusters = read_table(inp["clusters"][li])
        patches = pd.read_parquet(inp["patches"][li], columns=["channel", "rank", "image_id", "cluster", "y0", "x0",
                                                               "y1", "x1"])
        for which, key in (("high", "gallery_high"), ("low", "gallery_low")):
            chosen = pick_channels(real[layer], rep.gallery_channels, which)
            t = gallery_table(layer, chosen, clusters, which)
            tables.append(t)
            plot_gallery(layer, which, t, patches, dataset, input_size, out[key][li], rep.gallery_patches, rep.thumb_size)
    write_csv(pd.concat(tables, ignore_index=True), out["gallery"])
    log.info("report written: %s", Path(out["auroc"]).parent)
