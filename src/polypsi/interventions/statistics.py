"""Statistics of a trial table: per condition the mean normalised delta with its CI, and paired tests.

Aligned is tested against every control with a paired t-test (Holm-adjusted over the four
controls) and Cohen's d_z. Only trials with status "ok" enter; the others are counted with their reasons.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .trial import CONDITIONS, INSERT_CONDITIONS, OK

SUMMARY_COLUMNS = [
    "protocol", "condition", "n", "mean_delta", "sem", "ci_low", "ci_high", "sd", "n_dropped", "dropped_reasons",
    "n_pairs", "diff_mean", "diff_ci_low", "diff_ci_high", "t", "pvalue", "pvalue_holm", "cohens_dz", "unit",
]


def _mean_ci(x: np.ndarray, confidence: float) -> tuple[float, float, float, float, float]:
    """mean, sd, sem, ci_low, ci_high (Student t); NaN where n is too small."""
    n = len(x)
    if n == 0:
        return (np.nan,) * 5
    m = float(np.mean(x))
    if n < 2:
        return m, np.nan, np.nan, np.nan, np.nan
    sd = float(np.std(x, ddof=1))
    sem = sd / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return m, sd, sem, m - half, m + half


def paired_test(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict:
    """Paired t-test of a against b (two-sided), Cohen's d_z and the CI of the mean difference a - b."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    m, sd, sem, lo, hi = _mean_ci(d, confidence)
    out = dict(n_pairs=n, diff_mean=m, diff_ci_low=lo, diff_ci_high=hi, t=np.nan, pvalue=np.nan, cohens_dz=np.nan)
    if n < 2:
        return out
    if sd > 0:
        t = m / sem
        out.update(t=t, pvalue=float(2 * stats.t.sf(abs(t), n - 1)), cohens_dz=m / sd)
    elif m != 0:  # identical non-zero differences: the test is degenerate but the direction is certain
        out.update(t=float(np.sign(m) * np.inf), pvalue=0.0, cohens_dz=float(np.sign(m) * np.inf))
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and are not counted)."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out.tolist()


def protocol_of(trials: pd.DataFrame) -> pd.Series:
    """Each trial's protocol; a table without a `protocol` column is a replacement table (written before insertion)."""
    return trials["protocol"] if "protocol" in trials else pd.Series("replace", index=trials.index)


def summarize(trials: pd.DataFrame, unit: str = "site", confidence: float = 0.95) -> pd.DataFrame:
    """One row per condition of each protocol in the table: `summarize_replace`, then `summarize_insert`.

    A table without a `protocol` column is a replacement table (written before insertion existed).
    """
    protocol = protocol_of(trials)
    parts = [summarize_replace(trials[protocol == "replace"], unit, confidence)]
    if (protocol == "insert").any():
        parts.append(summarize_insert(trials[protocol == "insert"], unit, confidence))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def summarize_replace(trials: pd.DataFrame, unit: str = "site", confidence: float = 0.95) -> pd.DataFrame:
    """One row per condition: mean normalised delta with its CI, and Aligned-vs-control paired tests.

    Only trials with status "ok" enter; the others are counted in `n_dropped` with their reasons.
    Pairs are the (channel, site_rank) present in both conditions. With unit="channel" every channel's
    sites (and paired differences) are averaged first, so n counts channels rather than sites.
    """
    if unit not in ("site", "channel"):
        raise ValueError(f"unit must be 'site' or 'channel', got {unit!r}")
    unknown = set(trials["condition"]) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions in the trials table: {sorted(unknown)}")
    key = ["channel", "site_rank"]
    if trials.duplicated(key + ["condition"]).any():
        raise ValueError("the trials table has more than one trial per (channel, site_rank, condition)")
    valid = trials[trials["status"] == OK]
    per = {c: valid[valid["condition"] == c].set_index(key)["delta_norm"] for c in CONDITIONS}
    return _summary_rows(trials, per, CONDITIONS, "Aligned", "replace", unit, confidence)


def summarize_insert(trials: pd.DataFrame, unit: str = "site", confidence: float = 0.95) -> pd.DataFrame:
    """The insertion protocol's rows: one per condition of INSERT_CONDITIONS, in the same columns.

    A unit is a (channel, site_rank) pair (neutral image x donor slot), or a channel with unit="channel".
    Cluster is the mean over the channel's clusters within each unit; it is tested against each control
    (paired t, Holm over the three controls), as Aligned is in the replacement protocol.
    """
    if unit not in ("site", "channel"):
        raise ValueError(f"unit must be 'site' or 'channel', got {unit!r}")
    key = ["channel", "site_rank"]
    valid = trials[trials["status"] == OK]
    per = {c: valid[valid["condition"] == c].groupby(key)["delta_norm"].mean() for c in INSERT_CONDITIONS}
    return _summary_rows(trials, per, INSERT_CONDITIONS, "Cluster", "insert", unit, confidence)


def _summary_rows(trials: pd.DataFrame, per: dict[str, pd.Series], conditions, reference: str, protocol: str,
                  unit: str, confidence: float) -> pd.DataFrame:
    """One row per condition: mean normalised delta with its CI, dropped trials with their reasons, and the
    paired test of `reference` against every other condition (Holm over them). per: condition -> the
    (channel, site_rank)-indexed deltas of its valid trials."""

    def units(s: pd.Series) -> np.ndarray:
        return (s.groupby(level="channel").mean() if unit == "channel" else s).to_numpy(float)

    rows = []
    for cond in conditions:
        allc = trials[trials["condition"] == cond]
        dropped = allc.loc[allc["status"] != OK, "status"].str.split(":").str[0].value_counts()
        m, sd, sem, lo, hi = _mean_ci(units(per[cond]), confidence)
        row = dict(protocol=protocol, condition=cond, n=len(units(per[cond])), mean_delta=m, sem=sem, ci_low=lo,
                   ci_high=hi, sd=sd, n_dropped=int(dropped.sum()),
                   dropped_reasons="; ".join(f"{k}={v}" for k, v in dropped.items()), unit=unit)
        if cond != reference:
            pairs = pd.concat([per[reference].rename("a"), per[cond].rename("b")], axis=1, join="inner")
            if unit == "channel":
                pairs = pairs.groupby(level="channel").mean()
            row.update(paired_test(pairs["a"].to_numpy(), pairs["b"].to_numpy(), confidence))
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in SUMMARY_COLUMNS:
        if col not in out:
            out[col] = np.nan
    out["pvalue_holm"] = holm(out["pvalue"].tolist())
    out["n_pairs"] = out["n_pairs"].astype("Int64")
    return out[SUMMARY_COLUMNS]
