"""Atomic file writes and table I/O shared by every stage.

A killed job must never leave a file that looks complete, so every writer goes
through a temporary file in the same folder and an atomic rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files others may read
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
