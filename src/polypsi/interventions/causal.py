"""Causal polysemanticity from the insertion trials: how many of a channel's clusters drive it on their own.

Per channel and cluster k, over the paired units (neutral image x donor slot) in which both ran:
the paired t-test of Cluster k against Random (`statistics.paired_test`: mean raise above Random,
its CI at `confidence`, t, Cohen's d_z), its one-sided p-value (Cluster > Random), and that p
Holm-adjusted over the channel's clusters. Cluster k *drives* the channel when the adjusted p is
below `insert.alpha` and the mean raise above Random is at least `insert.min_effect` (of top-1).
The channel's causal polysemanticity is the number of driving clusters (`n_driving`), their share of
its clusters (`share_driving`), and the number of distinct causes among them (`n_causes`).

Distinct causes: every cluster of a monosemantic channel whose top patches split by context still
carries the channel's one concept, so each drives the channel on its own; counting driving clusters
cannot tell it from a polysemantic one. What differs is what else the insertion does: the patches of
two clusters of one concept change the rest of the layer alike (the same other detectors fire), those
of two concepts do not. Per cluster, `insert.signatures` averages the change of the whole layer's
vector at the measured site (after - before, the channel itself left out); driving clusters whose
signatures have cosine >= `insert.same_cause` (directly or through other driving clusters) form one
cause. `causal_polysemantic` means n_causes >= 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.sparse.csgraph import connected_components

from .statistics import holm, paired_test
from .trial import OK

CLUSTER_COLUMNS = [
    "channel", "cluster", "n_members", "n_donors", "n_pairs", "mean_delta", "random_delta", "diff_mean",
    "diff_ci_low", "diff_ci_high", "t", "pvalue_one_sided", "pvalue_holm", "cohens_dz", "drives",
    "cause", "similar_cluster", "similarity",
]
CHANNEL_COLUMNS = [
    "layer", "channel", "index", "psi", "k_hat", "n_clusters", "n_driving", "share_driving", "n_causes",
    "causal_polysemantic", "driving_clusters", "causes", "n_units", "random_delta", "off_rf_delta", "ablate_delta", "best_cluster_delta",
]


def one_sided(t: float, n: int) -> float:
    """P(T >= t) for Student's t with n - 1 degrees of freedom (the raise's one-sided p); NaN without a test."""
    if not np.isfinite(t):
        return float("nan") if np.isnan(t) else (0.0 if t > 0 else 1.0)
    return float(stats.t.sf(t, n - 1))


def cluster_table(insert: pd.DataFrame, alpha: float, min_effect: float, confidence: float = 0.95,
                  sizes: pd.Series | None = None, signatures: pd.DataFrame | None = None,
                  same_cause: float = 0.8) -> pd.DataFrame:
    """One row per (channel, cluster) of the insertion trials (CLUSTER_COLUMNS).

    `sizes`: (channel, cluster) -> number of the channel's top patches in the cluster (n_members; -1
    without it). `signatures` (insert.signatures): with them, driving clusters whose layer signatures have
    cosine >= `same_cause` (directly or through other driving clusters) share a `cause` id; without them
    every driving cluster is its own cause. Non-driving clusters get cause -1. `similar_cluster` and
    `similarity`: the most similar other cluster of the channel and the cosine (-1 and NaN without one).
    """
    ok = insert[insert["status"] == OK]
    rand = ok[ok["condition"] == "Random"].set_index(["channel", "site_rank"])["delta_norm"]
    rows = []
    cl = insert[insert["condition"] == "Cluster"]
    for (c, k), g in cl.groupby(["channel", "cluster"], sort=True):
        good = g[g["status"] == OK].set_index(["channel", "site_rank"])["delta_norm"]
        pairs = pd.concat([good.rename("a"), rand.rename("b")], axis=1, join="inner")
        test = paired_test(pairs["a"].to_numpy(), pairs["b"].to_numpy(), confidence)
        rows.append(dict(channel=int(c), cluster=int(k), n_donors=int(g.loc[g["donor_image_id"] >= 0, "donor_rank"]
                                                                       .nunique()),
                         mean_delta=float(good.mean()) if len(good) else np.nan,
                         random_delta=float(pairs["b"].mean()) if len(pairs) else np.nan,
                         pvalue_one_sided=one_sided(test["t"], test["n_pairs"]), **test))
    out = pd.DataFrame(rows, columns=[c for c in CLUSTER_COLUMNS if c != "n_members"] + ["pvalue"])
    out["pvalue_holm"] = np.nan
    for c, g in out.groupby("channel"):
        out.loc[g.index, "pvalue_holm"] = holm(g["pvalue_one_sided"].tolist())
    out["drives"] = (out["pvalue_holm"] < alpha) & (out["diff_mean"] >= min_effect)
    out["n_members"] = [int(sizes.get((c, k), -1)) if sizes is not None else -1
                        for c, k in zip(out["channel"], out["cluster"])]
    out["n_pairs"] = out["n_pairs"].astype(int)
    out["cause"], out["similar_cluster"], out["similarity"] = -1, -1, np.nan
    sig = {} if signatures is None else {(int(c), int(k)): np.asarray(v, float) for c, k, v in
                                          zip(signatures["channel"], signatures["cluster"], signatures["signature"])}
    for c, g in out.groupby("channel"):
        ks = g["cluster"].tolist()
        cos = np.full((len(ks), len(ks)), np.nan)
        for a, ka in enumerate(ks):
            for b, kb in enumerate(ks):
                if a != b and (c, ka) in sig and (c, kb) in sig:
                    x, y = sig[(c, ka)], sig[(c, kb)]
                    den = np.linalg.norm(x) * np.linalg.norm(y)
                    cos[a, b] = float(x @ y / den) if den > 0 else np.nan
        for a, i in enumerate(g.index):
            if len(ks) > 1 and np.isfinite(cos[a]).any():
                b = int(np.nanargmax(cos[a]))
                out.loc[i, ["similar_cluster", "similarity"]] = [ks[b], cos[a, b]]
        # causes: connected components of the driving clusters linked by cosine >= same_cause
        drive = np.flatnonzero(out.loc[g.index, "drives"].to_numpy())
        if len(drive):
            linked = np.nan_to_num(cos[np.ix_(drive, drive)], nan=-np.inf) >= same_cause
            _, label = connected_components(linked, directed=False)  # numbered in order of their first cluster
            out.loc[g.index[drive], "cause"] = label
    out["similar_cluster"] = out["similar_cluster"].astype(int)
    return out[CLUSTER_COLUMNS].reset_index(drop=True)


def channel_table(insert: pd.DataFrame, clusters: pd.DataFrame) -> pd.DataFrame:
    """One row per tested channel (CHANNEL_COLUMNS) from the insertion trials and their cluster_table."""
    ok = insert[insert["status"] == OK]
    cond = ok.groupby(["channel", "condition"])["delta_norm"].mean().unstack()
    rows = []
    for c, g in insert.groupby("channel", sort=False):
        k = clusters[clusters["channel"] == c]
        drive = k.loc[k["drives"], "cluster"].tolist()
        causes = k.loc[k["drives"]].groupby("cause")["cluster"].apply(lambda x: "+".join(map(str, x)))
        first = g.iloc[0]
        rows.append(dict(layer=first.get("layer", ""), channel=int(c), index=first["index"], psi=first["psi"],
                         k_hat=int(first["k_hat"]), n_clusters=len(k), n_driving=len(drive),
                         share_driving=len(drive) / len(k) if len(k) else np.nan, n_causes=len(causes),
                         causal_polysemantic=len(causes) >= 2, driving_clusters=";".join(map(str, drive)),
                         causes=";".join(causes.tolist()),
                         n_units=int(g["site_rank"].nunique()),
                         random_delta=cond.at[c, "Random"] if "Random" in cond and c in cond.index else np.nan,
                         off_rf_delta=cond.at[c, "Off-RF"] if "Off-RF" in cond and c in cond.index else np.nan,
                         ablate_delta=cond.at[c, "Ablate"] if "Ablate" in cond and c in cond.index else np.nan,
                         best_cluster_delta=float(k["mean_delta"].max()) if len(k) else np.nan))
    return pd.DataFrame(rows, columns=CHANNEL_COLUMNS)


def attach(insert: pd.DataFrame, clusters: pd.DataFrame, channels: pd.DataFrame) -> pd.DataFrame:
    """The insertion trials with their cluster's test (Cluster and Off-RF rows) and their channel's counts."""
    k = clusters.rename(columns={c: f"cluster_{c}" for c in ("diff_mean", "diff_ci_low", "diff_ci_high",
                                                              "pvalue_holm", "cohens_dz")})
    k = k[["channel", "cluster", "cluster_diff_mean", "cluster_diff_ci_low", "cluster_diff_ci_high",
           "cluster_pvalue_holm", "cluster_cohens_dz", "drives", "cause"]].rename(
        columns={"drives": "cluster_drives", "cause": "cluster_cause"})
    own = insert["condition"] == "Cluster"
    out = insert.merge(k, on=["channel", "cluster"], how="left")
    for col in k.columns[2:]:
        out.loc[~own.to_numpy(), col] = np.nan
    out["cluster_cause"] = out["cluster_cause"].astype("Int64")
    out["cluster_drives"] = out["cluster_drives"].astype("boolean")
    out.loc[~own.to_numpy(), "cluster_drives"] = pd.NA
    ch = channels.set_index("channel")
    out["n_clusters"] = out["channel"].map(ch["n_clusters"]).astype("Int64")
    out["n_driving"] = out["channel"].map(ch["n_driving"]).astype("Int64")
    out["share_driving"] = out["channel"].map(ch["share_driving"]).astype(float)
    out["n_causes"] = out["channel"].map(ch["n_causes"]).astype("Int64")
    return out


AGREEMENT_COLUMNS = ["layer", "statistic", "value", "n", "pvalue", "meaning"]


def with_truth(channels: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    """The per-channel table with the planted `kind` and `n_concepts` where a truth table covers the layer."""
    out = channels.copy()
    if truth is None or channels.empty:
        return out
    t = truth[truth["layer"] == channels["layer"].iloc[0]][["channel", "kind", "concepts"]]
    t = t.assign(n_concepts=t["concepts"].fillna("").astype(str).map(lambda s: len([x for x in s.split(";") if x])))
    return out.merge(t.rename(columns={"kind": "truth_kind", "concepts": "truth_concepts",
                                       "n_concepts": "truth_n_concepts"}), on="channel", how="left")


def agreement(channels: pd.DataFrame) -> pd.DataFrame:
    """Agreement of causal polysemanticity with the index (every run) and with the planted truth (where known).

    Rows (AGREEMENT_COLUMNS): Spearman's rho of the index with n_driving and with share_driving; with a truth
    (`truth_kind`), the share of planted-polysemantic channels with >= 2 driving clusters, of monosemantic ones
    with exactly 1, and of both with none.
    """
    layer = channels["layer"].iloc[0] if len(channels) else ""
    rows = []
    for col in ("n_driving", "share_driving", "n_causes"):
        x, y = channels["index"].to_numpy(float), channels[col].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        rho, p = (stats.spearmanr(x[ok], y[ok]) if ok.sum() >= 3 and np.ptp(y[ok]) > 0 and np.ptp(x[ok]) > 0
                  else (np.nan, np.nan))
        rows.append(dict(layer=layer, statistic=f"spearman_index_{col}", value=float(rho), n=int(ok.sum()),
                         pvalue=float(p), meaning=f"Spearman rank correlation of the index with {col}"))
    if "truth_kind" in channels:
        poly, mono = channels[channels["truth_kind"] == "poly"], channels[channels["truth_kind"] == "mono"]
        for name, part, test, meaning in [
            ("poly_share_ge2", poly, poly["n_driving"] >= 2, "planted-polysemantic channels with >= 2 driving clusters"),
            ("mono_share_eq1", mono, mono["n_driving"] == 1, "monosemantic channels with exactly 1 driving cluster"),
            ("poly_share_none", poly, poly["n_driving"] == 0, "planted-polysemantic channels with no driving cluster"),
            ("mono_share_none", mono, mono["n_driving"] == 0, "monosemantic channels with no driving cluster"),
            ("poly_share_causes_ge2", poly, poly["n_causes"] >= 2,
             "planted-polysemantic channels with >= 2 distinct causes (n_causes)"),
            ("mono_share_causes_eq1", mono, mono["n_causes"] == 1,
             "monosemantic channels with exactly 1 distinct cause (n_causes)"),
        ]:
            rows.append(dict(layer=layer, statistic=name, value=float(test.mean()) if len(part) else np.nan,
                             n=len(part), pvalue=np.nan, meaning=meaning))
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
