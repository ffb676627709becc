"""Time the dataset index on a large image folder: the manifest walk, the file listing and the image checks.

    python benchmarks/bench_index.py                 # 100,000 JPEGs of 64 x 64 px in 200 classes
    python benchmarks/bench_index.py --n 20000 --size 224

Writes the folder under a temporary directory (removed afterwards), then times, side by side in one
run: the manifest (polypsi.manifest, one stat per file), the ImageFolder listing, and the image
checks of validate_images (header, pixel limit, bounded decode) with 1 and 2 threads. Prints seconds
and microseconds per file; the ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from polypsi import manifest
from polypsi.data import index_imagefolder, validate_images


def make_folder(root: Path, n: int, classes: int, size: int) -> None:
    rng = np.random.default_rng(0)
    tiles = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(16)]
    for i in range(n):
        d = root / f"class_{i % classes:03d}"
        if i < classes:
            d.mkdir(parents=True)
        tiles[i % 16].save(d / f"img_{i:06d}.jpg", quality=85)


def timed(label: str, n: int, fn):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    print(f"{label:<40} {dt:8.2f} s   {1e6 * dt / n:8.1f} us/file", flush=True)
    return out, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        timed(f"write {args.n} JPEGs ({args.size} px)", args.n, lambda: make_folder(root, args.n, args.classes, args.size))
        timed("manifest (stat per file)", args.n, lambda: manifest.dataset_files_param(root, "imagefolder"))
        df, _ = timed("list the ImageFolder", args.n, lambda: index_imagefolder(root))
        (_, skipped), t1 = timed("check images, 1 thread", args.n, lambda: validate_images(df, 89478485, 1))
        _, t2 = timed("check images, 2 threads", args.n, lambda: validate_images(df, 89478485, 2))
        print(f"2 threads / 1 thread: {t2 / t1:.2f}; skipped {len(skipped)} of {len(df)}")


if __name__ == "__main__":
    main()
