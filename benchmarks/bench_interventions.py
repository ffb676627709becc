"""The interventions' work other than the model: what stays on the CPU when the model runs on a GPU.

    python benchmarks/bench_interventions.py .bench/results/bench --layer layer4 --workers 0 1 2 --repeats 2

Reads a finished run's PSI, patches (with embeddings), dataset and geometry tables and runs both
protocols (replacement and insertion, the default `interventions` settings unless --configfile) with a
stand-in for the model: each image's colours pooled to the layer's grid times a fixed random matrix,
activations of the layer's shape at almost no cost. What is timed is then the rest of the stage: choosing
channels and donors, reading and pasting images, batching, reading the activations back, the tables.
Each --workers value (threads building the next batches while the "model" runs, runtime.built_ahead)
is timed --repeats times, interleaved; the best time of each is printed, and the trial tables of all
values are checked to be identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def stand_in(channels: int, height: int, width: int, layer: str, seed: int = 0):
    """images [B,3,S,S] -> {layer: [B, channels, height, width]}: pooled colours times a fixed matrix, rectified."""
    import torch
    import torch.nn.functional as F

    W = torch.randn(channels, 3, generator=torch.Generator().manual_seed(seed))

    def extract(x):
        p = F.adaptive_avg_pool2d(x, (height, width)) - 0.5
        return {layer: torch.relu(torch.einsum("bchw,kc->bkhw", p, W))}

    return extract


def main(argv=None) -> None:
    import pandas as pd
    import torch

    from polypsi.config import IMAGENET_MEAN, IMAGENET_STD, load_config, load_config_file
    from polypsi.interventions.insert import run_insertions
    from polypsi.interventions.run import run_interventions
    from polypsi.io import read_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished run's results folder (results/<run_name>)")
    ap.add_argument("--layer", default=None, help="default: the deepest layer of the geometry")
    ap.add_argument("--configfile", default=None, help="a config file whose `interventions` settings to use")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the caller (the stand-in's)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    geometry = json.loads((run / "geometry.json").read_text())
    layer = args.layer or list(geometry["layers"])[-1]
    geom = geometry["layers"][layer]
    size = int(geometry["input_size"])
    cfg = load_config_file(args.configfile) if args.configfile else load_config(None)
    ic = cfg.interventions
    with_emb = read_table(run / "patches" / f"{layer}.parquet")
    patches = with_emb.drop(columns=["embedding"], errors="ignore")
    psi, dataset = read_table(run / "psi" / f"{layer}.parquet"), read_table(run / "dataset.parquet")
    workdir = run.resolve().parents[1]  # the run's image paths are relative to the folder it ran in
    dataset["path"] = [p if Path(p).is_absolute() else str(workdir / p) for p in dataset["path"]]
    extract = stand_in(int(patches["channel"].max()) + 1, int(geom["height"]), int(geom["width"]), layer)
    quiet = logging.getLogger("bench_interventions.quiet")  # no progress lines between the timings
    quiet.disabled = True

    print(f"{run} {layer}: {len(psi)} channels, {len(patches)} patches, {len(dataset)} images of {size} px; "
          f"replacement {ic.n_channels} channels x {ic.sites_per_channel} sites, insertion {ic.insert.channels} "
          f"channels x {ic.insert.images} images x {ic.insert.donors} donors, {ic.insert.scan_images} scanned; "
          f"stand-in model; {args.threads} torch thread(s); best of {args.repeats}, interleaved", flush=True)
    best = {w: [float("inf"), float("inf")] for w in args.workers}
    tables = {}
    for _ in range(args.repeats):
        for w in args.workers:
            t0 = time.perf_counter()
            a = run_interventions(extract, layer, psi, patches, dataset, geometry, ic, "cpu", size, IMAGENET_MEAN,
                                  IMAGENET_STD, logger=quiet, workers=w)
            t1 = time.perf_counter()
            b, sig = run_insertions(extract, layer, psi, with_emb, dataset, geometry, ic, "cpu", size, IMAGENET_MEAN,
                                    IMAGENET_STD, logger=quiet, workers=w)
            t2 = time.perf_counter()
            best[w] = [min(best[w][0], t1 - t0), min(best[w][1], t2 - t1)]
            tables[w] = (a, b, sig)
    first = tables[args.workers[0]]
    for w in args.workers[1:]:
        for x, y in zip(first[:2], tables[w][:2]):
            pd.testing.assert_frame_equal(x, y)
        pd.testing.assert_frame_equal(first[2].drop(columns="signature"), tables[w][2].drop(columns="signature"))
        assert all((p == q).all() for p, q in zip(first[2]["signature"], tables[w][2]["signature"]))
    a, b, _ = first
    print(f"trials: replacement {len(a)} ({int(a['activation_after'].notna().sum())} run), insertion {len(b)} "
          f"({int(b['activation_after'].notna().sum())} run); identical for every --workers value")
    for w in args.workers:
        r, i = best[w]
        print(f"workers={w}: replacement {r:6.2f} s, insertion {i:6.2f} s, both {r + i:6.2f} s")


if __name__ == "__main__":
    main()
