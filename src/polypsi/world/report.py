"""Ground-truth report: how well PSI recovers the planted polysemantic channels.

Per layer (and pooled over layers, layer "all"):
- AUROC of PSI, of each hat and of each raw component for planted-polysemantic
  (positive) against monosemantic (negative) channels. Dead channels are left out.
  Two subsets: every channel with a finite score ("finite"), and only channels whose
  status is "ok". The raw components show what the calibration keeps or loses: a hat
  near 1 for every channel (both kinds far above their nulls) no longer ranks them.
- K-hat against the true number of planted concepts (a confusion table).
- Naming accuracy: share of clusters whose top concept (concept_1) is one of the
  channel's planted concepts, for mono, poly and all live channels; and for poly
  channels the coverage, the share of planted concepts that name at least one cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from polypsi.calibration import channels_only
from polypsi.config import load_config_file
from polypsi.io import read_json, read_table, write_csv
from polypsi.report.stats import auroc
from polypsi.world.truth import ground_truth

METRICS = ["psi", "S_hat", "Q_hat", "D_hat", "S", "Q", "D"]  # raw components too: the hats can saturate
COLUMNS = ["layer", "section", "metric", "subset", "true_n", "k_hat", "value", "n_poly", "n_mono", "n_clusters"]


def _norm(name) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def _planted(concepts: str) -> set[str]:
    return {_norm(c) for c in str(concepts).split(";") if c.strip()}


def merge_truth(psi: pd.DataFrame, truth: pd.DataFrame, layer: str) -> pd.DataFrame:
    """Truth rows of `layer` joined with their PSI rows (one per channel; OR-unit rows are ignored)."""
    psi = channels_only(psi)
    t = truth[truth["layer"] == layer]
    if t.empty:
        raise ValueError(f"the ground truth has no channels of layer {layer!r}; is the run's model the planted world's?")
    missing = sorted(set(t["channel"]) - set(psi["channel"]))
    if missing:
        raise ValueError(
            f"psi table of layer {layer!r} lacks planted channel(s) {missing[:8]} ({len(missing)} in all); "
            "rerun the calibrate stage"
        )
    return t.merge(psi, on="channel", how="left", validate="one_to_one")


def _auroc_rows(layer: str, m: pd.DataFrame) -> list[dict]:
    rows = []
    for subset, keep in (("finite", np.ones(len(m), bool)), ("ok", (m["status"].astype(str) == "ok").to_numpy())):
        d = m[keep]
        for metric in METRICS:
            pos = d.loc[d["kind"] == "poly", metric].to_numpy(float)
            neg = d.loc[d["kind"] == "mono", metric].to_numpy(float)
            rows.append({
                "layer": layer, "section": "auroc", "metric": metric, "subset": subset, "value": auroc(pos, neg),
                "n_poly": int(np.isfinite(pos).sum()), "n_mono": int(np.isfinite(neg).sum()),
            })
    return rows


def _k_rows(layer: str, m: pd.DataFrame) -> list[dict]:
    live = m[m["kind"].isin(["mono", "poly"]) & m["k_hat"].notna()]
    counts = live.groupby(["n_concepts", "k_hat"]).size()
    rows = []
    for true_n in sorted(live["n_concepts"].unique()):
        for k in sorted(live["k_hat"].unique()):
            rows.append({"layer": layer, "section": "k_confusion", "metric": "count", "true_n": int(true_n),
                         "k_hat": int(k), "value": float(counts.get((true_n, k), 0))})
    return rows


def naming_table(clusters: pd.DataFrame, truth_layer: pd.DataFrame) -> pd.DataFrame:
    """Clusters of live planted channels with `hit` (concept_1 is a planted concept)."""
    c = clusters.merge(truth_layer[["channel", "kind", "concepts"]], on="channel", how="inner")
    c = c[c["kind"].isin(["mono", "poly"])].copy()
    c["hit"] = [_norm(n) in _planted(p) for n, p in zip(c["concept_1"], c["concepts"])]
    return c


def _naming_rows(layer: str, named: pd.DataFrame) -> list[dict]:
    rows = []
    for kind, d in (("mono", named[named["kind"] == "mono"]), ("poly", named[named["kind"] == "poly"]), ("all", named)):
        rows.append({"layer": layer, "section": "naming", "metric": "accuracy", "subset": kind,
                     "value": float(d["hit"].mean()) if len(d) else float("nan"), "n_clusters": len(d)})
    poly = named[named["kind"] == "poly"]
    cover = [
        len(_planted(p) & {_norm(n) for n in g["concept_1"]}) / len(_planted(p))
        for (_, p), g in poly.groupby(["channel", "concepts"])
    ]
    rows.append({"layer": layer, "section": "naming", "metric": "coverage", "subset": "poly",
                 "value": float(np.mean(cover)) if cover else float("nan"), "n_clusters": len(poly)})
    return rows


def ground_truth_tables(psi_tables: dict[str, pd.DataFrame], clusters_tables: dict[str, pd.DataFrame],
                        truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary rows, per-channel join, per-cluster naming) over the layers of `psi_tables`."""
    merged, named, rows = [], [], []
    for layer, psi in psi_tables.items():
        m = merge_truth(psi, truth, layer)
        m.insert(0, "layer_", layer)
        merged.append(m)
        if layer not in clusters_tables:
            raise KeyError(f"no clusters table for layer {layer!r}; the calibrate stage writes clusters/{layer}")
        n = naming_table(clusters_tables[layer], truth[truth["layer"] == layer])
        n.insert(0, "layer_", layer)
        named.append(n)
    per_channel = pd.concat(merged, ignore_index=True)
    per_cluster = pd.concat(named, ignore_index=True)
    groups = [(layer, per_channel[per_channel["layer_"] == layer], per_cluster[per_cluster["layer_"] == layer])
              for layer in psi_tables]
    if len(psi_tables) > 1:
        groups.append(("all", per_channel, per_cluster))
    for layer, m, n in groups:
        rows += _auroc_rows(layer, m) + _k_rows(layer, m) + _naming_rows(layer, n)
    summary = pd.DataFrame(rows).reindex(columns=COLUMNS)
    for col in ("true_n", "k_hat", "n_poly", "n_mono", "n_clusters"):
        summary[col] = summary[col].astype("Int64")  # counts stay integers beside the empty cells
    return summary, per_channel.drop(columns="layer_"), per_cluster.drop(columns="layer_")


def ground_truth_report(psi_tables: dict[str, pd.DataFrame], clusters_tables: dict[str, pd.DataFrame],
                        truth: pd.DataFrame, out_csv: str | Path, out_png: str | Path) -> pd.DataFrame:
    """Write report/ground_truth.csv (columns COLUMNS, one row per statistic) and its figure."""
    summary, per_channel, _ = ground_truth_tables(psi_tables, clusters_tables, truth)
    _write_report(summary, per_channel, out_csv, out_png)
    return summary


def _write_report(summary: pd.DataFrame, per_channel: pd.DataFrame, out_csv: str | Path, out_png: str | Path) -> None:
    write_csv(summary, out_csv)
    plot_ground_truth(summary, per_channel, out_png)


def plot_ground_truth(summary: pd.DataFrame, per_channel: pd.DataFrame, path: str | Path) -> None:
    import seaborn as sns  # lazy: plotting libraries load only for the figure

    from polypsi.report.figures import HAT_LABELS, _panels, save  # lazy: matplotlib loads only for the figure

    layers = [l for l in summary["layer"].unique() if l != "all"]
    fig, axes = _panels(3 + len(layers))
    # (a) AUROC of each score, poly vs mono.
    a = summary[(summary["section"] == "auroc") & (summary["subset"] == "finite")].copy()
    a["score"] = a["metric"].map(lambda m: HAT_LABELS.get(m, f"raw {m}"))
    sns.barplot(data=a, x="score", y="value", hue="layer", ax=axes[0])
    axes[0].axhline(0.5, color="grey", ls="--", lw=1)
    axes[0].set(ylim=(0, 1), ylabel="AUROC (planted poly vs mono)", xlabel="", title="Recovery of planted polysemanticity")
    axes[0].legend(loc="lower right", fontsize=8)
    # (b) log PSI by planted kind.
    d = per_channel[per_channel["kind"].isin(["mono", "poly"])]
    sns.stripplot(data=d, x="layer", y="log_psi", hue="kind", hue_order=["mono", "poly"], dodge=True, size=3,
                  ax=axes[1], order=layers)
    axes[1].set(title="log PSI by planted kind", xlabel="")
    # (c) naming accuracy.
    n = summary[(summary["section"] == "naming") & (summary["metric"] == "accuracy")]
    sns.barplot(data=n, x="subset", y="value", hue="layer", ax=axes[2])
    axes[2].set(ylim=(0, 1), ylabel="top concept is planted", xlabel="channels", title="Naming accuracy")
    axes[2].legend(loc="lower right", fontsize=8)
    # (d...) K-hat confusion per layer.
    for ax, layer in zip(axes[3:], layers):
        k = summary[(summary["section"] == "k_confusion") & (summary["layer"] == layer)]
        table = k.pivot(index="true_n", columns="k_hat", values="value").fillna(0).astype(int)
        table.index, table.columns = table.index.astype(int), table.columns.astype(int)
        sns.heatmap(table, annot=True, fmt="d", cbar=False, cmap="Blues", ax=ax)
        ax.set(title=f"{layer}: K-hat vs planted concepts", xlabel="K-hat", ylabel="planted concepts")
    save(fig, path)


def topk_composition(patches: pd.DataFrame, dataset: pd.DataFrame, world_desc: dict, input_size: int,
                     image_size: int) -> pd.DataFrame:
    """What each channel's top patches show: (channel, concept, share) over its top-K.

    A patch shows the world object nearest its crop centre (distance to the object's edge,
    at most 8 px of a 64 px image), else "none". Objects come from world.json; the
    dataset's file names carry the world image index.
    """
    names = [c["name"] for c in world_desc["concepts"]]
    scenes = {s["image_id"]: s["objects"] for s in world_desc["images"]}
    index = {int(i): int(Path(p).stem) for i, p in zip(dataset["image_id"], dataset["path"])}
    f = image_size / input_size
    shown = []
    for img, y0, x0, y1, x1 in patches[["image_id", "y0", "x0", "y1", "x1"]].itertuples(index=False):
        cy, cx = (y0 + y1) / 2 * f, (x0 + x1) / 2 * f
        objs = scenes[index[int(img)]]
        edge = [np.hypot(o["x"] - cx, o["y"] - cy) - o["r"] for o in objs]
        j = int(np.argmin(edge))
        shown.append(names[objs[j]["concept"]] if edge[j] <= 8 * image_size / 64 else "none")
    d = pd.DataFrame({"channel": patches["channel"].to_numpy(), "concept": shown})
    out = d.groupby(["channel", "concept"]).size().rename("share").reset_index()
    out["share"] /= out.groupby("channel")["share"].transform("sum")
    return out


def channel_table(per_channel: pd.DataFrame, composition: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Truth and scores per channel (the index, when the psi tables have it, beside PSI), plus the measured
    share of planted concepts in its top-K (`planted_share`) and of its least frequent planted concept
    (`minority_share`)."""
    rows = []
    for r in per_channel.itertuples(index=False):
        comp = composition[r.layer]
        comp = comp[comp["channel"] == r.channel].set_index("concept")["share"]
        planted = sorted(_planted(r.concepts))
        shares = [float(comp.get(c, 0.0)) for c in planted]
        rows.append({"planted_share": sum(shares) if planted else np.nan,
                     "minority_share": min(shares) if planted else np.nan,
                     "top_concepts": ";".join(f"{c}:{v:.2f}" for c, v in comp.sort_values(ascending=False).head(3).items())})
    cols = ["layer", "channel", "kind", "n_concepts", "concepts", "index", "psi", "S_hat", "Q_hat", "D_hat", "S",
            "Q", "D", "k_hat", "status"]
    cols = [c for c in cols if c != "index" or c in per_channel.columns]  # psi tables from before the index
    return pd.concat([per_channel[cols].reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def report_run(cfg, run_dir: str | Path | None = None) -> pd.DataFrame:
    """ground_truth_report for a finished run (`cfg` is the run's Config): reads <run>/psi/ and
    <run>/clusters/, writes <run>/report/ground_truth.csv and .png; also
    <run>/report/ground_truth_channels.csv (channel_table, from patches and world.json)."""
    run = Path(run_dir or f"results/{cfg.run_name}")
    layers = list(cfg.model.layers)
    psi = {l: read_table(run / "psi" / f"{l}.parquet") for l in layers}
    clusters = {l: read_table(run / "clusters" / f"{l}.parquet") for l in layers}
    truth = ground_truth(cfg.world)
    summary, per_channel, _ = ground_truth_tables(psi, clusters, truth)
    _write_report(summary, per_channel, run / "report" / "ground_truth.csv", run / "report" / "ground_truth.png")
    dataset, desc = read_table(run / "dataset.parquet"), read_json(run / "world" / "world.json")
    input_size = int(read_json(run / "geometry.json")["input_size"])
    comp = {l: topk_composition(read_table(run / "patches" / f"{l}.parquet"), dataset, desc, input_size,
                                cfg.world.image_size) for l in layers}
    write_csv(channel_table(per_channel, comp), run / "report" / "ground_truth_channels.csv")
    return summary


def ground_truth_stage(job) -> None:
    """Rule ground_truth: the planted-world recovery report of the run whose report/ folder holds the outputs."""
    report_run(job.cfg, Path(job.output.csv).parents[1])


def planted_units_stage(job) -> None:
    """Rule planted_units: truth/units.csv, the planted kind and concepts of every channel (the core's truth table)."""
    write_csv(ground_truth(job.cfg.world)[["layer", "channel", "kind", "concepts"]], job.output.truth)


if __name__ == "__main__":  # python -m polypsi.world.report config/demo.yaml [results/demo]
    import sys

    cfg = load_config_file(sys.argv[1])
    print(report_run(cfg, sys.argv[2] if len(sys.argv) > 2 else None).to_string())
