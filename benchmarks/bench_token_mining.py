"""Mining a token layer against mining a conv layer, each relative to a bare forward pass of its model.

    python benchmarks/bench_token_mining.py                 # 224 px, 64 images, 5 interleaved repeats
    python benchmarks/bench_token_mining.py --images 16 --repeats 3      # a quick look

Models with random weights: timm's ViT-Tiny/16 (blocks.6 outputs 197 tokens x 192 features,
a 14 x 14 grid after the class token) and torchvision's ResNet-18 (layer3 outputs 256 x 14 x 14).
For each model the same images go through a bare forward pass and through mining (the hooked
forward pass of polypsi.models.FeatureExtractor, the token-to-grid conversion and the streaming
top-K update of polypsi.mining); the two are timed in alternation within each repeat so that
machine noise hits both. The ratio mining / bare is what mining costs on top of the model;
the token layer should cost no more than the conv layer.
"""

from __future__ import annotations

import argparse
import time

import torch

from polypsi.config import load_config
from polypsi.mining import StreamingTopK, site_candidates
from polypsi.models import extractor, load_model

MODELS = {
    "token layer (timm vit_tiny_patch16_224, blocks.6)": {
        "source": "timm", "name": "vit_tiny_patch16_224", "layers": ["blocks.6"]},
    "conv layer (torchvision resnet18, layer3)": {
        "source": "torchvision", "name": "resnet18", "layers": ["layer3"]},
}


def run(cfg_model: dict, images: torch.Tensor, batch: int, topk: int, repeats: int) -> tuple[float, float, tuple]:
    layer = cfg_model["layers"][0]
    cfg = load_config({"model": {**cfg_model, "weights": None, "input_size": images.shape[-1]},
                       "crops": {"size": {layer: 64}}, "mining": {"topk": topk, "channels_last": False}})
    model = load_model(cfg)
    fx, pre = extractor(model, cfg)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    bare_t, mine_t = [], []
    shape = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(images), batch):
                model((images[i:i + batch] - mean) / std)
        bare_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        top = None
        for i in range(0, len(images), batch):
            a = fx(images[i:i + batch])[layer]
            shape = tuple(a.shape[1:])
            top = top or StreamingTopK(a.shape[1], topk)
            top.update(*site_candidates(a, torch.arange(i, i + len(a)), True))
        mine_t.append(time.perf_counter() - t0)
    fx.close()
    return min(bare_t), min(mine_t), shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--topk", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(f"{args.images} images of {args.size} px, batch {args.batch}, K={args.topk}, best of {args.repeats}, "
          f"{args.threads} threads")
    print(f"{'':52s} {'map':>14s} {'bare s':>8s} {'mining s':>9s} {'ratio':>6s}")
    for name, spec in MODELS.items():
        bare, mine, shape = run(spec, images, args.batch, args.topk, args.repeats)
        print(f"{name:52s} {str(shape):>14s} {bare:8.3f} {mine:9.3f} {mine / bare:6.3f}")


if __name__ == "__main__":
    main()
