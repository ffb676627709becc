"""calibrate: hats, PSI, log PSI, held-out null neurons, status flags and input checks."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_expit

from polypsi.calibration import PSI_COLUMNS, calibrate, low_sd_counts
from polypsi.config import CalibrationConfig, IndexConfig
from polypsi.index import add_index, index_chance

M = 5


def scores_table(seed=0, channels=(3, 7, 11), m=M):
    rng = np.random.default_rng(seed)
    rows = []
    for c in channels:
        for d in range(m + 1):
            shift = 0.3 if d == 0 else 0.0
            rows.append(dict(channel=c, draw=d, S=shift + rng.normal(0.1, 0.02), Q=shift + rng.normal(0.2, 0.05),
                             D=rng.normal(0.05, 0.01), k_hat=int(rng.integers(2, 6)),
                             contrast=rng.uniform(0, 0.3), index_k=rng.uniform(1, 3)))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed)  # order must not matter


def manual(x, ref, eps):
    mu, sd = np.mean(ref), np.std(ref, ddof=1)
    z = (x - mu) / (sd + eps)
    return mu, sd, 1 / (1 + np.exp(-z)), z


def test_hats_psi_and_log_psi_by_hand():
    scores = scores_table()
    cal = CalibrationConfig()
    psi, null_psi = calibrate(scores, M, cal)
    assert list(psi.columns) == PSI_COLUMNS and list(null_psi.columns) == PSI_COLUMNS
    assert list(psi.channel) == [3, 7, 11] and list(null_psi.channel) == [3, 7, 11]
    for table, draw in ((psi, 0), (null_psi, M)):
        for c in (3, 7, 11):
            row = table[table.channel == c].iloc[0]
            sc = scores[scores.channel == c]
            ref = sc[(sc.draw >= 1) & (sc.draw < M)]  # held-out draw M is not in the reference
            x = sc[sc.draw == draw].iloc[0]
            logs = 0.0
            for comp in "SQD":
                mu, sd, hat, z = manual(x[comp], ref[comp], cal.eps)
                assert row[f"{comp}_mu"] == pytest.approx(mu) and row[f"{comp}_sd"] == pytest.approx(sd)
                assert row[f"{comp}_hat"] == pytest.approx(hat)
                logs += np.log(hat)
            assert row.psi == pytest.approx(row.S_hat * row.Q_hat * row.D_hat)
            assert row.log_psi == pytest.approx(logs)
            assert row.k_hat == x.k_hat and row.status == "ok"


def test_without_holdout_all_draws_are_the_reference():
    scores = scores_table()
    psi, null_psi = calibrate(scores, M, CalibrationConfig(holdout_null_neurons=False))
    assert null_psi.empty and list(null_psi.columns) == PSI_COLUMNS
    ref = scores[(scores.channel == 7) & (scores.draw >= 1)]
    assert psi.set_index("channel").loc[7, "S_mu"] == pytest.approx(ref.S.mean())


def test_log_psi_is_finite_when_hats_underflow():
    scores = scores_table()
    scores.loc[(scores.draw == 0) & (scores.channel == 3), "S"] = -1e3  # far below its null
    psi, _ = calibrate(scores, M, CalibrationConfig())
    row = psi.set_index("channel").loc[3]
    assert 0.0 < row.S_hat <= 1e-300 and row.psi == 0.0  # hats stay inside (0, 1); psi underflows
    assert np.isfinite(row.log_psi) and row.log_psi < -1e3
    assert row.log_psi == pytest.approx(log_expit((-1e3 - row.S_mu) / (row.S_sd + 1e-6)) + np.log(row.Q_hat * row.D_hat))


def test_low_null_sd_is_flagged_per_component():
    scores = scores_table()
    null = scores.draw >= 1
    scores.loc[null & (scores.channel == 7), "S"] = 0.2  # a degenerate S-null
    scores.loc[null & (scores.channel == 11), ["S", "D"]] = 0.1
    psi, null_psi = calibrate(scores, M, CalibrationConfig())
    status = psi.set_index("channel").status
    assert status[3] == "ok" and status[7] == "low_null_sd:S" and status[11] == "low_null_sd:S,D"
    assert (null_psi.set_index("channel").status[[7, 11]] == status[[7, 11]]).all()
    assert low_sd_counts(psi) == {"S": 2, "Q": 0, "D": 1}
    # sd = 0 leaves only eps: the hat jumps to 0, 1/2 or 1, never NaN.
    assert psi.S_hat.notna().all() and 1 - 1e-15 < psi.set_index("channel").S_hat[7] < 1.0


def test_incomplete_or_inconsistent_scores_are_refused():
    scores = scores_table()
    with pytest.raises(ValueError, match=r"channel 7 lacks draw\(s\) \[2\]"):
        calibrate(scores[~((scores.channel == 7) & (scores.draw == 2))], M, CalibrationConfig())
    with pytest.raises(ValueError, match="outside 0..nulls.m"):
        calibrate(scores, M - 1, CalibrationConfig())
    with pytest.raises(ValueError, match="more than once"):
        calibrate(pd.concat([scores, scores.head(1)]), M, CalibrationConfig())
    with pytest.raises(ValueError, match="lacks column"):
        calibrate(scores.drop(columns="Q"), M, CalibrationConfig())


def test_null_neurons_are_centred_when_draws_are_exchangeable():
    rng = np.random.default_rng(1)
    rng_c = np.random.default_rng(2)  # its own stream: the hats' draws stay those of the original test
    rows = [dict(channel=c, draw=d, S=rng.normal(), Q=rng.gamma(2.0), D=rng.uniform(), k_hat=2,
                 contrast=rng_c.gamma(1.0) * 0.1, index_k=1.0)
            for c in range(400) for d in range(21)]
    scores = pd.DataFrame(rows)
    psi, null_psi = calibrate(scores, 20, CalibrationConfig())
    chance = index_chance(scores, 20, True, np.arange(400))
    for table in (psi, null_psi):  # draw 0 is just another null draw here
        for comp in ("S_hat", "Q_hat", "D_hat"):
            assert abs(table[comp].median() - 0.5) < 0.07
        assert abs(add_index(table, chance, IndexConfig())["index"].median()) < 0.01


def test_row_order_of_the_score_files_does_not_change_a_bit():
    """The shards' files are concatenated in any order: every table is identical to the bit."""
    rng = np.random.default_rng(3)
    rows = [dict(channel=c, draw=d, S=rng.random(), Q=rng.random(), D=rng.random() / 10, k_hat=2, contrast=rng.random(),
                 index_k=1.0) for c in range(60) for d in range(M + 1)]
    scores = pd.DataFrame(rows)
    for holdout in (True, False):
        cal = CalibrationConfig(holdout_null_neurons=holdout)
        want = calibrate(scores, M, cal)
        for seed in range(3):
            got = calibrate(scores.sample(frac=1.0, random_state=seed), M, cal)
            for a, b in zip(got, want):
                pd.testing.assert_frame_equal(a, b, check_exact=True)
