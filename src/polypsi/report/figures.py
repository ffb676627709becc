"""Seaborn figures of the paper (Figs. 2a-c, 4, 5, 6 and the null-seed check), drawn only from run tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..io import atomic_path  # noqa: E402
from . import stats  # noqa: E402

CHANCE_LOG_PSI = float(np.log(0.5**3))  # every hat at 0.5: the null's centre by construction
HAT_LABELS = {"psi": "PSI", "S_hat": "Ŝ", "Q_hat": "Q̂", "D_hat": "D̂"}


def save(fig, path: str | Path, dpi: int = 120) -> None:
    fig.tight_layout()  # keeps neighbouring panels' titles and labels apart
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _panels(n: int, width: float = 4.2, height: float = 3.4):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def message_figure(path: str | Path, title: str, message: str) -> None:
    """A figure that states why an analysis has nothing to show (so the report never silently omits it)."""
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10)
    save(fig, path)


def psi_histograms(real: dict[str, pd.DataFrame], null: dict[str, pd.DataFrame], path) -> None:
    """Fig. 2a: log-PSI of real channels against the held-out null neurons, one panel per layer."""
    fig, axes = _panels(len(real))
    for ax, (layer, df) in zip(axes, real.items()):
        parts = [
            pd.DataFrame({"log PSI": stats.ok_rows(df)["log_psi"], "neurons": "real"}),
            pd.DataFrame({"log PSI": stats.ok_rows(null[layer])["log_psi"], "neurons": "null"}),
        ]
        d = pd.concat(parts, ignore_index=True).dropna()
        if d.empty:
            ax.text(0.5, 0.5, "no valid channels", transform=ax.transAxes, ha="center")
        else:
            x = d["log PSI"].to_numpy()
            # numpy's automatic bin count, kept between 15 and 60 bins over the full range.
            n_bins = int(np.clip(len(np.histogram_bin_edges(x, bins="auto")) - 1, 15, 60))
            bins = np.linspace(x.min(), x.max(), n_bins + 1) if x.max() > x.min() else 10
            sns.histplot(d, x="log PSI", hue="neurons", hue_order=["real", "null"], bins=bins, stat="density",
                         common_norm=False, element="step", alpha=0.35, ax=ax)
        ax.axvline(CHANCE_LOG_PSI, color="0.4", ls=":", lw=1)
        ax.set_title(f"{layer}: real vs null (n={len(parts[0])}/{len(parts[1])})")
    save(fig, path)


def roc_curves(real: dict[str, pd.DataFrame], null: dict[str, pd.DataFrame], path, metrics=stats.METRICS) -> None:
    """Fig. 2b: ROC of real vs null neurons for PSI and each calibrated component, one panel per layer."""
    fig, axes = _panels(len(real))
    palette = sns.color_palette("colorblind", len(metrics))
    for ax, (layer, df) in zip(axes, real.items()):
        r, n = stats.ok_rows(df), stats.ok_rows(null[layer])
        for color, m in zip(palette, metrics):
            try:
                fpr, tpr, _ = stats.roc_curve(r[m], n[m])
            except ValueError:
                continue
            auc = stats.auroc(r[m], n[m])
            ax.plot(fpr, tpr, color=color, lw=2 if m == "psi" else 1.2, label=f"{HAT_LABELS.get(m, m)} (AUROC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
        ax.set(xlabel="false positive rate (null)", ylabel="true positive rate (real)", title=layer, xlim=(0, 1), ylim=(0, 1))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no valid channels", transform=ax.transAxes, ha="center")
    save(fig, path)


def depth_violins(real: dict[str, pd.DataFrame], ks: pd.DataFrame, path) -> None:
    """Fig. 2c: log-PSI per layer as violins, with the KS test of consecutive layers in the title."""
    d = pd.concat(
        [pd.DataFrame({"layer": layer, "log PSI": stats.ok_rows(df)["log_psi"]}) for layer, df in real.items()],
        ignore_index=True,
    ).dropna()
    fig, ax = plt.subplots(figsize=(1.8 + 1.8 * len(real), 3.6))
    if d.empty:
        ax.text(0.5, 0.5, "no valid channels", transform=ax.transAxes, ha="center")
    else:
        sns.violinplot(d, x="layer", y="log PSI", order=list(real), inner="quartile", cut=0, ax=ax,
                       hue="layer", legend=False, palette="crest")
    ax.axhline(CHANCE_LOG_PSI, color="0.4", ls=":", lw=1)
    layers = list(real)
    notes = []
    for a, b in zip(layers, layers[1:]):
        row = ks[(ks.layer_a == a) & (ks.layer_b == b)]
        if len(row):
            notes.append(f"KS {a}-{b}: D={row.statistic.iloc[0]:.3f}, p={row.pvalue.iloc[0]:.2g}")
    ax.set_title("\n".join(notes) or "PSI by layer", fontsize=9)
    save(fig, path)


def k_sensitivity(rob: pd.DataFrame, path, k_ref: int) -> None:
    """Fig. 4: Spearman of the PSI ranking at K against the ranking at the mined K, per layer."""
    d = rob[rob.analysis == "k_sensitivity"].copy()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    if d.empty or d["rho"].isna().all():
        ax.text(0.5, 0.5, "no K-sensitivity results", transform=ax.transAxes, ha="center")
    else:
        d["K"] = d["setting"].str.extract(r"K=(\d+)")[0].astype(int)
        control = d["setting"].str.contains("draws")  # mined K re-scored with fewer null draws
        sns.lineplot(d[~control], x="K", y="rho", hue="layer", marker="o", ax=ax)
        if control.any():
            sns.scatterplot(d[control], x="K", y="rho", hue="layer", marker="X", s=80, legend=False, ax=ax)
            ax.annotate("mined K,\nfewer null draws", (d[control]["K"].iloc[0], d[control]["rho"].min()),
                        textcoords="offset points", xytext=(-10, -28), ha="right", fontsize=8)
        ax.set_xticks(sorted(d["K"].unique()))
    ax.set(ylabel=f"Spearman ρ with K={k_ref}", xlabel="K (top patches used)", ylim=(-0.1, 1.05))
    ax.axhline(0, color="0.6", lw=0.8)
    save(fig, path)


def k_hat_hist(khat: pd.DataFrame, path) -> None:
    """Fig. 5: number of channels per K-hat, for all valid channels and for the high-PSI ones."""
    d = khat.melt(id_vars=["layer", "k_hat"], value_vars=["n_all", "n_high_psi"], var_name="channels", value_name="count")
    d["channels"] = d["channels"].map({"n_all": "all valid", "n_high_psi": "high PSI (> null q95)"})
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), sharex=True)
    for ax, what in zip(axes, ["all valid", "high PSI (> null q95)"]):
        sub = d[d.channels == what]
        if sub.empty:
            ax.text(0.5, 0.5, "no channels", transform=ax.transAxes, ha="center")
        else:
            sns.barplot(sub, x="k_hat", y="count", hue="layer", ax=ax)
        ax.set(title=what, xlabel="K̂ (clusters chosen by silhouette)", ylabel="channels")
    save(fig, path)


def paired_scatter(d: pd.DataFrame, x: str, y: str, path, xlabel: str, ylabel: str, rob: pd.DataFrame, analysis: str) -> None:
    """Figs. 6 and the null-seed check: one point per channel, Spearman rho per layer in the titles."""
    layers = list(dict.fromkeys(d["layer"]))
    fig, axes = _panels(max(len(layers), 1), 4.4, 3.8)
    for ax, layer in zip(axes, layers):
        sub = d[d.layer == layer]
        sns.scatterplot(sub, x=x, y=y, s=14, alpha=0.7, ax=ax, edgecolor="none")
        lo = np.nanmin(sub[[x, y]].to_numpy()) if len(sub) else 0
        hi = np.nanmax(sub[[x, y]].to_numpy()) if len(sub) else 1
        ax.plot([lo, hi], [lo, hi], color="0.6", ls="--", lw=0.8)
        row = rob[(rob.analysis == analysis) & (rob.layer == layer)]
        rho = f"ρ={row.rho.iloc[0]:.3f} (n={int(row.n.iloc[0])})" if len(row) and np.isfinite(row.rho.iloc[0]) else "ρ n/a"
        ax.set(title=f"{layer}: Spearman {rho}", xlabel=xlabel, ylabel=ylabel)
    save(fig, path)
