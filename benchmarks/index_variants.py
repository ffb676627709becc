"""Variants of the index's concept contrast on finished planted-world runs, on the pipeline's own clusters.

    python benchmarks/index_variants.py results/demo [results/<other world run> ...]

For every unit (channel, and OR-unit from or_units/<layer>/) it takes the clusters the scorer found
(patches/<layer>.parquet `cluster`; the OR-units' draw-0 assignments), their prototypes and names,
and recomputes S x contrast under each variant below; then prints the AUROC of planted polysemantic
vs monosemantic channels, of OR-units vs monosemantic channels, and the OR-units' paired win rate,
per run and layer, with their mean and worst case. `index` is the run's own column (the reference).

Variants: how a cluster's share w is counted (`count`: its patches; `act`: its patches' activation,
relative to the unit's top-1 and clipped at 0) x whether the pair sum is divided by 1 - 1/k (the
evenness division of the index, `even`) or not (`sum`).
"""

from __future__ import annotations

import glob
import sys

import numpy as np
import pandas as pd

from polypsi.io import read_table
from polypsi.report.stats import auroc
from polypsi.stats import TextBank
from polypsi.stats.metrics import NAMES_COMPARED


def pair_terms(Z: np.ndarray, labels: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k prototypes' pairwise sqrt(margin x distance) [k, k], cluster ids 0..k-1 present)."""
    k = labels.max() + 1
    P = np.stack([Z[labels == j].mean(0) for j in range(k)])
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    sims = P @ E.T
    top = np.argsort(-sims, 1)[:, :NAMES_COMPARED]
    G = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if i != j:
                c = np.union1d(top[i], top[j])
                d = sims[i, c] - sims[j, c]
                margin = max((d.max() + (-d).max()) / 2, 0.0)
                G[i, j] = np.sqrt(margin * max(1.0 - float(P[i] @ P[j]), 0.0))
    return G, np.arange(k)


def variants(Z, labels, act, E) -> dict[str, float]:
    G, ids = pair_terms(Z, labels, E)
    k = len(ids)
    a = np.clip(act / act.max(), 0, None) if act.max() > 0 else np.ones(len(act))
    out = {}
    for share, weights in (("count", np.ones(len(act))), ("act", a)):
        w = np.bincount(labels, weights=weights, minlength=k) / weights.sum()
        total = float((np.outer(w, w) * G).sum())
        out[f"{share}/sum"] = total
        out[f"{share}/even"] = total / (1 - 1 / max(k, 2))
    return out


def run(R: str) -> pd.DataFrame:
    t, e = read_table(f"{R}/prompts/text.parquet", embedding="embedding")
    E, _ = TextBank.from_table(t, e).candidates("main", "concept")
    truth = pd.read_csv(f"{R}/truth/units.csv")
    out = []
    for layer in ("layer3", "layer4"):
        psi = read_table(f"{R}/psi/{layer}.parquet").set_index("channel")
        pt, Z = read_table(f"{R}/patches/{layer}.parquet", embedding="embedding")
        rows = {}
        for c, g in pt.groupby("channel"):
            g = g.sort_values("rank")
            rows[c] = variants(Z[g.index.to_numpy()], g.cluster.to_numpy(), g.activation.to_numpy(), E)
        ot, oZ = read_table(f"{R}/or_units/{layer}/embeddings.parquet", embedding="embedding")
        draws = pd.concat([read_table(p) for p in glob.glob(f"{R}/or_units/{layer}/scores/draws*.parquet")])
        real = draws[draws.draw == 0].set_index("channel")
        otk = read_table(f"{R}/or_units/{layer}/topk.parquet")
        for c, g in ot.groupby("channel"):
            g = g.sort_values("rank")
            act = otk[otk.channel == c].sort_values("rank").activation.to_numpy()
            rows[c] = variants(oZ[g.index.to_numpy()], np.asarray(real.loc[c, "assignments"]), act, E)
        df = psi.join(pd.DataFrame(rows).T)
        names = ["index"]
        for v in ("count/sum", "count/even", "act/sum", "act/even"):
            df[f"S x {v}"] = df.S * df[v]
            names.append(f"S x {v}")
        kind = truth[truth.layer == layer].set_index("channel")["kind"]
        df["kind"] = [("or" if u == "or_unit" else kind.get(c)) for c, u in zip(df.index, df.unit_kind)]
        mono, poly, ors = df[df.kind == "mono"], df[df.kind == "poly"], df[df.kind == "or"]
        for n in names:
            win = np.mean([(u[n] > df.loc[u.part_a, n]) and (u[n] > df.loc[u.part_b, n]) for _, u in ors.iterrows()])
            out.append({"run": R.rstrip("/"), "layer": layer, "score": n, "planted": auroc(poly[n], mono[n]),
                        "or_units": auroc(ors[n], mono[n]), "win_rate": win})
    return pd.DataFrame(out)


if __name__ == "__main__":
    res = pd.concat([run(R) for R in sys.argv[1:]], ignore_index=True)
    pd.set_option("display.width", 250)
    for col in ("planted", "or_units", "win_rate"):
        wide = res.pivot_table(index="score", columns=["run", "layer"], values=col)
        print(f"\n{col}:\n{wide.round(3).to_string()}")
        print(pd.DataFrame({"mean": wide.mean(axis=1), "worst": wide.min(axis=1)}).round(3).to_string())
