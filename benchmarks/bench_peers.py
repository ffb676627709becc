"""Peers' scores (polypsi.stats.peers) against the authors' SemanticLens package, on inputs of paper shape.

    python benchmarks/bench_peers.py              # 512 units x 50 patches x 512 dims
    python benchmarks/bench_peers.py --units 64 --ref-units 16

The package comes from requirements-test.txt (`make test` installs it with --no-deps: its
transformers/timm/open-clip requirements are not needed for semanticlens.scores). Without it only
the timings and the MS loop check are printed.

Inputs are generated (no model needed), with polypsi's synthetic CLIP-like patches: a shared
offset direction plus 1-4 planted concepts at random separations, and structure-free units.
Rows are given in rank order with distinct activations, as the package expects. Reported: wall
time per unit of each implementation, and per kind of unit the share of units whose scores
agree to 1e-9 and the mean and largest |difference|. Disagreements are k-means keeping another
local optimum (both are the best of 10 k-means++ restarts, with different random numbers).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def make_inputs(n: int, seed: int):
    from polypsi.stats.synthetic import make_world, noise_channels, planted_channels

    rng = np.random.default_rng(seed)
    world = make_world(rng, d=512, n_concepts=100)
    Z, kind = [], []
    for i in range(n):
        k = 1 + i % 5
        if k == 5:
            z, _ = noise_channels(rng, 1, decay=0.3, common=1.0)
            kind.append("structure-free")
        else:
            z, _, _ = planted_channels(rng, world, 1, k, separation=rng.uniform(0.3, 1.2))
            kind.append(f"planted k={k}")
        Z.append(z)
    Z = np.concatenate(Z).astype(np.float64)
    acts = -np.sort(-rng.gamma(2.0, size=Z.shape[:2]), axis=1)  # rank order, distinct
    return Z, acts, np.array(kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--ref-units", type=int, default=128, help="units also scored by the package")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from polypsi.stats.peers import monosemanticity_score, semanticlens_polysemanticity

    torch.set_num_threads(1)
    Z, acts, kind = make_inputs(args.units, args.seed)
    print(f"inputs: {Z.shape[0]} units x {Z.shape[1]} patches x {Z.shape[2]} dims", flush=True)
    with threadpool_limits(1):
        t = time.perf_counter()
        ours = semanticlens_polysemanticity(Z, acts)
        t_sl = time.perf_counter() - t
        t = time.perf_counter()
        ms = monosemanticity_score(Z, acts)
        t_ms = time.perf_counter() - t
    print(f"semanticlens_polysemanticity: {1e3 * t_sl / len(Z):7.2f} ms per unit")
    print(f"monosemanticity_score      : {1e3 * t_ms / len(Z):7.2f} ms per unit")
    for name in sorted(set(kind)):
        sel = kind == name
        print(f"  {name:<15} SemanticLens poly {np.nanmean(ours[sel]):.3f}   1 - MS {np.nanmean(1 - ms[sel]):.3f}")

    try:
        from semanticlens.scores import polysemanticity_score
    except ImportError as err:
        print(f"\nsemanticlens not importable ({err}); no package comparison")
        return
    from importlib.metadata import version

    idx = np.linspace(0, len(Z) - 1, min(args.ref_units, len(Z))).round().astype(int)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning on duplicate points
        t = time.perf_counter()
        ref = polysemanticity_score(torch.from_numpy(Z[idx])).numpy()
        t_ref = time.perf_counter() - t
    print(f"\nsemanticlens {version('semanticlens')} polysemanticity_score: {1e3 * t_ref / len(idx):7.2f} ms per unit "
          f"({(t_ref / len(idx)) / (t_sl / len(Z)):.0f}x ours)")
    diff = np.abs(ours[idx] - ref)
    for name in sorted(set(kind[idx])):
        sel = kind[idx] == name
        print(f"  {name:<15} {sel.sum():4d} units: agree to 1e-9 {100 * (diff[sel] < 1e-9).mean():5.1f}%   "
              f"mean |d| {diff[sel].mean():.4f}   max |d| {diff[sel].max():.4f}   "
              f"mean ours {ours[idx][sel].mean():.4f} package {ref[sel].mean():.4f}")


if __name__ == "__main__":
    main()
