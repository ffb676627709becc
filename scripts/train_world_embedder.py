"""Train the planted world's image-text embedder and write src/polypsi/data/world/embedder.pt.

Training pairs are crops of rendered scenes (objects from the whole 56-concept
universe, random clutter and noise levels) and generated captions: the cropped
object's concept name in a random template. The loss is CLIP's contrastive loss
with every concept of the universe as a candidate caption. Held-out scenes measure
the retrieval accuracy, written with the weights.

    .venv/bin/python scripts/train_world_embedder.py            # ~5 min on 2 CPU cores
    .venv/bin/python scripts/train_world_embedder.py --quick    # smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from polypsi.config import WorldConfig
from polypsi.world.concepts import UNIVERSE
from polypsi.world.embedder import (
    IMAGE_SIZE,
    MEAN,
    STD,
    WEIGHTS,
    WorldEmbedder,
    base_vocabulary,
    templates,
)
from polypsi.world.render import render_image
from polypsi.world.spec import world_spec

CROP_RATIO = (1.1, 3.5)  # crop side / object diameter, as for layer3-layer4 crops of the world model


def training_worlds(seed: int, n: int) -> list[WorldConfig]:
    """Worlds over the whole universe, with varied clutter and noise."""
    rng = np.random.default_rng(seed)
    return [
        WorldConfig(
            seed=int(rng.integers(2**31)),
            n_concepts=len(UNIVERSE),
            n_classes=len(UNIVERSE),
            clutter=float(rng.uniform(0.0, 1.0)),
            noise=float(rng.uniform(0.0, 0.12)),
            distractors=float(rng.uniform(1.0, 3.0)),
        )
        for _ in range(n)
    ]


def crops_of_scenes(worlds: list[WorldConfig], scenes_per_world: int, seed: int):
    """(crops uint8 [N,3,S,S], universe concept index [N]) for every visible object."""
    rng = np.random.default_rng(seed)
    universe = {c.name: i for i, c in enumerate(UNIVERSE)}
    xs, ys = [], []
    for world in worlds:
        spec = world_spec(world)
        for i in range(scenes_per_world):
            img, scene = render_image(world, spec, i)
            t = torch.from_numpy(img).permute(2, 0, 1)
            size = img.shape[0]
            main = scene["objects"][-1]
            for obj in scene["objects"]:
                if not (0 <= obj["x"] < size and 0 <= obj["y"] < size):
                    continue
                if obj is not main and np.hypot(obj["x"] - main["x"], obj["y"] - main["y"]) < main["r"] + 0.3 * obj["r"]:
                    continue  # mostly hidden under the main object
                side = int(np.clip(2 * obj["r"] * rng.uniform(*CROP_RATIO), 10, size))
                cx, cy = obj["x"] + rng.normal(0, 0.25 * obj["r"]), obj["y"] + rng.normal(0, 0.25 * obj["r"])
                x0 = int(np.clip(round(cx - side / 2), 0, size - side))
                y0 = int(np.clip(round(cy - side / 2), 0, size - side))
                crop = t[:, y0 : y0 + side, x0 : x0 + side].unsqueeze(0)
                crop = F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", antialias=True, align_corners=False)
                xs.append((crop.clamp(0, 1)[0] * 255).round().to(torch.uint8))
                ys.append(universe[spec.concepts[obj["concept"]].name])
    return torch.stack(xs), torch.tensor(ys)


def normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def concept_text(model: WorldEmbedder, rng: np.random.Generator | None) -> torch.Tensor:
    """Text embeddings of all universe concepts: one random template each (training) or all averaged."""
    tpl = templates()
    if rng is None:
        z = torch.stack([model.encode_text(model.tokenizer([t.format(c.name) for c in UNIVERSE]), True) for t in tpl])
        return F.normalize(z.mean(0), dim=-1)
    texts = [tpl[rng.integers(len(tpl))].format(c.name) for c in UNIVERSE]
    return model.encode_text(model.tokenizer(texts), True)


@torch.no_grad()
def accuracy(model: WorldEmbedder, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    t = concept_text(model, None)
    pred = torch.cat([(model.encode_image(normalise(x[i : i + 512]), True) @ t.T).argmax(1) for i in range(0, len(x), 512)])
    model.train()
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worlds", type=int, default=60)
    ap.add_argument("--scenes", type=int, default=200, help="scenes per training world")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--cache", type=Path, default=None, help="reuse (or write) the rendered crops here")
    ap.add_argument("--quick", action="store_true", help="tiny run to check the script")
    args = ap.parse_args()
    if args.quick:
        args.worlds, args.scenes, args.epochs = 4, 20, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    t0 = time.time()
    if args.cache and args.cache.is_file():
        x, y, xv, yv = torch.load(args.cache)
    else:
        x, y = crops_of_scenes(training_worlds(args.seed, args.worlds), args.scenes, args.seed)
        xv, yv = crops_of_scenes(training_worlds(args.seed + 1, max(2, args.worlds // 10)), args.scenes, args.seed + 1)
        if args.cache:
            torch.save((x, y, xv, yv), args.cache)
    print(f"{len(x)} training crops, {len(xv)} held-out crops ({time.time() - t0:.0f} s)", flush=True)

    model = WorldEmbedder(base_vocabulary(), args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    bs = 128
    steps = args.epochs * (len(x) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(steps, 1), pct_start=0.1)
    step = 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x) - bs + 1, bs):
            idx = order[i : i + bs]
            xb = x[idx]
            # Mirrored or quarter-turned shapes keep their names.
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            xb = torch.rot90(xb, int(rng.integers(4)), dims=(2, 3))
            z = model.encode_image(normalise(xb), True)
            t = concept_text(model, rng)
            loss = F.cross_entropy(model.logit_scale.exp().clamp(max=100) * z @ t.T, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        print(f"epoch {epoch}: held-out accuracy {accuracy(model, xv, yv):.3f}", flush=True)

    model.eval()
    acc = accuracy(model, xv, yv)
    blob = {
        "vocabulary": model.tokenizer.vocabulary,
        "width": args.width,
        "state_dict": {k: v.half() for k, v in model.state_dict().items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, args.out)
    meta = {
        "heldout_accuracy": acc,
        "chance": 1 / len(UNIVERSE),
        "n_train": len(x),
        "n_heldout": len(xv),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "cache")},
        "seconds": round(time.time() - t0),
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB); held-out accuracy {acc:.3f} "
          f"(chance {1 / len(UNIVERSE):.3f})")


if __name__ == "__main__":
    main()
