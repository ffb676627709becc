"""Causal polysemanticity from insertion trials: per-cluster paired tests against Random, Holm over the
channel's clusters, driving clusters, distinct causes, and the agreement with the index and the truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from polypsi.interventions.causal import agreement, channel_table, cluster_table, with_truth


def _trials(raises: dict[int, list[float]], n_units=8, seed=0) -> pd.DataFrame:
    """Insertion rows: per channel, clusters with the given mean raises; Random, Off-RF and Ablate near 0."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, means in raises.items():
        for s in range(n_units):
            base = rng.normal(0, 0.02)  # a unit's shared offset: pairing removes it
            for k, m in enumerate(means):
                rows.append(dict(channel=c, site_rank=s, condition="Cluster", cluster=k, status="ok",
                                 delta_norm=base + m + rng.normal(0, 0.05), donor_image_id=100 + s, donor_rank=s,
                                 index=float(c), psi=0.5, k_hat=len(means), layer="L"))
            for cond in ("Random", "Off-RF", "Ablate"):
                rows.append(dict(channel=c, site_rank=s, condition=cond, cluster=-1, status="ok",
                                 delta_norm=base + rng.normal(0, 0.05), donor_image_id=200 + s, donor_rank=s,
                                 index=float(c), psi=0.5, k_hat=len(means), layer="L"))
    return pd.DataFrame(rows)


def test_cluster_tests_match_scipy_and_holm_by_hand():
    trials = _trials({0: [0.5, 0.04, 0.3]})
    cl = cluster_table(trials, alpha=0.05, min_effect=0.1).set_index("cluster")
    rand = trials[trials.condition == "Random"].sort_values("site_rank")["delta_norm"].to_numpy()
    p = []
    for k in range(3):
        a = trials[(trials.condition == "Cluster") & (trials.cluster == k)].sort_values("site_rank")["delta_norm"]
        ref = stats.ttest_rel(a.to_numpy(), rand, alternative="greater")
        assert cl.loc[k, "t"] == pytest.approx(ref.statistic)
        assert cl.loc[k, "pvalue_one_sided"] == pytest.approx(ref.pvalue)
        assert cl.loc[k, "diff_mean"] == pytest.approx(np.mean(a.to_numpy() - rand))
        d = a.to_numpy() - rand
        assert cl.loc[k, "cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert (cl.loc[k, "diff_ci_low"], cl.loc[k, "diff_ci_high"]) == pytest.approx((lo, hi))
        p.append(ref.pvalue)
    # Holm by hand: sort ascending, multiply by (m - j), running maximum, capped at 1
    order = np.argsort(p)
    adj, run = np.empty(3), 0.0
    for j, i in enumerate(order):
        run = max(run, min(1.0, (3 - j) * p[i]))
        adj[i] = run
    assert cl["pvalue_holm"].to_numpy() == pytest.approx(adj)
    assert cl["drives"].tolist() == [True, False, True]  # cluster 1 raises 0.04 < min_effect


def test_channel_counts_and_agreement_with_truth():
    trials = _trials({0: [0.5, 0.4], 1: [0.6, 0.0], 2: [0.5, 0.5, 0.5], 3: [0.0, 0.01]})
    cl = cluster_table(trials, alpha=0.05, min_effect=0.1)
    ch = channel_table(trials, cl).set_index("channel")
    assert ch["n_driving"].to_dict() == {0: 2, 1: 1, 2: 3, 3: 0}
    assert ch.loc[1, "share_driving"] == 0.5 and ch.loc[0, "driving_clusters"] == "0;1"
    # without signatures every driving cluster is its own cause
    assert ch["n_causes"].to_dict() == ch["n_driving"].to_dict()
    truth = pd.DataFrame(dict(layer="L", channel=[0, 1, 2, 3], kind=["poly", "mono", "mono", "poly"],
                              concepts=["a;b", "a", "c", "d;e"]))
    full = with_truth(channel_table(trials, cl), truth)
    assert full["truth_n_concepts"].tolist() == [2, 1, 1, 2]
    agree = agreement(full).set_index("statistic")
    assert agree.loc["poly_share_ge2", "value"] == 0.5 and agree.loc["poly_share_ge2", "n"] == 2
    assert agree.loc["mono_share_eq1", "value"] == 0.5 and agree.loc["mono_share_none", "value"] == 0.0
    rho = stats.spearmanr([0, 1, 2, 3], [2, 1, 3, 0]).statistic
    assert agree.loc["spearman_index_n_driving", "value"] == pytest.approx(rho)


def test_causes_merge_driving_clusters_with_alike_layer_changes():
    trials = _trials({0: [0.5, 0.5, 0.5]})
    e = np.eye(6)
    sig = pd.DataFrame(dict(channel=0, cluster=[0, 1, 2],
                            signature=[e[0] + 0.1 * e[1], e[0] + 0.1 * e[2], e[3]]))  # 0 ~ 1, 2 apart
    cl = cluster_table(trials, alpha=0.05, min_effect=0.1, signatures=sig, same_cause=0.8)
    assert cl["drives"].all()
    assert cl["cause"].tolist() == [0, 0, 1]
    assert cl["similar_cluster"].tolist()[:2] == [1, 0] and cl["similarity"].iloc[0] == pytest.approx(1 / 1.01)
    ch = channel_table(trials, cl).iloc[0]
    assert ch["n_driving"] == 3 and ch["n_causes"] == 2 and ch["causes"] == "0+1;2" and ch["causal_polysemantic"]
