"""Small patch thumbnails and per-channel sprites, cut from the dataset images with the mined crop boxes.

`build_sprites` is the neuron browser's image work (rule `sprites`): it needs only a layer's top-K table
and the crop geometry, so it runs beside embedding and scoring, and the browser, which waits for the
calibration and the interventions, only writes pages and links these files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..crops import extract_crops, load_image
from ..errors import PolypsiError, StageError
from ..io import atomic_path, write_table
from ..runtime import Progress, get_logger

SPRITE_COLS = 10  # thumbnails per sprite row
# The rows a layer's sprites show, in sprite order (thumbnail i of channel c = its i-th row): the browser
# checks them against the calibrated patches table before linking a sprite into a channel page.
SPRITE_INDEX = "index.parquet"
SPRITE_KEYS = ["channel", "rank", "image_id", "y0", "x0", "y1", "x1"]
# Thumbnails are cut in parts of about this many crops, never splitting an image's crops between parts:
# the unit of parallel work and of progress lines.
CUT_PART = 2048


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


def sprite_file(sprites_dir: str | Path, channel: int) -> Path:
    return Path(sprites_dir) / f"{int(channel)}.jpg"


@contextmanager
def _pool(workers: int):
    """None (work in this thread) for one worker, else a pool of `workers` threads.

    Threads, not processes: nearly all of the thumbnail work (decoding, resizing, JPEG encoding) runs in C
    without the GIL. Each worker runs torch on one thread, so `workers` threads use `workers` cores (not
    `workers` teams of torch threads).
    """
    if workers <= 1:
        yield None
        return
    import torch  # lazy: needed to cut the thumbnails anyway; imported here to size its thread pool first

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # read by each new thread when it first runs a torch op
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="thumbs") as pool:
            yield pool
    finally:
        torch.set_num_threads(before)


def _results(pool, fn, tasks):
    """fn(*task) of every task: in order in this thread without a pool, else as the workers finish them.
    A failure cancels the tasks not yet started and is raised once the running ones have ended (they may
    write to a file the caller closes next)."""
    if pool is None:
        for t in tasks:
            yield fn(*t)
        return
    futures = [pool.submit(fn, *t) for t in tasks]
    try:
        for f in as_completed(futures):
            yield f.result()
    finally:
        for f in futures:
            f.cancel()
        wait(futures)


def located(e: Exception, where: str) -> Exception:
    """`e` with `where` (layer and channel) before its message; user-facing errors keep their type."""
    if isinstance(e, PolypsiError):
        try:
            return type(e)(f"{where}: {e}")
        except TypeError:
            return StageError(f"{where}: {e}")
    return RuntimeError(f"{where}: {type(e).__name__}: {e}")


def _parts(image_ids: np.ndarray, size: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of about `size` crops over crops sorted by image, never splitting an image's crops."""
    n = len(image_ids)
    starts = np.flatnonzero(np.diff(image_ids)) + 1  # where a new image begins
    cuts = np.unique(starts[np.minimum(np.searchsorted(starts, np.arange(size, n, size)), len(starts) - 1)]) \
        if len(starts) else np.zeros(0, np.int64)
    bounds = [0, *(int(c) for c in cuts), n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _first_unreadable(paths: list[str], input_size: int) -> int:
    """Index of the first image that cannot be read (0 when all can: the failure was elsewhere)."""
    for i, p in enumerate(paths):
        try:
            load_image(p, input_size)
        except Exception:
            return i
    return 0


class _TileFile:
    """Thumbnails of one shape in an open file, written and read by row with positioned I/O: safe from several
    threads at once, and they sit in the page cache, not in this process's memory (a memory map would count
    every row touched towards it)."""

    def __init__(self, fd: int, shape: tuple[int, ...]):
        self.fd, self.shape, self.size = fd, shape, int(np.prod(shape))

    def write(self, row: int, tiles: np.ndarray) -> None:
        data, at = memoryview(np.ascontiguousarray(tiles, np.uint8)).cast("B"), row * self.size
        while len(data):
            n = os.pwrite(self.fd, data, at)
            data, at = data[n:], at + n

    def read(self, rows) -> np.ndarray:
        out = np.empty((len(rows), *self.shape), np.uint8)
        for i, r in enumerate(rows):
            buf = os.pread(self.fd, self.size, int(r) * self.size)
            if len(buf) != self.size:
                raise OSError(f"thumbnail file ended at row {int(r)}")
            out[i] = np.frombuffer(buf, np.uint8).reshape(self.shape)
        return out


def _cut_part(tiles: _TileFile, start: int, paths: list[str], boxes: np.ndarray, channels: np.ndarray, layer: str,
              input_size: int, thumb: int, batch: int = 512) -> int:
    """Cut the thumbnails of crops start.. (sorted by image) into rows start.. of `tiles`; returns their count."""
    for s in range(0, len(paths), batch):
        stop = min(s + batch, len(paths))
        try:
            tiles.write(start + s, crop_thumbnails(paths[s:stop], boxes[s:stop], input_size, thumb))
        except Exception as e:
            i = s + _first_unreadable(paths[s:stop], input_size)
            raise located(e, f"thumbnails, layer {layer!r}, channel {int(channels[i])}") from e
    return len(paths)


def _write_sprites(out: Path, layer: str, channels: list[int], where: dict[int, np.ndarray], tiles: _TileFile,
                   sprite_cols: int) -> int:
    for ch in channels:
        try:
            write_sprite(tiles.read(where[ch]), sprite_file(out, ch), sprite_cols)
        except Exception as e:
            raise located(e, f"sprite, layer {layer!r}, channel {ch}") from e
    return len(channels)


def build_sprites(out_dir: str | Path, patches: pd.DataFrame, dataset: pd.DataFrame, input_size: int,
                  thumb: int = 64, sprite_cols: int = SPRITE_COLS, layer: str = "", workers: int = 1,
                  block: int = 128, log_file: str | None = None) -> dict:
    """One sprite per channel of `patches` (columns channel, rank, image_id, y0, x0, y1, x1: a layer's patch rows
    with their crop boxes): its thumbnails in rank order, `sprite_cols` to a row, as `out_dir`/<channel>.jpg, and
    `out_dir`/index.parquet, the rows they show (SPRITE_KEYS, in sprite order). Returns counts.

    Every distinct crop (image, box) is cut once, image by image (each image decoded once), into a file of
    thumbnails in `out_dir` (removed at the end; on disk, not in memory: 2,048 channels x 50 patches at 64 px
    are 1.3 GB), then the sprites are written in blocks of `block` channels. `workers` > 1 runs both in that
    many threads; the files are the same, byte for byte, for any count.
    """
    log = get_logger(log_file=log_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = patches[SPRITE_KEYS].astype(np.int64).sort_values(["channel", "rank"], kind="stable").reset_index(drop=True)
    keys = rows[SPRITE_KEYS[2:]].to_numpy()
    owner = rows["channel"].to_numpy()
    chans, starts = np.unique(owner, return_index=True)
    if not len(rows):
        write_table(rows, out / SPRITE_INDEX)
        log.info("sprites of %s: no patches", layer)
        return {"channels": 0, "thumbnails": 0, "crops": 0}
    # The same crop in several channels' patches is cut once; crops sorted by image_id first.
    crops, row = np.unique(keys, axis=0, return_inverse=True)
    row = row.reshape(-1)
    try:
        paths = image_paths(pd.DataFrame({"image_id": crops[:, 0]}), dataset)
    except KeyError as e:
        bad = int(keys[~np.isin(keys[:, 0], dataset["image_id"].to_numpy()), 0][0])
        raise KeyError(f"sprites, layer {layer!r}, channel {int(owner[keys[:, 0] == bad][0])}: {e.args[0]}") from None
    first = np.full(len(crops), np.iinfo(np.int64).max)  # the first channel showing each crop (for errors)
    np.minimum.at(first, row, owner)
    where = dict(zip(chans.tolist(), np.split(row, starts[1:])))
    fd, tile_file = tempfile.mkstemp(prefix=".thumbs-", suffix=".u8", dir=out)
    try:
        tiles = _TileFile(fd, (thumb, thumb, 3))
        with _pool(workers) as pool:
            cut = Progress(len(paths), f"thumbnails of {layer}", log)
            parts = [(tiles, a, paths[a:b], crops[a:b, 1:], first[a:b], layer, input_size, thumb)
                     for a, b in _parts(crops[:, 0], CUT_PART)]
            for n in _results(pool, _cut_part, parts):
                cut.update(n)
            done = Progress(len(chans), f"sprites of {layer}", log)
            blocks = [(out, layer, chans[s : s + block].tolist(), where, tiles, sprite_cols)
                      for s in range(0, len(chans), block)]
            for n in _results(pool, _write_sprites, blocks):
                done.update(n)
    finally:
        os.close(fd)
        os.unlink(tile_file)
    write_table(rows, out / SPRITE_INDEX)
    log.info("sprites of %s: %d channels, %d thumbnails of %d distinct crops in %s", layer, len(chans), len(rows),
             len(crops), out)
    return {"channels": len(chans), "thumbnails": len(rows), "crops": len(crops)}


def place_sprite(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (no copy; the browser folder stays whole if the run's sprites are removed),
    or a copy where links are not possible (another file system)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
