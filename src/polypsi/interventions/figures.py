"""The summary figure: mean normalised delta per condition with CI bars, trial points and p-values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import atomic_path
from .trial import CONDITIONS, OK


def plot_summary(summary: pd.DataFrame, trials: pd.DataFrame, path, title: str = "",
                 confidence: float = 0.95) -> None:
    """Bar chart of mean normalised delta per condition with CI bars, trial points and p-values."""
    import matplotlib  # lazy: matplotlib and seaborn take seconds to import and only this figure needs them

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend
    import seaborn as sns  # lazy: see matplotlib

    sns.set_theme(style="whitegrid", context="notebook")
    colors = sns.color_palette("colorblind", len(CONDITIONS))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x = np.arange(len(summary))
    means = summary["mean_delta"].to_numpy(float)
    err = np.vstack([means - summary["ci_low"].to_numpy(float), summary["ci_high"].to_numpy(float) - means])
    ax.bar(x, np.nan_to_num(means), color=colors, alpha=0.8, width=0.65)
    ax.errorbar(x, means, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=5, lw=1.2)
    valid = trials[trials["status"] == OK]
    rng = np.random.default_rng(0)  # jitter only
    for i, cond in enumerate(summary["condition"]):
        y = valid.loc[valid["condition"] == cond, "delta_norm"].to_numpy(float)
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(y)), y, s=9, color="black", alpha=0.35, lw=0, zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    lo, hi = ax.get_ylim()
    for i, r in enumerate(summary.itertuples(index=False)):
        label = f"n={r.n}"
        if r.condition != "Aligned" and pd.notna(r.pvalue):
            label += f"\np={r.pvalue:.2g}"
        elif r.condition != "Aligned":
            label += "\np=n/a"
        ax.text(i, hi, label, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(lo, hi + 0.12 * (hi - lo))
    ax.set_xticks(x, summary["condition"], rotation=15)
    unit = summary["unit"].iloc[0] if len(summary) else "site"
    ax.set_ylabel("ΔA / top-1 activation")
    ax.set_title(title or f"Patch-swap interventions (mean, {100 * confidence:g}% CI; paired t vs Aligned, unit={unit})",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def plot_message(path, title: str, message: str) -> None:
    """The summary figure when there is nothing to plot: it says why, so the report never omits it silently."""
    import matplotlib  # lazy: see plot_summary

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend

    fig, ax = plt.subplots(figsize=(7.5, 2.4))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def plot_insert(summary: pd.DataFrame, trials: pd.DataFrame, channels: pd.DataFrame, path,
                confidence: float = 0.95) -> None:
    """Insertion: mean normalised raise per condition (left) and each channel's distinct causes (n_causes)
    against its index (right; coloured by the planted kind where there is a truth)."""
    import matplotlib  # lazy: see plot_summary

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend
    import seaborn as sns  # lazy: see matplotlib

    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw=dict(width_ratios=[1, 1.1]))
    x = np.arange(len(summary))
    means = summary["mean_delta"].to_numpy(float)
    err = np.vstack([means - summary["ci_low"].to_numpy(float), summary["ci_high"].to_numpy(float) - means])
    ax.bar(x, np.nan_to_num(means), color=sns.color_palette("colorblind", len(summary)), alpha=0.8, width=0.65)
    ax.errorbar(x, means, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=5, lw=1.2)
    valid = trials[trials["status"] == OK]
    rng = np.random.default_rng(0)  # jitter only
    for i, cond in enumerate(summary["condition"]):
        y = valid.loc[valid["condition"] == cond].groupby(["channel", "site_rank"])["delta_norm"].mean().to_numpy()
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(y)), y, s=6, color="black", alpha=0.25, lw=0, zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    for i, r in enumerate(summary.itertuples(index=False)):
        label = f"n={r.n}" + (f"\np={r.pvalue:.2g}" if r.condition != "Cluster" and pd.notna(r.pvalue) else "")
        ax.text(i, ax.get_ylim()[1], label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, summary["condition"])
    ax.set_ylabel("ΔA / top-1 activation")
    ax.set_title(f"Insertion into neutral images (mean, {100 * confidence:g}% CI)", fontsize=10, pad=24)
    kinds = channels["truth_kind"].fillna("?") if "truth_kind" in channels else pd.Series("", index=channels.index)
    jitter = rng.uniform(-0.12, 0.12, len(channels))
    for kind, color in zip(sorted(kinds.unique()), sns.color_palette("colorblind", 6)):
        m = (kinds == kind).to_numpy()
        bx.scatter(channels.loc[m, "index"], channels.loc[m, "n_causes"].to_numpy(float) + jitter[m], s=22,
                   color=color, alpha=0.8, label=f"planted {kind}" if kind else None)
    if "truth_kind" in channels:
        bx.legend(fontsize=8, loc="upper left")
    bx.set_xlabel("polysemanticity index")
    bx.set_ylabel("distinct causes among the driving clusters")
    drive = channels["n_driving"].to_numpy(float)
    bx.set_title(f"Causal polysemanticity (driving clusters per channel: median {np.nanmedian(drive):g}, "
                 f"range {np.nanmin(drive):g}-{np.nanmax(drive):g})" if len(drive) else "Causal polysemanticity",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
