"""The alternatives weighed for the index, on planted-world runs: AUROC and OR-unit win rate of each candidate.

    python benchmarks/index_alternatives.py results/demo [results/<other world run> ...]

Each run must be a finished planted-world run (psi/, patches/, prompts/, truth/units.csv). Every
channel's top patches are re-clustered here with scikit-learn (spherical k-means through
unit vectors, K' = 2..5 by cosine silhouette), so the candidates are compared on one
clustering; OR-units are built as in polypsi.validation.or_units (monosemantic parts with
different planted concepts, interleaved top-K) from up to 60 random pairs. Candidates: raw S, Q,
D, S x Q; name_margin (the first, top-1-name concept contrast); proto_dist (share-weighted prototype
cosine distance, images only); name_gini (Gini-Simpson of the shares of distinct names);
n_names (distinct names); S_x_nm (S x that contrast, the first choice of index); psi (planted only).
The index as it is now (margin over each pair's three best names, evenness division) and its variants
are compared on the pipeline's own clusters by benchmarks/index_variants.py.
Slow (minutes per run): it clusters every unit with 10 restarts per K'.
"""
import itertools
import sys

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi
from sklearn.metrics import silhouette_score

from polypsi.io import read_table
from polypsi.stats import TextBank
from polypsi.report.stats import auroc

def load(run, layer):
    R = run
    p = read_table(f"{R}/patches/{layer}.parquet", embedding="embedding")
    pt, Z = p
    t, e = read_table(f"{R}/prompts/text.parquet", embedding="embedding")
    text = TextBank.from_table(t, e)
    psi = read_table(f"{R}/psi/{layer}.parquet")
    truth = pd.read_csv(f"{R}/truth/units.csv")
    truth = truth[truth.layer == layer]
    return pt, Z, text, psi, truth

def cluster(Z, ks=(2,3,4,5), seed=0):
    best = (-2, None, 1)
    for k in ks:
        km = KMeans(k, n_init=10, random_state=seed).fit(Z)
        if len(set(km.labels_)) < 2: continue
        s = silhouette_score(Z, km.labels_, metric="cosine")
        if s > best[0]: best = (s, km.labels_, k)
    return max(best[0], 0), best[1], best[2]

def features(Z, y, act, E, names):
    S, lab, k = cluster(Z)
    K = len(Z)
    f = {"S": S, "Q": nmi(y, lab), "k": k}
    P = np.stack([Z[lab == j].mean(0) for j in range(k)]); P /= np.linalg.norm(P, axis=1, keepdims=True)
    w = np.bincount(lab, minlength=k) / K
    sims = P @ E.T  # [k, C]
    top = sims.argmax(1)
    srt = np.sort(sims, 1)
    f["D"] = float(np.mean(srt[:, -1] - srt[:, -2]))
    m = np.zeros((k, k)); pd_ = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            m[i, j] = sims[j, top[j]] - sims[j, top[i]]  # how much worse j matches i's name
            pd_[i, j] = 1 - P[i] @ P[j]
    M = (m + m.T) / 2
    W = np.outer(w, w); np.fill_diagonal(W, 0)
    f["gini"] = 1 - (w ** 2).sum()
    f["name_margin"] = float((W * M).sum())
    f["proto_dist"] = float((W * pd_).sum())
    # name-merged balance: effective number of distinct names
    g = pd.Series(w).groupby(top).sum().to_numpy()
    f["n_names"] = len(g)
    f["name_gini"] = 1 - (g ** 2).sum()
    f["S_x_nm"] = S * f["name_margin"]
    f["SQ"] = S * f["Q"]
    return f

def run(runname, layer, n_or=60, seed=0):
    pt, Z, text, psi, truth = load(runname, layer)
    E, _ = text.candidates("main", "concept"); names = text.concepts
    K = pt.groupby("channel").size().iloc[0]
    rows = []
    by = {c: (Z[g.index.to_numpy()], g.label.to_numpy(), g.activation.to_numpy(), g.image_id.to_numpy())
          for c, g in pt.sort_values(["channel", "rank"]).groupby("channel")}
    kind = truth.set_index("channel")["kind"]; conc = truth.set_index("channel")["concepts"]
    psi = psi.set_index("channel")
    for c, (z, y, a, im) in by.items():
        if kind.get(c) not in ("mono", "poly"): continue
        f = features(z, y, a, E, names); f.update(unit=f"c{c}", kind=kind[c], psi=psi.loc[c, "psi"],
                                                  Sp=psi.loc[c, "S"], Qp=psi.loc[c, "Q"], Dp=psi.loc[c, "D"])
        rows.append(f)
    rng = np.random.default_rng(seed)
    monos = [c for c in by if kind.get(c) == "mono"]
    pairs = [(a, b) for a, b in itertools.combinations(monos, 2) if conc[a] != conc[b]]
    pairs = [pairs[i] for i in rng.choice(len(pairs), min(n_or, len(pairs)), replace=False)]
    for a, b in pairs:
        za, ya, aa, ia = by[a]; zb, yb, ab, ib = by[b]
        seen, sel = set(), []
        for r in range(K):
            for (z, y, im, part) in ((za, ya, ia, 0), (zb, yb, ib, 1)):
                if im[r] not in seen and len(sel) < K:
                    seen.add(im[r]); sel.append((z[r], y[r], 1.0 - r / K, part))
        z = np.stack([s[0] for s in sel]); y = np.array([s[1] for s in sel]); act = np.array([s[2] for s in sel])
        f = features(z, y, act, E, names); f.update(unit=f"or{a}_{b}", kind="or", a=f"c{a}", b=f"c{b}")
        rows.append(f)
    return pd.DataFrame(rows)

if __name__ == "__main__":
    feats = ["S", "Q", "D", "SQ", "name_margin", "proto_dist", "name_gini", "n_names", "S_x_nm", "psi"]
    out = []
    for runname in sys.argv[1:]:
        for layer in ("layer3", "layer4"):
            df = run(runname, layer)
            r = {"run": runname, "layer": layer}
            single = df[df.kind == "mono"]
            for f in feats:
                r[f"pl_{f}"] = auroc(df.loc[df.kind == "poly", f], df.loc[df.kind == "mono", f])
                if f != "psi":
                    ors = df[df.kind == "or"]
                    r[f"or_{f}"] = auroc(ors[f], single[f])
                    v = single.set_index("unit")[f]
                    r[f"win_{f}"] = float(np.mean([(o[f] > v[o.a]) and (o[f] > v[o.b]) for _, o in ors.iterrows()]))
            out.append(r)
    res = pd.DataFrame(out).set_index(["run", "layer"])
    pd.set_option("display.width", 250); pd.set_option("display.max_columns", 50)
    for pre in ("pl_", "or_", "win_"):
        print(res[[c for c in res.columns if c.startswith(pre)]].round(3))
