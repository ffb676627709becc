"""Batched torch scorer vs the per-channel scikit-learn reference, side by side on inputs of paper shape.

    python benchmarks/bench_stats.py                       # 3072 channels x 21 draws x 50 patches x 512 dims
    python benchmarks/bench_stats.py --channels 256 --ref-channels 16     # a quick look

Inputs are generated (no model needed): channels whose 50 patches form 2-5 planted clusters at
random separations, plus structure-free channels, a 1602-prompt main set (267 concepts x 6
templates) and an unrelated set. Both scorers see the same inputs and the same seeds; the
reference scores --ref-channels channels spread over the kinds, so times are compared per channel
(all 21 draws). Both use the 2 cores the same way: --workers processes with --threads threads
each, each process scoring a contiguous part of the channels (results do not depend on the
split). Agreement (K-hat, S) is reported on the real draw and on the null draws, next to the
agreement of the reference with itself under other k-means seeds (the restart-noise ceiling).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd


def make_inputs(n: int, seed: int, structure_free: float):
    from polypsi.stats.synthetic import make_world, noise_channels, planted_channels

    rng = np.random.default_rng(seed)
    world = make_world(rng, d=512, n_concepts=267, n_templates=6, n_null_concepts=300)
    Z, y, kind = [], [], []
    n_free = int(round(structure_free * n))
    for i in range(n - n_free):
        k = 2 + i % 4
        z, lab, _ = planted_channels(rng, world, 1, k, separation=rng.uniform(0.3, 1.2), label_noise=0.3)
        Z.append(z), y.append(lab), kind.append(f"planted k={k}")
    if n_free:
        z, lab = noise_channels(rng, n_free, decay=0.3, common=1.0)
        Z.append(z), y.append(lab), kind.extend(["structure-free"] * n_free)
    return np.concatenate(Z), np.concatenate(y), np.array(kind), world.text


_JOB: dict = {}  # inputs for the worker processes (inherited when they fork)


def _work(part: np.ndarray, threads: int):
    import torch
    from threadpoolctl import threadpool_limits

    from polypsi.stats import score_channels

    torch.set_num_threads(threads)
    j = _JOB
    cpu = time.process_time()
    with threadpool_limits(threads):
        out = score_channels(j["Z"][part], j["y"][part], j["ch"][part], j["text"], j["draws"], j["stats"],
                             j["nulls"], j["layer"])
    return out, time.process_time() - cpu


def run_parallel(workers: int, threads: int, **job):
    """Score job["ch"] split over worker processes: (table, wall seconds, summed CPU seconds)."""
    import multiprocessing as mp

    _JOB.clear()
    _JOB.update(job)
    parts = [p for p in np.array_split(np.arange(len(job["ch"])), workers) if len(p)]
    wall = time.perf_counter()
    if workers == 1:
        results = [_work(parts[0], threads)]
    else:
        with mp.get_context("fork").Pool(len(parts)) as pool:
            results = pool.starmap(_work, [(p, threads) for p in parts])
    wall = time.perf_counter() - wall
    return pd.concat([r[0] for r in results], ignore_index=True), wall, sum(r[1] for r in results)


def agreement(a, b, label):
    a, b = a.sort_values(["draw", "channel"]).reset_index(drop=True), b.sort_values(["draw", "channel"]).reset_index(drop=True)
    rows = []
    for name, sel in (("real draw", a.draw == 0), ("null draws", a.draw > 0)):
        same = (a.k_hat[sel] == b.k_hat[sel]).mean()
        ds = (a.S[sel] - b.S[sel]).abs()
        rows.append(f"  {label:<38} {name:<10}: K-hat agrees {100 * same:5.1f}%   median |dS| {ds.median():.4f}"
                    f"   95th pct |dS| {ds.quantile(0.95):.4f}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=3072)
    ap.add_argument("--ref-channels", type=int, default=256, help="channels scored by the reference")
    ap.add_argument("--m", type=int, default=20, help="null draws (draws 0..m are scored)")
    ap.add_argument("--workers", type=int, default=2, help="processes (the machine's 2 cores)")
    ap.add_argument("--threads", type=int, default=1, help="threads per process (torch and scikit-learn)")
    ap.add_argument("--structure-free", type=float, default=0.25, help="share of structure-free channels")
    ap.add_argument("--kmeans", default="euclidean", choices=["euclidean", "spherical"],
                    help="euclidean = scikit-learn's KMeans in the reference (the literal comparison)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from polypsi.config import NullConfig, StatsConfig

    Z, y, kind, text = make_inputs(args.channels, args.seed, args.structure_free)
    n_ref = min(args.ref_channels, args.channels)
    ref_idx = np.linspace(0, args.channels - 1, n_ref).round().astype(int)  # spread over the kinds of channel
    draws = list(range(args.m + 1))
    nulls = NullConfig(m=args.m, seed=args.seed)
    fast_cfg = StatsConfig(kmeans=args.kmeans, backend="torch")
    ref_cfg = StatsConfig(kmeans=args.kmeans, backend="sklearn")
    ch = np.arange(args.channels)

    print(f"inputs: {args.channels} channels x {len(draws)} draws x {Z.shape[1]} patches x {Z.shape[2]} dims; "
          f"{len(text.emb)} prompts ({len(text.concepts)} concepts), {len(text.null_emb)} unrelated prompts; "
          f"{(kind != 'structure-free').sum()} planted (2-5 clusters), {(kind == 'structure-free').sum()} structure-free")
    print(f"cores: {args.workers} processes x {args.threads} thread(s), for both scorers; k-means: {args.kmeans}, "
          f"n_init {fast_cfg.n_init}, K' {fast_cfg.k_min}..{fast_cfg.k_max}; load average at start "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    common = dict(text=text, nulls=nulls, layer="layer4")
    fast, wall_f, cpu_f = run_parallel(args.workers, args.threads, Z=Z, y=y, ch=ch, draws=draws, stats=fast_cfg,
                                       **common)
    ref, wall_r, cpu_r = run_parallel(args.workers, args.threads, Z=Z[ref_idx], y=y[ref_idx], ch=ref_idx,
                                      draws=draws, stats=ref_cfg, **common)
    # The reference against itself with other k-means seeds: restart noise.
    ref2, _, _ = run_parallel(args.workers, args.threads, Z=Z[ref_idx], y=y[ref_idx], ch=ref_idx, draws=[0],
                              stats=ref_cfg, text=text, nulls=NullConfig(m=args.m, seed=args.seed + 1), layer="layer4")
    per_f, per_r = wall_f / args.channels, wall_r / n_ref
    print()
    print(f"batched torch scorer : {args.channels:5d} channels x {len(draws)} draws in {wall_f:8.1f} s wall "
          f"({cpu_f:8.1f} s CPU) = {1e3 * per_f:7.2f} ms per channel")
    print(f"scikit-learn reference: {n_ref:5d} channels x {len(draws)} draws in {wall_r:8.1f} s wall "
          f"({cpu_r:8.1f} s CPU) = {1e3 * per_r:7.2f} ms per channel")
    print(f"speed-up per channel : {per_r / per_f:.1f}x wall, {(cpu_r / n_ref) / (cpu_f / args.channels):.1f}x CPU; "
          f"the reference would take {per_r * args.channels / 60:.1f} min for all {args.channels} channels")
    print()
    print("agreement on the reference channels:")
    sub = fast[fast.channel.isin(ref_idx)]
    print(agreement(sub, ref, "torch vs scikit-learn"))
    for k in sorted(set(kind[ref_idx])):
        sel = ref_idx[kind[ref_idx] == k]
        print(agreement(sub[sub.channel.isin(sel)], ref[ref.channel.isin(sel)], f"  {k} ({len(sel)} ch)").split("\n")[0])
    real_ref = ref[ref.draw == 0].reset_index(drop=True)
    same = (real_ref.k_hat == ref2.k_hat).mean()
    print(f"  {'scikit-learn vs itself, other seeds':<38} {'real draw':<10}: K-hat agrees {100 * same:5.1f}%   "
          f"median |dS| {(real_ref.S - ref2.S).abs().median():.4f}")
    print(f"load average at end {os.getloadavg()[0]:.2f} (other processes on the machine slow both scorers)")


if __name__ == "__main__":
    main()
