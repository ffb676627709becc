"""Datasets: index an image set into one table (image_id, path, label, class_name).

Layouts are dataset sources in the source registry: Tiny-ImageNet's own (wnids.txt, words.txt,
train/<wnid>/images, val/images + val_annotations.txt), an ImageFolder tree
(root/<class>/<image>), and generated sets the workflow renders into an ImageFolder tree
(a small one for the smoke run here; plug-ins such as the planted world add their own).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import sources
from .config import Config, DataConfig, SyntheticConfig
from .errors import DatasetError
from .io import atomic_dir, remove_stale_temps, temp_prefix, write_csv, write_table
from .manifest import IMAGE_EXTS, hidden

SKIPPED_COLUMNS = ["path", "reason"]
log = logging.getLogger("polypsi.data")


def _images_in(folder: Path) -> list[Path]:
    """Image files of a folder; hidden ones (`.*`, macOS's `._x.jpg`) are left out (polypsi.manifest counts the same)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not hidden(p.name) and p.suffix.lower() in IMAGE_EXTS)


def index_imagefolder(root: str | Path) -> pd.DataFrame:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; set data.root to a folder of <class>/<image> files")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not hidden(d.name))
    if not classes:
        raise DatasetError(f"{root} has no class subfolders; expected {root}/<class_name>/<image files>")
    rows, empty = [], []
    for label, cls in enumerate(classes):
        found = _images_in(root / cls)
        rows += [(str(p), label, cls) for p in found]
        if not found:
            empty.append(cls)
    if empty and rows:
        log.warning("%d class folder(s) of %s hold no images (%s); their classes have no images in the run",
                    len(empty), root, ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""))
    if not rows:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {root}/<class>/")
    return _finish(rows)


def _tiny_names(root: Path) -> tuple[list[str], dict[str, str]]:
    wnids_file, words_file = root / "wnids.txt", root / "words.txt"
    for f in (wnids_file, words_file):
        if not f.is_file():
            raise DatasetError(
                f"{f} is missing: {root} is not a Tiny-ImageNet folder (expected wnids.txt, words.txt, train/, val/). "
                "Set data.root to the extracted tiny-imagenet-200 folder, or enable data.download."
            )
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    names = {}
    for line in words_file.read_text().splitlines():
        wnid, _, words = line.partition("\t")
        names[wnid.strip()] = words.split(",")[0].strip()
    return wnids, names


def index_tiny_imagenet(root: str | Path, split: str = "val") -> pd.DataFrame:
    root = Path(root)
    wnids, names = _tiny_names(root)
    label_of = {w: i for i, w in enumerate(wnids)}
    rows = []
    if split == "train":
        for w in wnids:
            folder = root / "train" / w / "images"
            if not folder.is_dir():
                raise DatasetError(f"{folder} is missing (Tiny-ImageNet train layout: train/<wnid>/images/*.JPEG)")
            rows += [(str(p), label_of[w], names.get(w, w)) for p in _images_in(folder)]
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DatasetError(f"{ann} is missing (Tiny-ImageNet val layout: val/images/ + val/val_annotations.txt)")
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in label_of:
                raise DatasetError(f"{ann}:{n}: expected '<file>\\t<wnid>\\t...' with a wnid from wnids.txt, got {line!r}")
            p = root / "val" / "images" / parts[0]
            if not p.is_file():
                raise DatasetError(f"{ann}:{n} names {p}, which does not exist")
            rows.append((str(p), label_of[parts[1]], names.get(parts[1], parts[1])))
    if not rows:
        raise DatasetError(f"no images found in {root} ({split} split)")
    return _finish(rows)


def _finish(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    rows.sort(key=lambda r: r[0])  # image ids follow sorted paths: stable across runs and machines
    df = pd.DataFrame(rows, columns=["path", "label", "class_name"])
    df.insert(0, "image_id", np.arange(len(df), dtype=np.int64))
    df["label"] = df["label"].astype(np.int64)
    return df


def index_tiny_imagenet_source(cfg: Config, root: Path) -> pd.DataFrame:
    """The registry's `tiny_imagenet` dataset source (split from data.split)."""
    return index_tiny_imagenet(root, cfg.data.split)


def index_imagefolder_source(cfg: Config, root: Path) -> pd.DataFrame:
    """The registry's `imagefolder` dataset source; also indexes the folders generated datasets render."""
    return index_imagefolder(root)


def index_dataset(cfg: Config, rendered_dir: str | Path | None = None) -> pd.DataFrame:
    """The dataset table of `data.source`; a generated source is read from `rendered_dir`/images."""
    d = cfg.data
    src = sources.get("dataset", d.source)
    if src.render:
        if rendered_dir is None:
            raise DatasetError(f"data.source={d.source} is generated by the workflow: index its rendered folder")
        root = Path(rendered_dir) / "images"
    else:
        root = Path(d.root)
    df = src.load()(cfg, root)
    if d.max_images is not None:
        df = df.iloc[: d.max_images].reset_index(drop=True)
    return df


def check_image(path: str, max_pixels: int) -> str | None:
    """Why an image cannot be used (None when it can): header read, size checked, then a bounded decode.

    JPEGs decode at reduced scale (draft mode), which still reads the whole stream, so truncation
    shows while the check stays fast; the pixel count is refused from the header, before decoding.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return f"{w} x {h} = {w * h} pixels exceeds data.max_pixels ({max_pixels})"
                if w == 0 or h == 0:
                    return "the image has no pixels"
                im.draft("RGB", (64, 64))
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"refused as a decompression bomb: {e}"
    except Exception as e:  # any failure to read means the file cannot be mined: say which and why
        return f"not a readable image ({type(e).__name__}: {e})"
    return None


def validate_images(df: pd.DataFrame, max_pixels: int, threads: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(usable rows with image ids renumbered, skipped rows: path, reason). Decoding runs in threads."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        reasons = list(pool.map(lambda p: check_image(p, max_pixels), df["path"]))
    bad = np.array([r is not None for r in reasons], dtype=bool)
    skipped = pd.DataFrame({"path": df["path"][bad].tolist(), "reason": [r for r in reasons if r is not None]},
                           columns=SKIPPED_COLUMNS)
    ok = df[~bad].drop(columns="image_id").reset_index(drop=True)
    ok.insert(0, "image_id", np.arange(len(ok), dtype=np.int64))
    return ok, skipped


def index_dataset_stage(job) -> None:
    """Rule index_dataset: the dataset table of usable images, and skipped.csv (path, reason) of the others."""
    cfg, lg = job.cfg, job.logger("polypsi")  # the "polypsi" logger also carries this module's warnings
    rendered = Path(job.input.images).parent if "images" in job.input else None
    df = index_dataset(cfg, rendered)
    ok, skipped = validate_images(df, cfg.data.max_pixels, job.threads)
    for r in skipped.itertuples():
        lg.warning("skipped %s: %s", r.path, r.reason)
    share = len(skipped) / max(len(df), 1)
    lg.info("indexed %d images, %d usable, %d skipped (%.1f%%; listed in %s)", len(df), len(ok), len(skipped),
            100 * share, job.output.skipped)
    if share > cfg.data.max_skipped_share or ok.empty:
        listed = "\n".join(f"  {r.path}: {r.reason}" for r in skipped.head(20).itertuples())
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        if ok.empty:
            head = f"none of the {len(df)} images can be read:"
            fix = "Replace these files with readable images."
        else:
            head = (f"{len(skipped)} of {len(df)} images ({100 * share:.1f}%) cannot be read, more than "
                    f"data.max_skipped_share ({100 * cfg.data.max_skipped_share:g}%):")
            fix = "Replace or remove these files, or raise data.max_skipped_share to run without them."
        raise DatasetError(f"{head}\n{listed}{more}\n{fix}")
    for warning in class_warnings(ok):
        lg.warning("%s", warning)
    write_csv(skipped, job.output.skipped)
    write_table(ok, job.output.dataset)


def class_warnings(df: pd.DataFrame) -> list[str]:
    """What the run's classes leave unmeasurable: one class only, or classes whose names are the same concept."""
    out = []
    names = df.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    if len(names) == 1:
        out.append(
            f"the usable images have one class only ({names[0]!r}): Q, the agreement of a channel's clusters with "
            "the class labels, is 0 for every channel and every null draw, and interventions find no channel to "
            "test (their report says why). Add images of other classes for a meaningful index"
        )
    same: dict[str, list[str]] = {}
    for n in names:  # prompts write folder names with spaces and compare concepts case-blind
        same.setdefault(" ".join(n.replace("_", " ").lower().split()), []).append(n)
    dup = [v for v in same.values() if len(v) > 1]
    if dup:
        out.append(
            f"{len(dup)} group(s) of classes share one name in the prompts ({'; '.join(map(' = '.join, dup[:10]))}): "
            "each keeps its own label for Q, but one concept prompt stands for all of a group. Rename the folders "
            "(or words.txt entries) to tell them apart"
        )
    return out


def render_images_stage(job) -> None:
    """Rule render_images: a generated dataset (`data.source` with a renderer) into images/ beside its description."""
    out = Path(job.output.images).parent
    sources.get("dataset", job.cfg.data.source).load("render")(job.cfg, out)
    job.logger().info("rendered %s images into %s", job.cfg.data.source, out / "images")


def download_tiny_imagenet_stage(job) -> None:
    """Rule download_tiny_imagenet."""
    download_tiny_imagenet(job.cfg.data)


# ---------------------------------------------------------------- synthetic smoke images

_SYN_CLASSES = ["red disk", "green square", "blue triangle", "yellow ring", "magenta bar", "cyan cross",
                "orange disk", "white square", "purple triangle", "lime ring", "pink bar", "teal cross"]
_SYN_RGB = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (230, 220, 30),
            "magenta": (210, 40, 200), "cyan": (40, 210, 220), "orange": (240, 140, 20), "white": (240, 240, 240),
            "purple": (120, 40, 170), "lime": (160, 240, 40), "pink": (250, 150, 180), "teal": (20, 130, 130)}


def _draw_shape(img: np.ndarray, shape: str, rgb, cy: float, cx: float, r: float) -> None:
    h, w, _ = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    dy, dx = yy - cy, xx - cx
    if shape == "disk":
        m = dy**2 + dx**2 <= r**2
    elif shape == "square":
        m = (abs(dy) <= r * 0.8) & (abs(dx) <= r * 0.8)
    elif shape == "triangle":
        m = (dy <= r * 0.7) & (dy >= -r) & (abs(dx) <= (dy + r) * 0.6)
    elif shape == "ring":
        d2 = dy**2 + dx**2
        m = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    elif shape == "bar":
        m = (abs(dy) <= r * 0.3) & (abs(dx) <= r)
    else:  # cross
        m = ((abs(dy) <= r * 0.25) & (abs(dx) <= r)) | ((abs(dx) <= r * 0.25) & (abs(dy) <= r))
    img[m] = rgb


def render_synthetic_source(cfg: Config, out_dir: str | Path) -> None:
    """The registry's `synthetic` dataset renderer."""
    render_synthetic(cfg.data.synthetic, out_dir)


def render_synthetic(syn: SyntheticConfig, out_dir: str | Path) -> None:
    """Coloured shapes on noise, one class per (colour, shape); deterministic from the seed."""
    rng = np.random.default_rng(syn.seed)
    s = syn.image_size
    with atomic_dir(Path(out_dir) / "images") as tmp:  # in place when complete; a killed render's folder goes next time
        for i in range(syn.n_images):
            c = i % syn.n_classes
            colour, shape = _SYN_CLASSES[c].split()
            img = rng.integers(0, 90, size=(s, s, 3)).astype(np.uint8)
            for _ in range(2):  # a little clutter
                other = _SYN_CLASSES[rng.integers(len(_SYN_CLASSES))].split()
                _draw_shape(img, other[1], tuple(v // 3 for v in _SYN_RGB[other[0]]), *rng.uniform(0, s, 2), s * 0.12)
            r = rng.uniform(0.15, 0.3) * s
            _draw_shape(img, shape, _SYN_RGB[colour], *rng.uniform(r, s - r, 2), r)
            folder = tmp / _SYN_CLASSES[c].replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png")


# ---------------------------------------------------------------- Tiny-ImageNet download

def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_tiny_imagenet(d: DataConfig, timeout: float = 30.0) -> Path:
    """Fetch, checksum and extract Tiny-ImageNet into data.root; fails fast with what to do by hand."""
    root = Path(d.root)
    if (root / "wnids.txt").is_file():
        return root
    how = (
        f"Download {d.url} yourself, unzip it so that {root}/wnids.txt exists "
        "(or set data.root to where it is), then rerun."
    )
    if not d.download:
        raise DatasetError(f"Tiny-ImageNet not found at {root} and data.download is false. {how}")
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root.parent / "tiny-download")  # a killed download's archive
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=temp_prefix(root.parent / "tiny-download")) as tmpd:
        archive = Path(tmpd) / "tiny-imagenet.zip"
        try:
            with urllib.request.urlopen(d.url, timeout=timeout) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f, length=1 << 20)
        except OSError as e:
            raise DatasetError(f"could not download Tiny-ImageNet from {d.url}: {e}. {how}") from None
        if d.md5 and _md5(archive) != d.md5:
            raise DatasetError(f"checksum mismatch for {d.url} (expected md5 {d.md5}). {how} Or set data.md5: null.")
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmpd)
        tops = [p for p in Path(tmpd).iterdir() if p.is_dir() and (p / "wnids.txt").is_file()]
        if not tops:
            raise DatasetError(f"the archive from {d.url} has no folder with wnids.txt. {how}")
        # Snakemake creates the output's folder before the job runs: fill it rather than nest inside it.
        root.mkdir(parents=True, exist_ok=True)
        for item in tops[0].iterdir():
            shutil.move(str(item), root / item.name)
    return root
