"""Images and patch crops: reading an image at the model's input size, the crop box of a site, crops.

Where a site looks in the input (stride, centre offset, crop side) is measured by
`polypsi.geometry`; the boxes here follow from that measurement.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import DatasetError

if TYPE_CHECKING:
    import torch


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of any PIL mode, scaling 16- and 32-bit pixel values to 0-255.

    PIL's own convert("RGB") clips 16-bit grey values at 255, so a 16-bit image would come out
    nearly white; palette, LA, RGBA (alpha dropped) and CMYK convert as PIL does.
    """
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            top = 65535.0
        elif im.mode == "F":
            top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        else:  # 32-bit integer: 16-bit PNGs open this way in some Pillow versions
            top = 65535.0 if a.size and a.max() > 255 else 255.0
        grey = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """An RGB image resized (bilinear, upsampled for Tiny-ImageNet) to size x size, as [3,S,S] in [0,1]."""
    return to_unit(load_image_uint8(path, size))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0,1] (float32) from uint8 [0,255]; a float tensor as it is."""
    import torch  # lazy: the table stages read crop boxes from this module and need no torch

    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def load_image_uint8(path: str | Path, size: int) -> torch.Tensor:
    """load_image as [3,S,S] uint8: a quarter of the bytes to pass between processes and copy to a device."""
    import torch  # lazy: the table stages read crop boxes from this module and need no torch

    try:
        with Image.open(path) as im:
            im = to_rgb(im)
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"cannot read image {path} ({e}); the file is missing or not a readable image: "
            "replace it with a good copy or remove it from the dataset, then rerun"
        ) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def crop_box(u: int, v: int, geom: dict, input_size: int) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of the crop around site (u, v); the square is shifted to lie inside the image."""
    y0, x0, y1, x1 = crop_boxes(np.array([u]), np.array([v]), geom, input_size)[0]
    return int(y0), int(x0), int(y1), int(x1)


def crop_boxes(u: np.ndarray, v: np.ndarray, geom: dict, input_size: int) -> np.ndarray:
    """Vectorised crop_box: [n, 4] int array of (y0, x0, y1, x1)."""
    side = int(min(geom["crop"], input_size))
    c = geom["offset"] + np.stack([u, v], 1).astype(np.float64) * geom["stride"]
    lo = np.clip(np.floor(c - side / 2 + 0.5).astype(np.int64), 0, input_size - side)
    return np.concatenate([lo, lo + side], axis=1)


@lru_cache(maxsize=256)
def _cached_image(path: str, size: int) -> torch.Tensor:
    return load_image(path, size)


def cut_crops(paths: list[str], boxes: np.ndarray, input_size: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Crops at input resolution, one stack per crop side: [(indices into paths, [m,3,h,w])].

    Each image is read once per call when sites come sorted by image. CPU work only (decoding and
    slicing): it can run in threads ahead of the model, before the output size is known.
    """
    import torch  # lazy: the table stages read crop boxes from this module and need no torch

    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    sides = boxes[:, 2:] - boxes[:, :2]
    groups = []
    for hw in np.unique(sides, axis=0):
        idx = np.flatnonzero((sides == hw).all(1))
        groups.append((idx, torch.stack([_cached_image(paths[i], input_size)[:, y0:y1, x0:x1]
                                         for i, (y0, x0, y1, x1) in zip(idx, boxes[idx])])))
    return groups


def resize_crops(groups: list[tuple[np.ndarray, torch.Tensor]], n: int, out_size: int, device=None) -> torch.Tensor:
    """The `cut_crops` of n crops as [n,3,out,out]: one batched resize per crop side (on `device` when given)."""
    import torch  # lazy: the table stages read crop boxes from this module and need no torch

    def resize(patch):
        if device is not None:
            patch = patch.to(device, non_blocking=True)
        return torch.nn.functional.interpolate(patch, size=(out_size, out_size), mode="bilinear",
                                               align_corners=False, antialias=True)

    if len(groups) == 1 and len(groups[0][0]) == n:  # one crop side (the usual case): no scatter needed
        return resize(groups[0][1])
    crops = torch.empty(n, 3, out_size, out_size, device=device)
    for idx, patch in groups:
        crops[torch.as_tensor(idx, device=crops.device)] = resize(patch)
    return crops


def extract_crops(paths: list[str], boxes: np.ndarray, input_size: int, out_size: int, device=None) -> torch.Tensor:
    """Crops [n,3,out,out] in [0,1]; each image is read once per call (sites come sorted by image).

    Crops of one side are cut from their images, stacked and resized in one batched call (on
    `device` when given, else on the CPU): the same values, to the bit, as resizing them one at a
    time (tests/test_crops.py), at a fraction of the per-call overhead.
    """
    return resize_crops(cut_crops(paths, boxes, input_size), len(paths), out_size, device)
