"""Paper Fig. 3: the highest- and lowest-index channels, their patches grouped by cluster, each cluster named.

Channels are ranked by the polysemanticity index (`index`), PSI shown beside it; only real
channels with status "ok" and a finite index enter (OR-units never do).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..calibration import channels_only
from .figures import message_figure, plt, save
from .stats import ok_rows
from .thumbs import thumbnails


def pick_channels(psi: pd.DataFrame, n: int, which: str) -> pd.DataFrame:
    """The n valid real channels with the highest (`which="high"`) or lowest ("low") index, first first."""
    if "index" not in psi.columns:
        raise ValueError("psi table lacks column 'index' (the polysemanticity index); it must come from the "
                         "calibrate stage: rerun it")
    if which not in ("high", "low"):
        raise ValueError(f"gallery kind must be 'high' or 'low', got {which!r}")
    ok = ok_rows(channels_only(psi)).dropna(subset=["index"])
    return ok.sort_values(["index", "channel"], ascending=[which == "low", True]).head(n)


def gallery_table(layer: str, chosen: pd.DataFrame, clusters: pd.DataFrame, which: str) -> pd.DataFrame:
    """One row per (channel, cluster) of the gallery: names, gaps, sizes and the channel's scores (index, then PSI)."""
    cols = ["channel", "index", "psi", "S_hat", "Q_hat", "D_hat", "k_hat"]
    t = chosen[cols].merge(clusters, on="channel", how="left")
    t.insert(0, "gallery", which)
    t.insert(0, "layer", layer)
    return t


def _strip(thumbs: np.ndarray, n: int) -> np.ndarray:
    s = thumbs.shape[1] if len(thumbs) else 64
    out = np.full((s, n * s + (n - 1) * 2, 3), 255, np.uint8)
    for i, t in enumerate(thumbs[:n]):
        out[:, i * (s + 2) : i * (s + 2) + s] = t
    return out


def plot_gallery(layer: str, which: str, table: pd.DataFrame, patches: pd.DataFrame, dataset: pd.DataFrame,
                 input_size: int, path, per_cluster: int = 8, thumb: int = 64) -> None:
    """Rows of top-ranked patches, one row per cluster, channels stacked; titles carry names and gaps."""
    if table.empty:
        message_figure(path, f"{layer}: {which}-index gallery", "No channel with a valid index in this layer.")
        return
    # Keep the gallery's ranking (best first), clusters in order within a channel.
    position = {c: i for i, c in enumerate(dict.fromkeys(table["channel"]))}
    rows = table.dropna(subset=["cluster"])
    rows = rows.assign(_pos=rows["channel"].map(position)).sort_values(["_pos", "cluster"]).drop(columns="_pos")
    fig, axes = plt.subplots(len(rows), 1, figsize=(per_cluster * 0.95, 1.25 * len(rows) + 0.3), squeeze=False)
    first_of = set()
    for ax, r in zip(axes[:, 0], rows.to_dict("records")):
        # Records, not itertuples: a namedtuple's `index` is tuple.index, not the column.
        sel = patches[(patches.channel == r["channel"]) & (patches.cluster == int(r["cluster"]))].sort_values("rank")
        sel = sel.head(per_cluster)
        ax.imshow(_strip(thumbnails(sel, dataset, input_size, thumb), per_cluster))
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        head = ""
        if r["channel"] not in first_of:
            first_of.add(r["channel"])
            head = (f"{layer} channel {int(r['channel'])}: index {r['index']:.3f}, PSI {r['psi']:.3f} "
                    f"(Ŝ {r['S_hat']:.2f}, Q̂ {r['Q_hat']:.2f}, D̂ {r['D_hat']:.2f}, K̂ {int(r['k_hat'])})\n")
        ax.set_title(f"{head}cluster {int(r['cluster'])} (n={int(r['size'])}, sil {r['silhouette']:.2f}): "
                     f"“{r['concept_1']}” gap {r['gap']:.4f} (next “{r['concept_2']}”)", loc="left", fontsize=8)
    fig.suptitle(f"{layer}: {'highest' if which == 'high' else 'lowest'}-index channels", fontsize=10)
    save(fig, path)
