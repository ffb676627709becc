"""The batched scorer's cost per channel against K (top patches per channel), split into its parts.

    python benchmarks/bench_scoring_k.py                          # K = 25, 50, 100, 200; 24 channels x 21 draws
    python benchmarks/bench_scoring_k.py --ks 25 50 100 --channels 12 --repeats 2    # a quick look

Inputs are generated as in bench_stats.py (planted 2-5 clusters at random separations, a quarter
structure-free; d = 512, a 267-concept x 6-template prompt set), with K patches per channel.
`score_channels` runs on one thread, torch's and numpy's BLAS alike, for stable timings on a
shared machine; the values of K are interleaved within each repeat, and every cell is the best of
the repeats. A part's time is exclusive: timers wrap the scorer's functions from this script (the
library has none), and a part excludes the timed parts it calls. `other` is the rest: the Gram
matrices Z Z^T, prototypes, label bookkeeping, input checks and Python overhead. The growth
exponent of a part between K1 and K2 is log(t(K2) / t(K1)) / log(K2 / K1): 1 is linear, 2 quadratic.
Below the table, untimed runs count Lloyd's steps.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections import defaultdict

import numpy as np

# (part, module, function name) wrapped by the timers; a dict entry is (part, module, dict name, key).
PARTS = [
    ("k-means++ seeding", "kmeans", "kmeanspp"),
    ("Lloyd iterations", "kmeans", "_lloyd_points"),
    ("k-means objective", "kmeans", "objective"),
    ("silhouette", "kmeans", "silhouette_gram"),  # before the distances were shared by every K'
    ("silhouette", "kmeans", "cosine_distances"),
    ("silhouette", "kmeans", "silhouette_distances"),
    ("null Gram W G W^T", "batched", "_null_gram"),
    ("mixing W (QR, B O B^T)", "batched", "mixing_matrices"),
    ("null draws (rng)", "batched", "null_draw"),
    ("null draws (rng)", "batched", "kmeans_uniforms"),
    ("null draws (rng)", "batched", "unit_rng"),
    ("Q (NMI)", "batched", "nmi"),
    ("Q (NMI)", "batched", "dense_labels"),
    ("D (top-2 gaps)", "batched", "top2_gaps"),
    ("contrast (index)", "batched", "_contrast"),
    ("cluster details", "batched", "_details"),
]
DICT_PARTS = [("D (top-2 gaps)", "batched", "D_NULLS", key) for key in ("unrelated_prompts", "random_directions", "shuffle")]


class Timers:
    """Exclusive seconds per part: a call's time minus that of the timed calls inside it."""

    def __init__(self):
        self.sec = defaultdict(float)
        self._stack: list[float] = []  # time spent in timed children of each open call

    def wrap(self, part, fn):
        def timed(*a, **kw):
            self._stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                inner = self._stack.pop()
                self.sec[part] += dt - inner
                if self._stack:
                    self._stack[-1] += dt

        return timed

    def install(self):
        import importlib

        for part, mod, name in PARTS:
            m = importlib.import_module(f"polypsi.stats.{mod}")
            if hasattr(m, name):  # the names of one version of the scorer or another
                setattr(m, name, self.wrap(part, getattr(m, name)))
        for part, mod, name, key in DICT_PARTS:
            table = getattr(importlib.import_module(f"polypsi.stats.{mod}"), name)
            table[key] = self.wrap(part, table[key])


def lloyd_work(run) -> tuple[float, float]:
    """Lloyd steps per unit in one scoring run, and the share of the (unit, K', restart) partition-steps it
    computed that were needed: those that moved a partition, plus the one step that found it fixed."""
    from polypsi.stats import kmeans

    step, points = kmeans._lloyd_step, kmeans._lloyd_points
    n = dict(units=0, partitions=0, unit_steps=0, moved=0)

    def counted_step(G, lab, lay, spherical):
        new = step(G, lab, lay, spherical)
        n["unit_steps"] += len(G)
        n["moved"] += int((new != lab).any(1).sum())
        return new

    def counted_points(G, lab, *a):
        n["units"] += len(G)
        n["partitions"] += lab.shape[0] * lab.shape[2]
        return points(G, lab, *a)

    kmeans._lloyd_step, kmeans._lloyd_points = counted_step, counted_points
    try:
        run()
    finally:
        kmeans._lloyd_step, kmeans._lloyd_points = step, points
    done = n["unit_steps"] * n["partitions"] / n["units"]
    return n["unit_steps"] / n["units"], (n["moved"] + n["partitions"]) / done


def make_inputs(n: int, K: int, seed: int, structure_free: float = 0.25):
    from polypsi.stats.synthetic import make_world, noise_channels, planted_channels

    rng = np.random.default_rng(seed)
    world = make_world(rng, d=512, n_concepts=267, n_templates=6, n_null_concepts=300)
    Z, y = [], []
    n_free = int(round(structure_free * n))
    for i in range(n - n_free):
        z, lab, _ = planted_channels(rng, world, 1, 2 + i % 4, K=K, separation=rng.uniform(0.3, 1.2), label_noise=0.3)
        Z.append(z), y.append(lab)
    if n_free:
        z, lab = noise_channels(rng, n_free, K=K, decay=0.3, common=1.0)
        Z.append(z), y.append(lab)
    return np.concatenate(Z), np.concatenate(y), world.text


def exponent(a: float, b: float, ka: int, kb: int) -> float:
    return math.log(b / a) / math.log(kb / ka) if a > 0 and b > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[25, 50, 100, 200], help="patches per channel")
    ap.add_argument("--channels", type=int, default=24)
    ap.add_argument("--m", type=int, default=20, help="null draws (draws 0..m are scored)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from polypsi.config import NullConfig, StatsConfig
    from polypsi.stats import score_channels

    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS too: two BLAS threads on a busy machine slow the null's QR many times over
    timers = Timers()
    timers.install()
    stats, nulls = StatsConfig(), NullConfig(m=args.m, seed=args.seed)
    draws = list(range(args.m + 1))
    inputs = {K: make_inputs(args.channels, K, args.seed) for K in args.ks}
    ch = np.arange(args.channels)
    print(f"{args.channels} channels x {len(draws)} draws x K patches x 512 dims; k-means: {stats.kmeans}, "
          f"K' {stats.k_min}..{stats.k_max}, n_init {stats.n_init}; s_null {nulls.s_null}, d_null {nulls.d_null}; "
          f"1 thread; best of {args.repeats}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    Z, y, text = inputs[args.ks[0]]
    score_channels(Z[:2], y[:2], ch[:2], text, draws, stats, nulls, "layer4")  # warm-up
    best: dict[int, dict[str, float]] = {K: {} for K in args.ks}
    for _ in range(args.repeats):
        for K in args.ks:  # interleaved, so that a busy spell slows every K alike
            Z, y, text = inputs[K]
            timers.sec.clear()
            t = time.perf_counter()
            score_channels(Z, y, ch, text, draws, stats, nulls, "layer4")
            total = time.perf_counter() - t
            sec = dict(timers.sec, total=total, other=total - sum(timers.sec.values()))
            for part, s in sec.items():
                best[K][part] = min(best[K].get(part, math.inf), 1e3 * s / args.channels)

    parts = ["total"] + list(dict.fromkeys(p for p, *_ in PARTS + DICT_PARTS)) + ["other"]
    width = max(map(len, parts))
    pairs = list(zip(args.ks, args.ks[1:]))
    print(f"\nms per channel (all {len(draws)} draws), and growth exponent log(t(K2)/t(K1)) / log(K2/K1)")
    print(f"{'part':<{width}} " + " ".join(f"{'K=' + str(K):>9}" for K in args.ks)
          + "  " + " ".join(f"{f'{a}->{b}':>8}" for a, b in pairs) + f"  {'share@' + str(args.ks[-1]):>9}")
    for p in parts:
        v = [best[K].get(p, 0.0) for K in args.ks]
        row = f"{p:<{width}} " + " ".join(f"{x:9.2f}" for x in v) + "  "
        row += " ".join(f"{exponent(best[a].get(p, 0), best[b].get(p, 0), a, b):8.2f}" for a, b in pairs)
        row += f"  {100 * v[-1] / best[args.ks[-1]]['total']:8.1f}%"
        print(row)
    work = {K: lloyd_work(lambda: score_channels(*inputs[K][:2], ch, inputs[K][2], draws, stats, nulls, "layer4"))
            for K in args.ks}  # counted in untimed runs
    print("Lloyd steps per unit (all K' and restarts of a unit step together until every one is fixed): "
          + ", ".join(f"K={K} {w[0]:.1f}" for K, w in work.items()))
    print("share of the partition-steps computed that were needed (the others iterate restarts already fixed): "
          + ", ".join(f"K={K} {100 * w[1]:.0f}%" for K, w in work.items()))
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
