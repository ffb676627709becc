"""The report's statistics against scikit-learn and scipy on generated score tables."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from polypsi.report import stats


def _psi_table(rng, n, shift=0.0, dead=0):
    hats = 1 / (1 + np.exp(-(rng.normal(shift, 1.0, size=(n, 3)))))
    df = pd.DataFrame(hats, columns=["S_hat", "Q_hat", "D_hat"])
    df.insert(0, "channel", np.arange(n))
    df["psi"] = df.S_hat * df.Q_hat * df.D_hat
    df["log_psi"] = np.log(df.psi)
    df["index"] = rng.normal(shift, 0.1, size=n)
    df["k_hat"] = rng.integers(2, 6, size=n)
    df["status"] = "ok"
    if dead:
        df.loc[: dead - 1, ["S_hat", "Q_hat", "D_hat", "psi", "log_psi", "index"]] = np.nan
        df.loc[: dead - 1, "status"] = "dead: top activation <= 0"
    return df


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    # Rounded scores make many ties, the case where a naive pairwise count goes wrong.
    pos = np.round(rng.normal(0.4, 1, 80), 1)
    neg = np.round(rng.normal(0.0, 1, 120), 1)
    y = np.r_[np.ones(80), np.zeros(120)]
    assert stats.auroc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)
    # Brute force over all pairs.
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (80 * 120)
    assert stats.auroc(pos, neg) == pytest.approx(brute, abs=1e-12)


def test_auroc_edge_cases():
    assert stats.auroc([1, 2, 3], [0, 0.5]) == 1.0
    assert stats.auroc([0, 0.5], [1, 2, 3]) == 0.0
    assert stats.auroc([1, 1], [1, 1]) == 0.5
    assert np.isnan(stats.auroc([], [1.0]))
    # NaNs are dropped, not ranked.
    assert stats.auroc([2.0, np.nan], [1.0]) == 1.0


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(3)
    pos = np.round(rng.normal(0.5, 1, 50), 1)
    neg = np.round(rng.normal(0.0, 1, 70), 1)
    fpr, tpr, thr = stats.roc_curve(pos, neg)
    sf, st, sthr = sk_roc_curve(np.r_[np.ones(50), np.zeros(70)], np.r_[pos, neg], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st)
    np.testing.assert_allclose(thr[1:], sthr[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(stats.auroc(pos, neg))


def test_ks_matches_scipy_and_brute_force():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1.2, 200)
    stat, p = stats.ks_2samp(a, b)
    ref = sps.ks_2samp(a, b)
    assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    grid = np.sort(np.r_[a, b])
    ecdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    assert stat == pytest.approx(np.abs(ecdf(a) - ecdf(b)).max())


@pytest.mark.parametrize("seed", [5, 6])
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=40), 1)
    y = np.round(x + rng.normal(size=40), 1)
    rho, p, n = stats.spearman(x, y)
    ref = sps.spearmanr(x, y)
    assert n == 40
    assert rho == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_spearman_drops_nan_pairs_and_handles_degenerate_input():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([2.0, 1.0, 3.0, np.nan, 5.0, 7.0])
    rho, _, n = stats.spearman(x, y)
    assert n == 4
    assert rho == pytest.approx(sps.spearmanr([1, 2, 5, 6], [2, 1, 5, 7]).statistic)
    assert np.isnan(stats.spearman([1, 1, 1, 1], [1, 2, 3, 4])[0])
    assert np.isnan(stats.spearman([1, 2], [1, 2])[0])
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1])[0] == -1.0


def test_auroc_table_excludes_invalid_channels():
    rng = np.random.default_rng(7)
    real = {"layer3": _psi_table(rng, 60, 0.5, dead=5), "layer4": _psi_table(rng, 40, 1.0)}
    null = {"layer3": _psi_table(rng, 60, 0.0, dead=5), "layer4": _psi_table(rng, 40, 0.0)}
    t = stats.auroc_table(real, null)
    assert len(t) == 2 * len(stats.METRICS) and set(t.metric) == set(stats.METRICS)
    row = t[(t.layer == "layer3") & (t.metric == "psi")].iloc[0]
    assert row.n_real == 55 and row.n_real_excluded == 5
    ok_r, ok_n = real["layer3"].iloc[5:], null["layer3"].iloc[5:]
    y = np.r_[np.ones(55), np.zeros(55)]
    assert row.auroc == pytest.approx(roc_auc_score(y, np.r_[ok_r.psi, ok_n.psi]))
    # Raising every real psi by a constant can only raise the AUROC of psi.
    shifted = {k: v.assign(psi=v.psi + 10) for k, v in real.items()}
    assert (stats.auroc_table(shifted, null).query("metric == 'psi'").auroc == 1.0).all()
    with pytest.raises(KeyError, match="null_psi/layer4"):
        stats.auroc_table(real, {"layer3": null["layer3"]})


def test_ks_table_pairs_and_medians():
    rng = np.random.default_rng(8)
    real = {l: _psi_table(rng, 50, s, dead=2) for l, s in [("a", 0.0), ("b", 1.0), ("c", 2.0)]}
    t = stats.ks_table(real)
    assert list(zip(t.layer_a, t.layer_b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    r = t.iloc[1]
    a, b = real["a"].psi.dropna(), real["c"].psi.dropna()
    ref = sps.ks_2samp(a, b)
    assert r.statistic == pytest.approx(ref.statistic) and r.pvalue == pytest.approx(ref.pvalue)
    assert r.median_a == pytest.approx(np.median(a)) and r.n_a == 48
    assert stats.ks_table({"only": real["a"]}).empty


def test_k_hat_table_counts():
    rng = np.random.default_rng(9)
    real = {"l": _psi_table(rng, 100, 1.0, dead=4)}
    null = {"l": _psi_table(rng, 100, 0.0)}
    t = stats.k_hat_table(real, null)
    assert t.n_all.sum() == 96
    thr = np.quantile(null["l"].log_psi, 0.95)
    assert t.n_high_psi.sum() == int((real["l"].log_psi > thr).sum())
    assert (t.n_high_psi <= t.n_all).all()
