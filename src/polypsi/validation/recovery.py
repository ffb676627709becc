"""report/recovery.csv: how well each score separates polysemantic units from single ones, per ground truth.

Truths:
- `planted` (when a plug-in wrote truth/units.csv, e.g. the planted world): planted-polysemantic
  channels (positives) against monosemantic ones (negatives); dead channels left out.
- `or_units` (every run with validation.or_units): synthetic OR-units (positives) against the
  single channels (with a truth table, the monosemantic ones; otherwise every live channel), plus
  the paired win rate, the share of OR-units that score above both of their parts.
AUROC = P(positive > negative), ties one half; its 95% interval is a percentile bootstrap that
resamples positives and negatives separately (validation.bootstrap resamples, validation.seed).
Layer "all" pools the layers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats as sps

from ..calibration import channels_only, dead_rows
from ..io import read_table, write_csv

# Higher means more polysemantic for every score (the peers' are reported with that sign).
SCORES = ["index", "psi", "S_hat", "Q_hat", "D_hat", "S", "Q", "D", "semanticlens", "monosemanticity",
          "ne_S", "ne_Q", "ne_k_hat", "foote_k"]  # the last four: on neuron embeddings, where the run has them
COLUMNS = ["truth", "layer", "score", "auroc", "ci_low", "ci_high", "n_pos", "n_neg", "win_rate", "n_pairs"]


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each row pair of pos [B, p] and neg [B, n] (Mann-Whitney U with average ranks)."""
    ranks = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    p, n = pos.shape[1], neg.shape[1]
    return (ranks[:, :p].sum(1) - p * (p + 1) / 2.0) / (p * n)


def auroc_ci(pos, neg, n_boot: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """(AUROC, 2.5% and 97.5% bootstrap percentiles) of finite scores; NaN without both classes."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        return float("nan"), float("nan"), float("nan")
    value = float(_auroc_rows(pos[None], neg[None])[0])
    if n_boot == 0:
        return value, float("nan"), float("nan")
    boot = _auroc_rows(pos[rng.integers(0, len(pos), (n_boot, len(pos)))],
                       neg[rng.integers(0, len(neg), (n_boot, len(neg)))])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return value, float(lo), float(hi)


def win_rate(units: pd.DataFrame, singles: pd.DataFrame, score: str) -> tuple[float, int]:
    """(share of OR-units whose score exceeds both parts', number of units with finite scores)."""
    by = singles.set_index("channel")[score]
    a, b = by.reindex(units["part_a"]).to_numpy(float), by.reindex(units["part_b"]).to_numpy(float)
    u = units[score].to_numpy(float)
    ok = np.isfinite(u) & np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return float("nan"), 0
    return float(np.mean((u[ok] > a[ok]) & (u[ok] > b[ok]))), int(ok.sum())


def _live(psi: pd.DataFrame) -> pd.DataFrame:
    return psi[~dead_rows(psi)]


def recovery_table(psi: dict[str, pd.DataFrame], truth: pd.DataFrame | None, n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """Rows COLUMNS for every truth, layer (and "all") and score present in the tables."""
    rng = np.random.default_rng([seed, 7])
    groups = []
    for layer, table in psi.items():
        t = truth[truth["layer"] == layer][["channel", "kind"]] if truth is not None else None
        groups.append((layer, table, t))
    if len(groups) > 1:  # channel ids repeat across layers: key them by layer before pooling
        groups.append(("all", None, None))
    rows, pooled = [], {"planted": ([], []), "or_units": ([], [])}
    for layer, table, t in groups:
        if layer == "all":
            sets = {k: (pd.concat(p, ignore_index=True), pd.concat(n, ignore_index=True))
                    for k, (p, n) in pooled.items() if p}
            wins = None
        else:
            real = _live(channels_only(table))
            ors = table[table["unit_kind"] == "or_unit"] if "unit_kind" in table.columns else table.iloc[:0]
            sets, wins = {}, (ors, real)
            if t is not None:
                kinds = real.merge(t, on="channel", how="inner")
                singles = kinds[kinds["kind"] == "mono"]
                sets["planted"] = (kinds[kinds["kind"] == "poly"], singles)
            else:
                singles = real
            if len(ors):
                sets["or_units"] = (ors, singles)
                wins = (ors, singles)
            for k, (p, n) in sets.items():
                pooled[k][0].append(p)
                pooled[k][1].append(n)
        for truth_name, (pos, neg) in sets.items():
            for score in SCORES:
                if score not in pos.columns:
                    continue
                a, lo, hi = auroc_ci(pos[score], neg[score], n_boot, rng)
                row = {"truth": truth_name, "layer": layer, "score": score, "auroc": a, "ci_low": lo, "ci_high": hi,
                       "n_pos": int(np.isfinite(pos[score].to_numpy(float)).sum()),
                       "n_neg": int(np.isfinite(neg[score].to_numpy(float)).sum())}
                if truth_name == "or_units" and wins is not None:
                    row["win_rate"], row["n_pairs"] = win_rate(wins[0], wins[1], score)
                rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["n_pairs"] = out["n_pairs"].astype("Int64")
    return out


def plot_recovery(table: pd.DataFrame, path) -> None:
    """AUROC with its bootstrap interval per score, one panel per truth and layer."""
    import matplotlib  # lazy: plotting only in the report job

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend

    panels = list(table[["truth", "layer"]].drop_duplicates().itertuples(index=False))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.2 * max(1, len(panels)), 3.6), squeeze=False,
                             sharey=True)
    for ax, (truth, layer) in zip(axes[0], panels):
        d = table[(table["truth"] == truth) & (table["layer"] == layer)]
        y = np.arange(len(d))
        err = np.vstack([d["auroc"] - d["ci_low"], d["ci_high"] - d["auroc"]]).clip(min=0)
        colors = ["tab:red" if s == "index" else ("tab:blue" if s == "psi" else "0.6") for s in d["score"]]
        ax.barh(y, d["auroc"], xerr=np.nan_to_num(err), color=colors)
        ax.set_yticks(y, d["score"])
        ax.axvline(0.5, color="k", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(f"{truth}, {layer}", fontsize=9)
        ax.set_xlabel("AUROC")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no ground truth in this run", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def recovery_stage(job) -> None:
    """Rule recovery: report/recovery.csv and its figure."""
    cfg, log = job.cfg, job.logger("polypsi.recovery")
    layers = list(cfg.model.layers)
    psi = {layer: read_table(p) for layer, p in zip(layers, job.input.psi)}
    truth = pd.read_csv(job.input.truth[0]) if job.input.truth else None
    table = recovery_table(psi, truth, cfg.validation.bootstrap, cfg.validation.seed)
    write_csv(table, job.output.csv)
    plot_recovery(table, job.output.png)
    for r in table[table["score"].isin(["index", "psi"])].itertuples():
        log.info("%s %s %s: AUROC %.3f [%.3f, %.3f]%s", r.truth, r.layer, r.score, r.auroc, r.ci_low, r.ci_high,
                 "" if pd.isna(r.win_rate) else f", win rate {r.win_rate:.2f}")
