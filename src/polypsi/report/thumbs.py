"""Small patch thumbnails and per-channel sprites, cut from the dataset images with the mined crop boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..crops import extract_crops
from ..io import atomic_path


def image_paths(patches: pd.DataFrame, dataset: pd.DataFrame) -> list[str]:
    """The image file of every patch row, with an error naming the first unknown image_id."""
    path_of = pd.Series(dataset["path"].to_numpy(), index=dataset["image_id"].to_numpy())
    ids = patches["image_id"].to_numpy()
    missing = ~np.isin(ids, path_of.index.to_numpy())
    if missing.any():
        raise KeyError(
            f"patch image_id {int(ids[missing][0])} is not in dataset.parquet; patches and dataset come from different runs"
        )
    return path_of.loc[ids].astype(str).tolist()


def crop_thumbnails(paths: list[str], boxes: np.ndarray, input_size: int, size: int = 64) -> np.ndarray:
    """uint8 [n, size, size, 3] thumbnails of crop boxes of images; each image is read once when its crops
    are consecutive. A thumbnail depends only on its image and box, never on the other crops of the call."""
    crops = extract_crops(paths, boxes, input_size, size)
    return crops.clamp_(0, 1).mul_(255).round_().byte().permute(0, 2, 3, 1).numpy()


def thumbnails(patches: pd.DataFrame, dataset: pd.DataFrame, input_size: int, size: int = 64,
               batch: int = 512) -> np.ndarray:
    """uint8 [n, size, size, 3] thumbnails of the patch rows, in row order."""
    n = len(patches)
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    paths = image_paths(patches, dataset)
    boxes = patches[["y0", "x0", "y1", "x1"]].to_numpy(np.int64)
    # Sorted by image so the crop helper reads each image once; converted to uint8 in batches so
    # float crops of a large block never sit in memory together.
    order = np.argsort(patches["image_id"].to_numpy(), kind="stable")
    out = np.empty((n, size, size, 3), np.uint8)
    for s in range(0, n, batch):
        idx = order[s : s + batch]
        out[idx] = crop_thumbnails([paths[i] for i in idx], boxes[idx], input_size, size)
    return out


def sprite_layout(n: int, cols: int) -> tuple[int, int]:
    """(rows, cols) of a sprite holding n thumbnails, at most `cols` wide."""
    cols = max(1, min(cols, n))
    return (n + cols - 1) // cols, cols


def write_sprite(thumbs: np.ndarray, path: str | Path, cols: int = 10, quality: int = 85) -> tuple[int, int]:
    """Tile thumbnails row-major into one JPEG; returns (rows, cols). Thumbnail i sits at (i // cols, i % cols)."""
    n, s = len(thumbs), thumbs.shape[1]
    rows, cols = sprite_layout(max(n, 1), cols)
    canvas = np.full((rows * s, cols * s, 3), 255, np.uint8)
    for i, t in enumerate(thumbs):
        r, c = divmod(i, cols)
        canvas[r * s : (r + 1) * s, c * s : (c + 1) * s] = t
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="JPEG", quality=quality, optimize=True)
    return rows, cols
