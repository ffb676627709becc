"""Report stages: read a run's tables, write the CSV tables, figures and the browser.

One function per Snakemake rule; every number and figure comes from the files passed in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..io import read_json, read_table, write_csv, write_table
from ..runtime import get_logger
from . import figures, robustness, stats
from .gallery import gallery_table, pick_channels, plot_gallery


def _by_layer(layers: list[str], paths) -> dict[str, pd.DataFrame]:
    paths = list(paths)
    if len(paths) != len(layers):
        raise ValueError(f"expected one file per layer {layers}, got {len(paths)}: {paths}")
    return {layer: read_table(p) for layer, p in zip(layers, paths)}


def _text_bank(path):
    from ..stats import TextBank

    return TextBank.from_table(*read_table(path, embedding="embedding"))


def run_k_sensitivity(cfg: Config, layer: str, patches_path, prompts_path, out, k_values, draws, device="cpu",
                      log_file=None) -> None:
    """Rule k_sensitivity: PSI of every channel from its first k patches, for each k in report.k_values."""
    patches, emb = read_table(patches_path, embedding="embedding")
    res = robustness.k_sensitivity(patches, emb, _text_bank(prompts_path), list(k_values), cfg.stats, cfg.nulls,
                                   draws, layer, device, log_file)
    write_table(res, out)


def run_seed_split(cfg: Config, score_paths, out, log_file=None) -> None:
    """Rule seed_split: PSI calibrated with the odd and with the even null draws of the run's scores."""
    scores = pd.concat([read_table(p) for p in score_paths], ignore_index=True)
    split = robustness.seed_split(scores, cfg.nulls)
    get_logger("polypsi.report", log_file).info("null-seed split: draws %s", split.attrs.get("draws"))
    write_table(split, out)


def run_text_head(cfg: Config, patches_path, prompts_path, sec_emb_paths, sec_prompts_path, out, log_file=None) -> None:
    """Rule text_head: raw D of the run's clusters with the run's embedder and with the second one."""
    patches, emb = read_table(patches_path, embedding="embedding")
    parts = [read_table(p, embedding="embedding") for p in sec_emb_paths]
    sec = pd.concat([t for t, _ in parts], ignore_index=True)
    sec_emb = np.concatenate([e for _, e in parts])
    th = robustness.text_head(patches, emb, _text_bank(prompts_path), sec, sec_emb, _text_bank(sec_prompts_path),
                              cfg.stats.gap_level, cfg.stats.k_max)
    write_table(th, out)


def run_browser(cfg: Config, layers, psi_paths, cluster_paths, patch_paths, dataset_path, geometry_path, out_dir,
                thumb_size: int = 64, log_file=None) -> None:
    """Rule browser: the static neuron browser of all channels."""
    from .browser import build_browser

    patches = {l: pd.read_parquet(p, columns=["channel", "rank", "image_id", "activation", "cluster", "label",
                                              "y0", "x0", "y1", "x1"]) for l, p in zip(layers, patch_paths)}
    build_browser(out_dir, _by_layer(layers, psi_paths), _by_layer(layers, cluster_paths), patches,
                  read_table(dataset_path), int(read_json(geometry_path)["input_size"]), title=f"polypsi · {cfg.run_name}",
                  thumb=thumb_size, log_file=log_file)


def run_report(cfg: Config, layers: list[str], inp, out, log_file=None) -> None:
    """Rule report: the paper's tables and figures.

    `inp` has psi, null_psi, clusters, patches, k_sensitivity, seed_split (lists in layer order),
    text_head (empty when no second embedder), dataset, geometry; `out` names every output file.
    """
    log = get_logger("polypsi.report", log_file)
    rep = cfg.report
    real, null = _by_layer(layers, inp["psi"]), _by_layer(layers, inp["null_psi"])

    auroc = stats.auroc_table(real, null)
    write_csv(auroc, out["auroc"])
    ks = stats.ks_table(real)
    write_csv(ks, out["ks"])
    khat = stats.k_hat_table(real, null, rep.high_psi_quantile)
    write_csv(khat, out["k_hat"])
    diag = stats.null_diagnostics(real, cfg.nulls)
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
