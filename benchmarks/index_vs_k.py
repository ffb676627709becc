"""Recovery of the index (and of the peers and PSI) at K = 25, 50 and 100 mined patches per channel.

    python benchmarks/index_vs_k.py                          # the demo world, K = 25 50 100, world seed 0
    python benchmarks/index_vs_k.py --seeds 0 1 2 --k 25 100 # other world seeds and Ks
    python benchmarks/index_vs_k.py --out docs/index_vs_k    # also write <out>.csv and <out>.png

For each (world seed, K) it runs the workflow on config/demo.yaml with `mining.topk: K` (run name
demo_s<seed>_k<K>; finished jobs are reused) up to report/recovery.csv, then prints the AUROC of
every score for both ground truths (planted polysemantic vs monosemantic channels; OR-units vs
single channels) and the OR-units' paired win rate. A score meant to describe a unit must not get
worse with more data: the index's rows should not fall as K grows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHOW = ["index", "psi", "S", "Q", "semanticlens", "monosemanticity"]


def run(seed: int, k: int, cores: int) -> pd.DataFrame:
    name = f"demo_s{seed}_k{k}"
    k_values = [v for v in (10, 20, 30, 40) if v < k]
    overlay = (f"run_name: {name}\nworld:\n  seed: {seed}\nmining:\n  topk: {k}\n"
               f"report:\n  k_values: {k_values}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(overlay)
    target = f"results/{name}/report/recovery.csv"
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), target,
           "--configfile", "config/demo.yaml", f.name]
    print(f"world seed {seed}, K = {k}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table = pd.read_csv(ROOT / target)
    return table.assign(world_seed=seed, K=k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", help="write <out>.csv and <out>.png")
    args = ap.parse_args()
    table = pd.concat([run(s, k, args.cores) for s in args.seeds for k in args.k], ignore_index=True)
    per_layer = table[(table["layer"] != "all") & table["score"].isin(SHOW)]
    pd.set_option("display.width", 200)
    for value in ("auroc", "win_rate"):
        wide = per_layer.pivot_table(index=["truth", "layer", "world_seed", "K"], columns="score", values=value)
        if wide.notna().any().any():
            print(f"\n{value}:\n{wide[[s for s in SHOW if s in wide.columns]].round(3).to_string()}")
    if args.out:
        out = ROOT / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(f"{out}.csv", index=False)
        plot(per_layer, f"{out}.png")
        print(f"\nwrote {out}.csv and {out}.png")


def plot(table: pd.DataFrame, path: str) -> None:
    import matplotlib  # lazy: only with --out

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend

    panels = list(table[["truth", "layer"]].drop_duplicates().itertuples(index=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (truth, layer) in zip(axes[0], panels):
        d = table[(table["truth"] == truth) & (table["layer"] == layer)]
        for score in SHOW:
            s = d[d["score"] == score].groupby("K")["auroc"].mean()
            ax.plot(s.index, s.values, marker="o", lw=2.5 if score == "index" else 1.2, label=score)
        ax.set(title=f"{truth}, {layer}", xlabel="K (patches per channel)", ylim=(0.4, 1.02))
        ax.axhline(0.5, color="0.6", ls=":", lw=1)
    axes[0, 0].set_ylabel("recovery AUROC (mean over world seeds)")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
