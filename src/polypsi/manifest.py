"""The dataset's files as a manifest: relative paths, sizes and modification times, without reading a byte.

`index_dataset` takes the manifest's digest as a param, so adding, removing or replacing an image
under `data.root` reruns it (and everything downstream); Snakemake does not look inside a folder.
One `os.scandir` walk, one stat per file (no reads): about a second on 100,000 files. A file
replaced by one of the same size and modification time (`cp -p` of an equal-sized file) goes
unnoticed: touch it, or delete `results/<run>/dataset.parquet`, to index again.

The files that count are the ones the dataset's indexer reads: for an ImageFolder tree, the class
folders and the image files in them (a `notes.txt` beside the images, or a sub-folder of a class,
changes nothing); for any other layout (Tiny-ImageNet's), every file under the root. Hidden files
and folders (`.*`, among them macOS's `._x.jpg`) are left out here as the indexer leaves them out.
Light on purpose (standard library only): the workflow computes it while it plans.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
# Dataset sources whose indexer reads an ImageFolder tree (root/<class>/<image>).
IMAGEFOLDER_TARGETS = frozenset({"polypsi.data:index_imagefolder_source"})


def hidden(name: str) -> bool:
    """Dot files and folders, among them macOS's `._x.jpg` resource forks (not images, though named like them)."""
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    return not hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTS


def _entries(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not hidden(e.name)]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _row(e: os.DirEntry, rel: str) -> tuple[str, int, int] | None:
    try:
        st = e.stat()  # follows links, as the indexer's Path.is_file does
    except OSError:  # a dangling link, or a file gone while walking
        return None
    return rel, st.st_size, st.st_mtime_ns


def walk_imagefolder(root: str | Path) -> Iterator[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every class folder (size -1, mtime 0: a new empty class
    shifts the labels) and of every image file in it."""
    for d in _entries(str(root)):
        if not d.is_dir():
            continue
        yield d.name + "/", -1, 0
        for f in _entries(d.path):
            if is_image_name(f.name) and f.is_file():
                row = _row(f, f"{d.name}/{f.name}")
                if row is not None:
                    yield row


def walk_tree(root: str | Path) -> Iterator[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under root, hidden files and folders left out."""
    stack = [("", str(root))]
    while stack:
        prefix, folder = stack.pop()
        for e in _entries(folder):
            rel = prefix + e.name
            if e.is_dir():
                stack.append((rel + "/", e.path))
            elif e.is_file():
                row = _row(e, rel)
                if row is not None:
                    yield row


def dataset_manifest(root: str | Path, layout: str = "tree") -> list[tuple[str, int, int]]:
    """The sorted manifest of a dataset folder; layout "imagefolder" or "tree" (see the module's doc)."""
    walk = walk_imagefolder if layout == "imagefolder" else walk_tree
    return sorted(walk(root))


def manifest_digest(rows: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha1()
    for rel, size, mtime in rows:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def layout_of(target: str) -> str:
    """The manifest layout of a dataset source, from its indexer (`Source.target`)."""
    return "imagefolder" if target in IMAGEFOLDER_TARGETS else "tree"


def dataset_files_param(root: str | Path, layout: str = "tree") -> str:
    """index_dataset's param: the number of files that count and the manifest's digest.

    A folder that is not there yet (a download pending) gives its own value; Snakemake evaluates
    the param again when the job starts, so the run records the manifest of what it indexed.
    """
    if not Path(root).is_dir():
        return f"{root}: no such folder"
    rows = dataset_manifest(root, layout)
    return f"{len(rows)} entries, sha1 {manifest_digest(rows)}"
