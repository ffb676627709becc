"""Atomic file writes and table I/O shared by every stage.

A killed job must never leave a file that looks complete, so every writer goes
through a temporary file (or folder) in the same folder and an atomic rename. A temporary
name carries its writer's process id and host, so the next writer of the same path removes
what a killed one left, and never what a live one is writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


_UMASK = os.umask(0)
os.umask(_UMASK)


_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
# .<name>.<pid>-<host>.<random>.part; older versions wrote .<name>.<random>[.part] (no owner)
_TEMP = re.compile(r"(?:(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.)?[a-z0-9_]{8}(?:\.part)?")


def temp_prefix(path: str | Path) -> str:
    """Prefix of a temporary name for `path`, owned by this process (see remove_stale_temps)."""
    return f".{Path(path).name}.{os.getpid()}-{_HOST}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files and folders of `path` that killed writers left; return them.

    Only this host's writers whose process is gone (and unowned ones of older versions) are
    removed: a live writer's temporary name, or another machine's on a shared folder, is kept.
    """
    path = Path(path)
    gone = []
    prefix = f".{path.name}."
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except FileNotFoundError:
        return gone
    for e in entries:
        m = _TEMP.fullmatch(e.name[len(prefix):])
        if m is None:
            continue
        if m["pid"] and (m["host"] != _HOST or _alive(int(m["pid"]))):
            continue
        if not m["pid"] and not (e.is_dir(follow_symlinks=False) or e.name.endswith(".part")):
            continue  # an unowned name is an older version's temporary folder or .part file, nothing else
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
        gone.append(Path(e.path))
    return gone


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files others may read
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; it replaces `path` (a folder) only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".part", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def embedding_column(emb: np.ndarray) -> pa.FixedSizeListArray:
    """A [n, d] float array as an Arrow fixed-size list column."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d)


def write_table(df: pd.DataFrame, path: str | Path, embeddings: dict[str, np.ndarray] | None = None) -> None:
    """Write `df` (plus optional [n, d] arrays as fixed-size list columns) atomically as Parquet."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    for name, emb in (embeddings or {}).items():
        if len(emb) != len(df):
            raise ValueError(f"embedding column {name!r} has {len(emb)} rows, table has {len(df)}")
        table = table.append_column(name, embedding_column(emb))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, embedding: str | None = None) -> tuple[pd.DataFrame, np.ndarray | None] | pd.DataFrame:
    """Read a Parquet table; with `embedding`, also return that column as an [n, d] float32 array."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first")
    table = pq.read_table(path)
    if embedding is None:
        return table.to_pandas()
    col = table.column(embedding).combine_chunks()
    d = col.type.list_size
    emb = col.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, d)
    return table.drop([embedding]).to_pandas(), emb


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
