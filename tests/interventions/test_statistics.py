"""Per-condition means, paired tests and Holm's adjustment, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from polypsi.interventions.statistics import holm, summarize
from polypsi.interventions.trial import CONDITIONS

from .worlds import random_trials


def test_summary_against_scipy():
    trials = random_trials()
    # drop two trials (one Aligned, one Random) as a failed position/donor would
    trials.loc[(trials.condition == "Aligned") & (trials.channel == 1) & (trials.site_rank == 2), "status"] = \
        "no_donor: no donor of the same cluster in another image"
    trials.loc[(trials.condition == "Random") & (trials.channel == 3) & (trials.site_rank == 0), "status"] = \
        "no_donor: no unrelated channel with a patch in another image"
    summary = summarize(trials, confidence=0.9)
    ok = trials[trials.status == "ok"]
    wide = ok.pivot(index=["channel", "site_rank"], columns="condition", values="delta_norm")
    for r in summary.itertuples(index=False):
        x = wide[r.condition].dropna().to_numpy()
        assert r.n == len(x)
        assert r.mean_delta == pytest.approx(x.mean())
        assert r.sem == pytest.approx(stats.sem(x))
        lo, hi = stats.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi))
        if r.condition == "Aligned":
            assert r.n_dropped == 1 and np.isnan(r.pvalue)
            continue
        pair = wide[["Aligned", r.condition]].dropna()
        ref = stats.ttest_rel(pair["Aligned"], pair[r.condition])
        assert r.n_pairs == len(pair) == (22 if r.condition == "Random" else 23)
        assert r.t == pytest.approx(ref.statistic) and r.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=0)
        ci = ref.confidence_interval(0.9)
        assert (r.diff_ci_low, r.diff_ci_high) == pytest.approx((ci.low, ci.high))
        d = pair["Aligned"] - pair[r.condition]
        assert r.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert summary.set_index("condition").loc["Random", "dropped_reasons"] == "no_donor=1"
    p = summary["pvalue"].iloc[1:].tolist()
    assert summary["pvalue_holm"].iloc[1:].tolist() == pytest.approx(holm(p))


def test_summary_channel_unit_against_scipy():
    trials = random_trials(seed=1, n_channels=5)
    summary = summarize(trials, unit="channel").set_index("condition")
    means = trials.groupby(["channel", "condition"])["delta_norm"].mean().unstack()
    for cond in CONDITIONS[1:]:
        ref = stats.ttest_rel(means["Aligned"], means[cond])
        assert summary.loc[cond, "n_pairs"] == 5
        assert summary.loc[cond, "t"] == pytest.approx(ref.statistic)
        assert summary.loc[cond, "pvalue"] == pytest.approx(ref.pvalue, rel=1e-9, abs=0)
    assert summary.loc["Aligned", "mean_delta"] == pytest.approx(means["Aligned"].mean())


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)
