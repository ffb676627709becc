"""report/recovery.csv: AUROCs as scikit-learn's, bootstrap intervals, win rates, which rows enter which truth."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from polypsi.validation.recovery import auroc_ci, recovery_table, win_rate


def test_auroc_matches_sklearn_and_interval_covers_it():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pos, neg = rng.normal(0.7, 1, 25).round(1), rng.normal(0, 1, 31).round(1)  # rounding makes ties
        a, lo, hi = auroc_ci(pos, neg, 500, np.random.default_rng(1))
        assert a == pytest.approx(roc_auc_score(np.r_[np.ones(25), np.zeros(31)], np.r_[pos, neg]))
        assert lo <= a <= hi and hi - lo > 0.05
    assert np.isnan(auroc_ci([1.0], [np.nan], 10, rng)[0])


def layer(rng, n=20):
    kinds = np.array(["mono", "poly", "dead", "mono"] * (n // 4))
    score = np.where(kinds == "poly", 1.0, 0.0) + rng.normal(0, 0.1, n)
    psi = pd.DataFrame({"channel": np.arange(n), "index": score, "psi": -score, "status": "ok", "unit_kind": "channel"})
    psi.loc[kinds == "dead", "status"] = "dead: top activation <= 0"
    psi.loc[kinds == "dead", ["index", "psi"]] = np.nan
    truth = pd.DataFrame({"channel": np.arange(n), "kind": kinds, "concepts": "x"})
    monos = np.flatnonzero(kinds == "mono")
    ors = pd.DataFrame({"channel": n + np.arange(4), "index": [5.0, 5.0, 0.05, 5.0], "psi": 0.0, "status": "ok",
                        "unit_kind": "or_unit", "part_a": monos[:4], "part_b": monos[4:8]})
    return pd.concat([psi, ors], ignore_index=True), truth


def test_truths_rows_and_win_rate():
    rng = np.random.default_rng(2)
    psi3, t3 = layer(rng)
    psi4, t4 = layer(rng)
    truth = pd.concat([t3.assign(layer="layer3"), t4.assign(layer="layer4")])
    table = recovery_table({"layer3": psi3, "layer4": psi4}, truth, n_boot=200)
    planted = table[(table.truth == "planted") & (table.layer == "layer3")].set_index("score")
    assert planted.loc["index", "auroc"] == 1.0 and planted.loc["psi", "auroc"] == 0.0
    assert planted.loc["index", "n_pos"] == 5 and planted.loc["index", "n_neg"] == 10  # dead and OR rows left out
    ors = table[(table.truth == "or_units") & (table.layer == "layer3")].set_index("score")
    assert ors.loc["index", "n_pos"] == 4 and ors.loc["index", "n_neg"] == 10  # negatives: the monosemantic channels
    # Unit 3 (index 0.05) beats its parts only if both parts score below 0.05.
    p = psi3.set_index("channel")["index"]
    want = np.mean([u > p[a] and u > p[b] for u, a, b in zip([5.0, 5.0, 0.05, 5.0], psi3.part_a.dropna().astype(int),
                                                                psi3.part_b.dropna().astype(int))])
    assert ors.loc["index", "win_rate"] == pytest.approx(want)
    pooled = table[(table.truth == "planted") & (table.layer == "all")].set_index("score")
    assert pooled.loc["index", "n_pos"] == 10
    assert table[table.truth == "planted"]["win_rate"].isna().all()


def test_without_a_truth_only_or_units_with_every_live_channel_as_negative():
    psi, _ = layer(np.random.default_rng(3))
    table = recovery_table({"layer3": psi}, None, n_boot=0)
    assert set(table.truth) == {"or_units"} and set(table.layer) == {"layer3"}
    assert (table.n_neg == 15).all() and table.ci_low.isna().all()


def test_win_rate_by_hand():
    singles = pd.DataFrame({"channel": [0, 1, 2], "s": [0.1, 0.5, np.nan]})
    units = pd.DataFrame({"part_a": [0, 0, 2], "part_b": [1, 1, 0], "s": [0.6, 0.3, 1.0]})
    assert win_rate(units, singles, "s") == (0.5, 2)
