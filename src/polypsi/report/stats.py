"""Statistics of the report: AUROC and ROC of real vs null neurons, KS between layers, Spearman.

Channels whose `status` is not "ok" (dead channels, degenerate nulls) carry no valid PSI; they
are left out of every statistic and counted in the tables, so nothing is dropped silently.
Only real channels count: OR-units (synthetic validation units with their own rows in psi/ and
null_psi/) are dropped before any statistic (`calibration.channels_only`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..calibration import COMPONENTS, channels_only, low_sd_counts

# Score columns compared against the null neurons (paper Table 1).
METRICS = ["index", "psi", "S_hat", "Q_hat", "D_hat"]


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def auroc(pos, neg) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U / n_pos n_neg)."""
    pos, neg = _finite(pos), _finite(neg)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = sps.rankdata(np.concatenate([pos, neg]))  # average ranks handle ties
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def roc_curve(pos, neg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score from the highest down, starting at (0, 0)."""
    pos, neg = _finite(pos), _finite(neg)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"ROC needs both classes: got {len(pos)} real and {len(neg)} null scores")
    scores = np.concatenate([pos, neg])
    truth = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    # The last index of every run of equal scores: a threshold admits all of them at once.
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(truth)[last]
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / len(neg)]
    tpr = np.r_[0.0, tps / len(pos)]
    thresholds = np.r_[np.inf, scores[last]]
    return fpr, tpr, thresholds


def spearman(x, y) -> tuple[float, float, int]:
    """Spearman's rho, its two-sided p-value and the number of pairs (pairs with a NaN are dropped)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman: x and y differ in length ({len(x)} vs {len(y)})")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, n = x[keep], y[keep], int(keep.sum())
    if n < 3:
        return float("nan"), float("nan"), n
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    if rx.std() == 0 or ry.std() == 0:  # a constant ranking has no correlation
        return float("nan"), float("nan"), n
    rho = float(np.corrcoef(rx, ry)[0, 1])
    rho = min(1.0, max(-1.0, rho))
    if abs(rho) == 1.0:
        return rho, 0.0, n
    t = rho * np.sqrt((n - 2) / (1.0 - rho**2))
    return rho, float(2 * sps.t.sf(abs(t), n - 2)), n


def ks_2samp(a, b) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and two-sided p-value (scipy's exact/asymptotic choice)."""
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    res = sps.ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Real channels' rows with status "ok" (a missing status column means every row is valid)."""
    df = channels_only(df)
    if "status" not in df.columns:
        return df
    return df[df["status"].astype(str) == "ok"]


def auroc_table(real: dict[str, pd.DataFrame], null: dict[str, pd.DataFrame], metrics=METRICS) -> pd.DataFrame:
    """Paper Table 1: per layer and metric, AUROC of real channels against held-out null neurons."""
    rows = []
    for layer, real_df in real.items():
        if layer not in null:
            raise KeyError(f"no null-neuron table for layer {layer!r}; the calibrate stage writes null_psi/{layer}")
        real_df, null_df = channels_only(real_df), channels_only(null[layer])
        r, n = ok_rows(real_df), ok_rows(null_df)
        for m in metrics:
            for name, df in (("psi", real_df), ("null_psi", null_df)):
                if m not in df.columns:
                    raise KeyError(f"column {m!r} missing from {name} table of layer {layer!r}")
            rows.append(
                {
                    "layer": layer,
                    "metric": m,
                    "auroc": auroc(r[m], n[m]),
                    "n_real": int(np.isfinite(r[m].to_numpy(float)).sum()),
                    "n_null": int(np.isfinite(n[m].to_numpy(float)).sum()),
                    "n_real_excluded": len(real_df) - int(np.isfinite(r[m].to_numpy(float)).sum()),
                    "n_null_excluded": len(null_df) - int(np.isfinite(n[m].to_numpy(float)).sum()),
                }
            )
    return pd.DataFrame(rows)


def ks_table(real: dict[str, pd.DataFrame], column: str = "psi") -> pd.DataFrame:
    """Paper Fig. 2c: two-sample KS test of the PSI distributions of every pair of layers (in config order)."""
    rows = []
    for la, lb in itertools.combinations(list(real), 2):
        a = _finite(ok_rows(real[la])[column])
        b = _finite(ok_rows(real[lb])[column])
        stat, p = ks_2samp(a, b)
        rows.append(
            {
                "layer_a": la,
                "layer_b": lb,
                "statistic": stat,
                "pvalue": p,
                "median_a": float(np.median(a)) if len(a) else float("nan"),
                "median_b": float(np.median(b)) if len(b) else float("nan"),
                "q75_a": float(np.quantile(a, 0.75)) if len(a) else float("nan"),
                "q75_b": float(np.quantile(b, 0.75)) if len(b) else float("nan"),
                "n_a": len(a),
                "n_b": len(b),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["layer_a", "layer_b", "statistic", "pvalue", "median_a", "median_b", "q75_a", "q75_b", "n_a", "n_b"],
    )


def high_psi_threshold(null_df: pd.DataFrame, quantile: float = 0.95) -> float:
    """log-PSI above which a real channel beats `quantile` of the layer's null neurons."""
    x = _finite(ok_rows(null_df)["log_psi"])
    return float(np.quantile(x, quantile)) if len(x) else float("nan")


def k_hat_table(real: dict[str, pd.DataFrame], null: dict[str, pd.DataFrame], quantile: float = 0.95) -> pd.DataFrame:
    """Paper Fig. 5: channels per K-hat, for all valid channels and for the high-PSI ones."""
    rows = []
    for layer, df in real.items():
        ok = ok_rows(df)
        thr = high_psi_threshold(null[layer], quantile) if layer in null else float("nan")
        high = ok[ok["log_psi"] > thr] if np.isfinite(thr) else ok.iloc[:0]
        ks = sorted(set(ok["k_hat"].dropna().astype(int)))
        for k in ks:
            rows.append(
                {
                    "layer": layer,
                    "k_hat": int(k),
                    "n_all": int((ok["k_hat"] == k).sum()),
                    "n_high_psi": int((high["k_hat"] == k).sum()),
                    "high_psi_log_threshold": thr,
                }
            )
    return pd.DataFrame(rows, columns=["layer", "k_hat", "n_all", "n_high_psi", "high_psi_log_threshold"])


def null_diagnostics(real: dict[str, pd.DataFrame], nulls, sd_tol: float) -> pd.DataFrame:
    """Per layer and component: which null was used and how many channels it left with a near-zero sd.

    A null whose sd is below `calibration.sd_tol` cannot calibrate (the hat is then 0, 0.5 or 1 up to
    eps); counting such channels per null choice shows degenerate nulls, e.g. the paper's rotation S-null.
    """
    choice = {"S": nulls.s_null, "Q": nulls.q_null, "D": nulls.d_null}
    rows = []
    for layer, df in real.items():
        df = channels_only(df)
        live = df[~df["status"].astype(str).str.startswith("dead")]
        counts = low_sd_counts(live)
        for c in COMPONENTS:
            sd = live[f"{c}_sd"].to_numpy(dtype=float)
            rows.append({
                "layer": layer, "component": c, "null": choice[c], "n_channels": len(live),
                "n_low_sd": counts[c], "share_low_sd": counts[c] / len(live) if len(live) else np.nan,
                "median_sd": float(np.nanmedian(sd)) if len(sd) else np.nan, "sd_tol": sd_tol,
            })
    return pd.DataFrame(rows)
