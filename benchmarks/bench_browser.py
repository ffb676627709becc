"""The neuron browser's builder against an earlier one (one process, thumbnails cut per block of 128
channels), side by side on the same generated run.

    python benchmarks/bench_browser.py --images 2000 --channels 512 --topk 50 --workers 2 --repeats 2

Writes --images generated JPEGs (--size px, the model's input size, so nothing is resized on reading)
and, per layer (--layers), --channels channels with --topk patches each, one per image, crop boxes of
--crop px, into --work (a temporary folder unless given; reused when it holds the same world). Then
times, interleaved over --repeats rounds:
- `before`: build_browser of --baseline (a git revision of this repository: the per-block builder),
  loaded from git beside the current package;
- `serial`: the current way with one worker: build_sprites of each layer (rule `sprites`), then
  build_browser (rule `browser`: pages, linking the sprites);
- `parallel`: the same with the sprites in --workers threads (the pages are always written in one thread).
Torch runs on one thread throughout, as in the browser job before (threads: 1) and in each worker thread now.
Prints each one's best time (for the current way also its two parts: sprites, then pages), the ratios, and
whether every output file is byte-identical across the three.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# The last commit whose browser cut thumbnails per block of channels, in one process.
BASELINE = "39df929"


def make_world(work: Path, images: int, size: int, layers: int, channels: int, topk: int, crop: int, seed: int = 0):
    """A run's browser inputs: (psi, clusters, patches, dataset) by layer, images written as JPEGs."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    classes = [f"class {i}" for i in range(10)]
    paths = []
    for i in range(images):
        p = img_dir / f"{i:06d}.jpg"
        if not p.exists():
            # Smooth colour fields with noise: JPEG sizes and decoding costs close to a photo's. Each image
            # from its own seed, so the tables below are the same whether the images exist already or not.
            img_rng = np.random.default_rng([seed, i])
            base = img_rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
            arr = np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC), np.int16)
            arr = np.clip(arr + img_rng.normal(0, 12, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    dataset = pd.DataFrame({"image_id": np.arange(images), "path": paths, "label": np.arange(images) % len(classes),
                            "class_name": [classes[i % len(classes)] for i in range(images)]})
    psi, clusters, patches = {}, {}, {}
    for li in range(layers):
        layer = f"layer{li + 3}"
        ch = np.arange(channels)
        df = pd.DataFrame({"channel": ch})
        for c in "SQD":
            df[c], df[f"{c}_hat"] = rng.uniform(0, 0.3, channels), rng.uniform(0, 1, channels)
        df["psi"] = df.S_hat * df.Q_hat * df.D_hat
        df["log_psi"], df["index"] = np.log(df.psi), rng.uniform(-0.5, 1.5, channels)
        df["k_hat"], df["status"] = rng.integers(2, 5, channels), "ok"
        df["top_activation"] = rng.uniform(1, 5, channels)
        df.loc[df.channel % 97 == 5, "status"] = "dead: top activation <= 0"
        psi[layer] = df
        rows, crow = [], []
        for c in ch:
            k = int(df.k_hat[c])
            img = rng.choice(images, topk, replace=False)
            y0, x0 = rng.integers(0, size - crop + 1, topk), rng.integers(0, size - crop + 1, topk)
            act = np.sort(rng.uniform(0.5, 4, topk))[::-1]
            cl = rng.integers(0, k, topk)
            rows.append(pd.DataFrame({"channel": c, "rank": np.arange(topk), "image_id": img, "activation": act,
                                      "cluster": cl, "label": img % len(classes), "y0": y0, "x0": x0,
                                      "y1": y0 + crop, "x1": x0 + crop}))
            crow += [(c, j, int((cl == j).sum()), 0.3, f"concept {(c + j) % 40}", 0.02, "other", 0.25) for j in range(k)]
        patches[layer] = pd.concat(rows, ignore_index=True)
        clusters[layer] = pd.DataFrame(crow, columns=["channel", "cluster", "size", "silhouette", "concept_1", "gap",
                                                      "concept_2", "similarity_1"])
    return psi, clusters, patches, dataset


def load_baseline(rev: str):
    """build_browser of git revision `rev`, imported as polypsi.report._baseline_browser (its relative imports
    resolve to the current package: the thumbnail helpers it uses keep their signatures)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/polypsi/report/browser.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="baseline-")) / "_baseline_browser.py"
    path.write_text(src)
    import polypsi.report

    spec = importlib.util.spec_from_file_location("polypsi.report._baseline_browser", path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = polypsi.report.__name__
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    # Its page shells live in the current package's assets/ (the baseline reads them through its __package__).
    return mod.build_browser


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


def main(argv=None) -> None:
    import torch

    from polypsi.crops import _cached_image
    from polypsi.report.browser import build_browser
    from polypsi.report.thumbs import build_sprites

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--topk", type=int, default=50)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--thumb", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the per-block builder")
    ap.add_argument("--work", default=None, help="folder for the generated images and outputs (default: temporary)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-browser-"))
    t0 = time.perf_counter()
    psi, clusters, patches, dataset = make_world(work, args.images, args.size, args.layers, args.channels, args.topk,
                                                 args.crop)
    n = sum(len(p) for p in patches.values())
    print(f"{args.layers} layer(s) x {args.channels} channels x {args.topk} patches = {n} thumbnails of "
          f"{args.images} images ({args.size} px JPEG, {args.crop} px crops -> {args.thumb} px); world ready in "
          f"{time.perf_counter() - t0:.1f} s; best of {args.repeats}, interleaved")
    before = load_baseline(args.baseline)

    def current(out, workers):
        """(sprites seconds, pages seconds) of the two rules' work."""
        t = time.perf_counter()
        sprites = {}
        for layer, p in patches.items():
            sprites[layer] = Path(f"{out}-sprites") / layer
            shutil.rmtree(sprites[layer], ignore_errors=True)
            build_sprites(sprites[layer], p, dataset, args.size, thumb=args.thumb, layer=layer, workers=workers)
        t_pages = time.perf_counter()
        build_browser(out, psi, clusters, patches, dataset, sprites, thumb=args.thumb)
        return t_pages - t, time.perf_counter() - t_pages

    ways = {
        "before": lambda out: before(out, psi, clusters, patches, dataset, args.size, thumb=args.thumb),
        "serial": lambda out: current(out, 1),
        "parallel": lambda out: current(out, args.workers),
    }
    times, parts = {k: [] for k in ways}, {k: [] for k in ways}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            out = work / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            _cached_image.cache_clear()  # no way starts with images another one decoded
            t = time.perf_counter()
            split = fn(out)
            times[name].append(time.perf_counter() - t)
            parts[name].append(split)
    best = {k: min(v) for k, v in times.items()}
    for k, v in times.items():
        split = ""
        if isinstance(parts[k][0], tuple):
            sp, pg = min(p[0] for p in parts[k]), min(p[1] for p in parts[k])
            split = f"  sprites {sp:.2f} s, pages {pg:.2f} s (best of each)"
        print(f"{k:9s} {best[k]:8.2f} s{split}  (all rounds: {', '.join(f'{x:.2f}' for x in v)})")
    identical = same_tree(work / "out_before", work / "out_serial") and same_tree(work / "out_before", work / "out_parallel")
    print(f"before / serial: {best['before'] / best['serial']:.2f}x; before / parallel ({args.workers} workers): "
          f"{best['before'] / best['parallel']:.2f}x; outputs byte-identical: {identical}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
