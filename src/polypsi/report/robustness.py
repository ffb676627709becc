"""Robustness analyses from a run's own outputs (paper 5.4 and Figs. 4, 6), without mining again.

- K sensitivity: re-score the first k mined patches of every channel (real data and null draws)
  and calibrate, for each k; compare the PSI ranking with the run's ranking at the mined K.
- Null-seed robustness: calibrate the real scores against two disjoint halves of the null
  draws (odd vs even draw numbers) already in scores/; compare the two PSI rankings.
- Text-head sensitivity: D of the same clusters measured with a second embedder (its image
  embeddings for the prototypes, its text embeddings for the concepts); compare raw D.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..calibration import calibrate
from ..config import CalibrationConfig, NullConfig, StatsConfig
from ..runtime import get_logger
from ..stats import SCORE_COLUMNS
from .stats import ok_rows, spearman

ROBUSTNESS_COLUMNS = ["analysis", "layer", "setting", "reference", "rho", "pvalue", "n", "note"]


def patch_arrays(patches: pd.DataFrame, emb: np.ndarray, k: int | None = None):
    """(channels [n], Z [n, k, d], labels [n, k], clusters [n, k]) from patches/<layer>.parquet, in rank order.

    With k, only each channel's first k patches (ranks 0..k-1 of the mined top-K) are kept.
    """
    order = np.lexsort((patches["rank"].to_numpy(), patches["channel"].to_numpy()))
    df = patches.iloc[order].reset_index(drop=True)
    z = emb[order]
    pos = df.groupby("channel").cumcount().to_numpy()  # position within the channel's ranked patches
    counts = df.groupby("channel").size()
    if counts.nunique() > 1:
        raise ValueError(f"patches table: channels have different patch counts {sorted(counts.unique())}")
    K = int(counts.iloc[0]) if len(counts) else 0
    if k is not None:
        if k > K:
            raise ValueError(f"K-sensitivity k={k} exceeds the {K} mined patches per channel; lower report.k_values")
        keep = pos < k
        df, z, K = df[keep].reset_index(drop=True), z[keep], k
    channels = counts.index.to_numpy(np.int64)
    n = len(channels)
    return (channels, z.reshape(n, K, -1), df["label"].to_numpy(np.int64).reshape(n, K),
            df["cluster"].to_numpy(np.int64).reshape(n, K))


def _no_holdout(cal: CalibrationConfig) -> CalibrationConfig:
    # Re-scored subsets and split halves are compared with real channels only: every draw is a reference.
    return cal.model_copy(update={"holdout_null_neurons": False})


def mined_k(topk: pd.DataFrame) -> int:
    """K: the patches mined per channel (rows per channel of the top-K or patches table)."""
    return int(topk.groupby("channel").size().max()) if len(topk) else 0


def k_draws(m: int | None, nulls: NullConfig) -> int:
    """The null draws of the K-sensitivity analysis: report.k_sensitivity_draws, or nulls.m when unset."""
    m = nulls.m if m is None else int(m)
    if not 3 <= m <= nulls.m:
        raise ValueError(f"report.k_sensitivity_draws={m} must lie in 3..nulls.m ({nulls.m})")
    return m


def k_table_ks(k_values: list[int], K: int, stats_cfg: StatsConfig, nulls: NullConfig, m: int, layer: str = "",
               log=None) -> list[int]:
    """The k of the K-sensitivity table's rows, ascending: report.k_values, plus the mined K (the control)
    when m < nulls.m, without the k that cannot be clustered (k <= stats.k_max)."""
    ks = sorted(set(int(k) for k in k_values) | ({K} if m < nulls.m else set()))
    over = [k for k in ks if k > K]
    if over:
        raise ValueError(f"K-sensitivity k={over[0]} exceeds the {K} mined patches per channel; lower report.k_values")
    for k in ks:
        if k <= stats_cfg.k_max and log is not None:
            log.info("layer %s: k=%d skipped (needs k > stats.k_max=%d)", layer, k, stats_cfg.k_max)
    return [k for k in ks if k > stats_cfg.k_max]


def k_subset_scores(z: np.ndarray, labels: np.ndarray, channels: np.ndarray, text, ks: list[int], draws: list[int],
                    stats_cfg: StatsConfig, nulls: NullConfig, layer: str, device="cpu", activations=None,
                    log=None, progress: bool = False) -> pd.DataFrame:
    """Raw scores (score_channels' rows plus `k`) of every channel's first k patches, for each k and the given draws.

    z [n, K, d], labels [n, K] and activations [n, K] (optional: they only weigh the index's contrast)
    hold each channel's patches in rank order, so its first k patches are ranks 0..k-1. Draws are
    seeded per (nulls.seed, layer, channel, draw): any split of channels or draws gives the same rows.
    """
    if not (ks and draws and len(channels)):  # e.g. a draw shard with no draw up to m
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in [*SCORE_COLUMNS, "k"]})
    from ..stats import score_channels  # lazy: torch; the null-seed split (tables only) imports this module too

    frames = []
    for k in ks:
        if log is not None:
            log.info("layer %s: scoring the first %d patches of %d channels, draws %s", layer, k, len(channels), draws)
        act = None if activations is None else np.ascontiguousarray(activations[:, :k])
        s = score_channels(np.ascontiguousarray(z[:, :k]), np.ascontiguousarray(labels[:, :k]), channels, text, draws,
                           stats_cfg, nulls, layer, device, progress=progress, activations=act)
        frames.append(s.assign(k=k))
    return pd.concat(frames, ignore_index=True)


def k_sensitivity_table(subsets: pd.DataFrame | None, full: pd.DataFrame | None, ks: list[int], K: int, m: int,
                        cal: CalibrationConfig) -> pd.DataFrame:
    """Long table (k, m, channel, psi, hats, status): for each k of `ks`, PSI calibrated against null draws 1..m.

    subsets: raw scores with a `k` column (k_subset_scores) of every k < K; full: raw scores at the
    mined K (the run's own scores/ hold them), needed when K is in ks. Rows of draws above m are ignored.
    """
    frames = []
    for k in ks:
        raw = full if k == K else (subsets[subsets["k"] == k] if subsets is not None else None)
        if raw is None or raw.empty:
            raise ValueError(f"K-sensitivity: no raw scores for k={k}" + ("" if k == K else "; rerun k_scores"))
        psi, _ = calibrate(raw[raw["draw"] <= m], m, _no_holdout(cal))
        cols = [c for c in ["channel", "S", "Q", "D", "S_hat", "Q_hat", "D_hat", "psi", "log_psi", "k_hat", "status"]
                if c in psi.columns]
        frames.append(psi[cols].assign(k=k, m=m))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["k", "m", "channel", "psi"])


def k_sensitivity(patches: pd.DataFrame, emb: np.ndarray, text, k_values: list[int], stats_cfg: StatsConfig,
                  nulls: NullConfig, cal: CalibrationConfig, m: int | None, layer: str, device="cpu",
                  log=None) -> pd.DataFrame:
    """Long table (k, m, channel, psi, hats, status) of the re-scored subsets, in one process.

    When m < nulls.m, the full K is also re-scored with m draws: comparing it with the run's own
    PSI shows how much of the rank change comes from the smaller null sample rather than from k.
    The workflow computes the same table in shards (rules k_scores and k_sensitivity), taking the
    rows at the mined K from the run's own scores.
    """
    from ..stats import score_channels  # lazy: torch; the null-seed split (tables only) imports this module too

    log = log or get_logger("polypsi.report")
    m = k_draws(m, nulls)
    channels, z, labels, _ = patch_arrays(patches, emb)
    K = z.shape[1]
    ks = k_table_ks(k_values, K, stats_cfg, nulls, m, layer, log)
    draws = list(range(m + 1))
    subsets = k_subset_scores(z, labels, channels, text, [k for k in ks if k < K], draws, stats_cfg, nulls, layer,
                              device, log=log)
    full = None
    if K in ks:
        log.info("layer %s: scoring all %d patches of every channel, %d null draws", layer, K, m)
        full = score_channels(z, labels, channels, text, draws, stats_cfg, nulls, layer, device)
    return k_sensitivity_table(subsets, full, ks, K, m, cal)


def k_sensitivity_rows(layer: str, subsets: pd.DataFrame, psi: pd.DataFrame, k_values: list[int], K: int,
                       m_full: int) -> list[dict]:
    """robustness.csv rows: Spearman of PSI at each k against the run's PSI at the mined K."""
    ref = ok_rows(psi).set_index("channel")["psi"]
    rows = []
    ks = sorted(set(int(k) for k in k_values) | set(subsets["k"].unique().tolist() if len(subsets) else []))
    for k in ks:
        sub = subsets[subsets["k"] == k] if len(subsets) else subsets
        m = int(sub["m"].iloc[0]) if len(sub) else m_full
        setting = f"K={k}" if not (k == K and m < m_full) else f"K={k}, {m} draws"
        row = dict(analysis="k_sensitivity", layer=layer, setting=setting, reference=f"K={K}, {m_full} draws")
        if sub.empty:
            rows.append({**row, "rho": np.nan, "pvalue": np.nan, "n": 0,
                         "note": "skipped: k must exceed stats.k_max"})
            continue
        s = ok_rows(sub).set_index("channel")["psi"]
        both = ref.index.intersection(s.index)
        rho, p, n = spearman(ref.loc[both].to_numpy(), s.loc[both].to_numpy())
        note = f"{m} null draws" + ("; control for the smaller null sample" if k == K else "")
        rows.append({**row, "rho": rho, "pvalue": p, "n": n, "note": note})
    return rows


def seed_split(scores: pd.DataFrame, cal: CalibrationConfig) -> pd.DataFrame:
    """PSI of the real draw calibrated with the odd null draws and, separately, with the even ones.

    Both halves come from the same scores/ files the run calibrated with; no scoring is repeated.
    """
    draws = sorted(int(d) for d in scores["draw"].unique() if d > 0)
    odd, even = [d for d in draws if d % 2 == 1], [d for d in draws if d % 2 == 0]
    if min(len(odd), len(even)) < 2:
        raise ValueError(f"null-seed split needs at least 2 odd and 2 even null draws; scores have draws {draws}")
    out = None
    for name, half in (("odd", odd), ("even", even)):
        sub = scores[scores["draw"].isin([0, *half])].copy()
        # Renumber the half's draws 1..M/2 so calibration sees an ordinary run with fewer draws.
        sub["draw"] = sub["draw"].map({0: 0, **{d: i + 1 for i, d in enumerate(half)}})
        psi, _ = calibrate(sub, len(half), _no_holdout(cal))
        part = psi[["channel", "psi", "status"]].rename(columns={"psi": f"psi_{name}", "status": f"status_{name}"})
        out = part if out is None else out.merge(part, on="channel", how="outer")
    out.attrs["draws"] = {"odd": odd, "even": even}
    return out


def seed_rows(layer: str, split: pd.DataFrame, psi: pd.DataFrame) -> list[dict]:
    """robustness.csv row of the null-seed split (channels valid in the run and in both halves)."""
    valid = set(ok_rows(psi)["channel"])
    s = split[(split.status_odd == "ok") & (split.status_even == "ok") & split.channel.isin(valid)]
    rho, p, n = spearman(s["psi_odd"].to_numpy(), s["psi_even"].to_numpy())
    return [dict(analysis="null_seeds", layer=layer, setting="odd null draws", reference="even null draws",
                 rho=rho, pvalue=p, n=n, note="disjoint halves of the run's null draws")]


def cluster_d(patches: pd.DataFrame, emb: np.ndarray, text, gap_level: str, k_max: int) -> pd.DataFrame:
    """Raw D of every channel's clusters (the run's assignments) in the space of `emb` and `text`.

    Prototype = unit mean of the members' embeddings; gap = top-1 minus top-2 similarity to the
    concepts (or prompts); D = mean gap over the channel's clusters, as the scorer defines it.
    """
    import torch  # lazy: the null-seed split (tables only) imports this module too

    from ..stats.metrics import top2_gaps  # lazy: imports torch

    channels, z, _, cl = patch_arrays(patches, emb)
    if text.dim != z.shape[-1]:
        raise ValueError(f"patch embeddings have d={z.shape[-1]} but prompt embeddings d={text.dim}; "
                         "both must come from the same embedder")
    n_slots = max(k_max, int(cl.max()) + 1 if cl.size else 1)
    Z = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    A = torch.nn.functional.one_hot(torch.from_numpy(np.array(cl, dtype=np.int64)), n_slots).float()  # [n, K, slots]
    proto = torch.bmm(A.transpose(1, 2), Z)
    proto = proto / proto.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    E, _ = text.candidates("main", gap_level)
    sims = torch.einsum("nkd,pd->nkp", proto, torch.from_numpy(E))
    D, _, _, _ = top2_gaps(sims, A.sum(1) > 0)
    return pd.DataFrame({"channel": channels, "D": D.numpy().astype(float)})


def text_head(patches: pd.DataFrame, emb_primary: np.ndarray, text_primary, sec_patches: pd.DataFrame,
              emb_secondary: np.ndarray, text_secondary, gap_level: str, k_max: int) -> pd.DataFrame:
    """Per channel: D with the run's embedder and with the second embedder, same clusters."""
    key = ["channel", "rank"]
    sec = sec_patches[key].assign(_row=np.arange(len(sec_patches)))
    merged = patches[key].merge(sec, on=key, how="left")
    if merged["_row"].isna().any():
        miss = merged[merged["_row"].isna()].iloc[0]
        raise ValueError(f"second embedder has no embedding for channel {int(miss.channel)}, rank {int(miss['rank'])}; "
                         "rerun its patch embedding on the same top-K table")
    emb2 = emb_secondary[merged["_row"].to_numpy(np.int64)]
    d1 = cluster_d(patches, emb_primary, text_primary, gap_level, k_max)
    d2 = cluster_d(patches, emb2, text_secondary, gap_level, k_max)
    return d1.rename(columns={"D": "D_primary"}).merge(d2.rename(columns={"D": "D_secondary"}), on="channel")


def text_head_rows(layer: str, th: pd.DataFrame | None, psi: pd.DataFrame, secondary_name: str | None) -> list[dict]:
    base = dict(analysis="text_head", layer=layer, setting=f"D, {secondary_name}" if secondary_name else "D, second embedder",
                reference="D, run embedder")
    if th is None:
        return [{**base, "rho": np.nan, "pvalue": np.nan, "n": 0,
                 "note": "skipped: no secondary_embedder configured"}]
    valid = set(ok_rows(psi)["channel"])
    s = th[th.channel.isin(valid)]
    rho, p, n = spearman(s["D_primary"].to_numpy(), s["D_secondary"].to_numpy())
    return [{**base, "rho": rho, "pvalue": p, "n": n, "note": "same clusters; raw D"}]
