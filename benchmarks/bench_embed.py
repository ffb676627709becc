"""Patch embedding against a bare encode_image over the same number of distinct crops, side by side in one run.

    python benchmarks/bench_embed.py results/smoke --layer layer4 --crops 96 --repeats 2

Reads a finished run's top-K table, geometry and dataset; takes the layer's first --crops distinct
crops (image, crop box) and times, interleaved over --repeats rounds, with ViT-B/32 (random weights,
open_clip, no download) at --batch-size on --threads threads:
- `embed_crops`: what an embed_patches job does per crop: read the images, cut and resize the crops in
  batches, encode;
- `per-crop`: the previous way: the same, resizing one crop per call;
- `bare`: encode_image alone on random tensors of the same count and size.
Prints each one's best time and the ratios bare / embed_crops and bare / per-crop (1 = no overhead).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> None:
    import numpy as np
    import pandas as pd
    import torch

    from polypsi import crops as crops_mod
    from polypsi.config import load_config
    from polypsi.croptable import CROP_COLUMNS, distinct_crops
    from polypsi.embedding import embed_crops, load_embedder

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished run's results folder (results/<run_name>)")
    ap.add_argument("--layer", default=None)
    ap.add_argument("--crops", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1,
                    help="threads cutting crops ahead (embed_crops' workers; an embed_patches job on a CPU uses 1)")
    ap.add_argument("--model", default="ViT-B-32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    geometry = json.loads((run / "geometry.json").read_text())
    layer = args.layer or list(geometry["layers"])[-1]
    g, size = geometry["layers"][layer], geometry["input_size"]
    topk = pd.read_parquet(run / "topk" / f"{layer}.parquet")
    dataset = pd.read_parquet(run / "dataset.parquet")
    every = distinct_crops(topk, g, size)
    sel = every.iloc[: args.crops]
    paths = dataset.set_index("image_id").loc[sel["image_id"], "path"].tolist()
    boxes = sel[CROP_COLUMNS[1:]].to_numpy()
    cfg = load_config({"embedder": {"name": args.model, "pretrained": None}, "device": "cpu"})
    emb = load_embedder(cfg.embedder, cfg, "cpu")
    bs, n = args.batch_size, len(sel)
    print(f"{run} {layer}: {len(topk)} patches, {len(topk[['image_id', 'u', 'v']].drop_duplicates())} distinct "
          f"sites, {len(every)} distinct crops; timing {n} crops ({g['crop']} px -> {emb.image_size} px), "
          f"{args.model} random weights, batch {bs}, {args.threads} threads, best of {args.repeats}")

    def new():
        crops_mod._cached_image.cache_clear()
        return embed_crops(emb, paths, boxes, size, bs, workers=args.workers)

    def per_crop():
        crops_mod._cached_image.cache_clear()
        out = []
        for i in range(0, n, bs):
            c = torch.stack([torch.nn.functional.interpolate(
                crops_mod._cached_image(p, size)[:, y0:y1, x0:x1].unsqueeze(0), size=(emb.image_size,) * 2,
                mode="bilinear", align_corners=False, antialias=True)[0]
                for p, (y0, x0, y1, x1) in zip(paths[i : i + bs], boxes[i : i + bs])])
            out.append(emb.encode_images(c))
        return np.concatenate(out)

    x = torch.rand(n, 3, emb.image_size, emb.image_size, generator=torch.Generator().manual_seed(0))

    def bare():
        return np.concatenate([emb.encode_images(x[i : i + bs]) for i in range(0, n, bs)])

    emb.encode_images(x[:4])  # warm-up
    times = {"embed_crops": [], "per-crop": [], "bare": []}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("embed_crops", new), ("per-crop", per_crop)):
            t0 = time.perf_counter()
            z = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "embed_crops":
                z_new = z
            elif name == "per-crop":
                assert np.array_equal(z, z_new), "batched and one-at-a-time crops gave different embeddings"
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:12s} {v:7.2f} s  ({n / v:6.2f} crops/s; all rounds: {', '.join(f'{t:.2f}' for t in times[k])})")
    print(f"embed_crops / bare throughput: {best['bare'] / best['embed_crops']:.3f}; "
          f"per-crop / bare: {best['bare'] / best['per-crop']:.3f} (embeddings identical to the bit)")


if __name__ == "__main__":
    main()
