"""Null calibration (paper section 3.6): hats, PSI, log PSI, and null neurons for the AUROC.

hat = sigmoid((x - mu) / (sd + eps)) per component (mu, sd: mean and sample sd of the null
draws), PSI = S_hat * Q_hat * D_hat and log PSI = sum of log hats, with
log(sigmoid(z)) = -softplus(-z) so that it stays finite when a hat underflows to 0.

Null neurons: with calibration.holdout_null_neurons the last draw M of every channel is held
out and scored exactly like a real channel against draws 1..M-1. Real channels are
calibrated against the same draws 1..M-1, so a real channel and its null neuron face the
same reference and the AUROC compares like with like. Under the null hypothesis the held-out
draw is exchangeable with the reference draws, so its hats are centred on 0.5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, log_expit

from .config import CalibrationConfig

COMPONENTS = ("S", "Q", "D")
PSI_COLUMNS = [
    "channel", "S", "Q", "D", "S_mu", "S_sd", "Q_mu", "Q_sd", "D_mu", "D_sd",
    "S_hat", "Q_hat", "D_hat", "psi", "log_psi", "k_hat", "status", "contrast", "index_k",
]


def _check_draws(scores: pd.DataFrame, m: int) -> None:
    missing_cols = [c for c in ("channel", "draw", *COMPONENTS, "k_hat", "contrast", "index_k") if c not in scores.columns]
    if missing_cols:
        raise ValueError(f"score table lacks column(s) {missing_cols}; it must come from polypsi.stats.score_channels")
    dup = scores.duplicated(["channel", "draw"])
    if dup.any():
        c, d = scores.loc[dup, ["channel", "draw"]].iloc[0]
        raise ValueError(f"score table has channel {c} draw {d} more than once; are two shards overlapping?")
    extra = sorted(set(scores.draw) - set(range(m + 1)))
    if extra:
        raise ValueError(f"score table has draw(s) {extra} outside 0..nulls.m ({m}); was it scored with another nulls.m?")
    counts = scores.groupby("channel").draw.nunique()
    short = counts[counts < m + 1]
    if len(short):
        c = int(short.index[0])
        have = set(scores.loc[scores.channel == c, "draw"])
        lost = sorted(set(range(m + 1)) - have)
        raise ValueError(
            f"channel {c} lacks draw(s) {lost[:8]} of 0..{m} ({len(short)} channel(s) incomplete); "
            "rerun the score jobs of those draws"
        )


def _calibrate_rows(x: pd.DataFrame, ref: pd.DataFrame, cal: CalibrationConfig) -> pd.DataFrame:
    """Hats of rows x (indexed by channel) against the reference draws ref (long, all channels)."""
    g = ref.groupby("channel")[list(COMPONENTS)]
    mu, sd = g.mean().reindex(x.index), g.std(ddof=1).reindex(x.index)
    out = pd.DataFrame(index=x.index)
    log_psi = np.zeros(len(x))
    flags = [[] for _ in range(len(x))]
    for c in COMPONENTS:
        out[c] = x[c].astype(float)
        out[f"{c}_mu"], out[f"{c}_sd"] = mu[c], sd[c]
        z = (x[c] - mu[c]) / (sd[c] + cal.eps)
        # A hat is a probability-like score in the open interval (0, 1); expit rounds to exactly
        # 0 or 1 beyond |z| ~ 37 (float64), so keep it one ulp inside. log_psi uses the exact z.
        out[f"{c}_hat"] = np.clip(expit(z), np.finfo(np.float64).tiny, np.nextafter(1.0, 0.0))
        log_psi += log_expit(z.to_numpy())  # -softplus(-z): finite where the hat underflows
        for i in np.flatnonzero((sd[c] < cal.sd_tol).to_numpy()):
            flags[i].append(c)
    out["psi"] = np.exp(log_psi)
    out["log_psi"] = log_psi
    out["k_hat"] = x["k_hat"].astype(np.int64)
    out["contrast"] = x["contrast"].astype(float)
    out["index_k"] = x["index_k"].astype(float)
    out["status"] = ["ok" if not f else "low_null_sd:" + ",".join(f) for f in flags]
    return out.reset_index()[PSI_COLUMNS]


def calibrate(scores: pd.DataFrame, m: int, cal: CalibrationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(psi, null_psi) of one layer from all its score draws 0..m (m = nulls.m).

    psi: one row per channel (PSI_COLUMNS). null_psi: with holdout, one row per channel
    for its held-out null neuron (draw M against draws 1..M-1); without, an empty table.
    """
    _check_draws(scores, m)
    # One row order whatever the order of the shards' files: mean and sd sum in row order, so the
    # hats are then the same to the bit for any channel or draw sharding.
    ordered = scores.sort_values(["channel", "draw"], kind="stable").reset_index(drop=True)
    s = ordered.set_index("channel")
    real = s[s.draw == 0]
    if cal.holdout_null_neurons:
        ref = ordered[(ordered.draw >= 1) & (ordered.draw < m)]
        held = s[s.draw == m]
        return _calibrate_rows(real, ref, cal), _calibrate_rows(held, ref, cal)
    ref = ordered[ordered.draw >= 1]
    return _calibrate_rows(real, ref, cal), pd.DataFrame(columns=PSI_COLUMNS)


def low_sd_counts(psi: pd.DataFrame) -> dict[str, int]:
    """Channels whose null sd was below calibration.sd_tol, per component (from the status column)."""
    flagged = psi.status.astype(str).str.extract(r"low_null_sd:([SQD,]+)")[0].dropna()
    return {c: int(flagged.str.contains(c).sum()) for c in COMPONENTS}


UNIT_KINDS = ("channel", "or_unit")


def channels_only(psi: pd.DataFrame) -> pd.DataFrame:
    """The real channels' rows of a psi/ or null_psi/ table (synthetic OR-units have their own rows).

    OR-units are a validation device: they never enter the real channels' statistics, galleries,
    browser or interventions.
    """
    if "unit_kind" not in psi.columns:
        return psi
    return psi[psi["unit_kind"] == "channel"].reset_index(drop=True)


def dead_rows(table: pd.DataFrame) -> pd.Series:
    """Rows of channels that never fire (status `dead: ...`): their scores describe arbitrary sites."""
    return table["status"].astype(str).str.startswith("dead")
