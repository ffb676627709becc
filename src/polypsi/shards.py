"""How work is split into jobs: image shards for mining, channel shards and draw shards for scoring.

Every split is deterministic and results never depend on it (the tests check merged outputs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def shard_rows(df: pd.DataFrame, shard: int, n_shards: int, unit: int = 1, min_units: int = 1) -> pd.DataFrame:
    """Contiguous block `shard` of `n_shards` (image ids stay ascending inside a shard).

    With `unit` (a job's batch size), blocks hold whole units but for the last one, so the batches are the
    same for any `n_shards` (kernels round differently for other batch sizes, and a row's result must
    not depend on the sharding) and only the data's last batch is short.
    With `min_units`, the rows go to fewer blocks when there are too few for `min_units` units each (the
    later blocks are empty): each block pays a model load, worth it only for several batches.
    """
    unit = max(1, unit)
    units = -(-len(df) // unit)
    used = min(n_shards, max(1, units // max(1, min_units)))
    bounds = np.minimum(np.linspace(0, units, used + 1).round().astype(int) * unit, len(df))
    if shard >= used:
        return df.iloc[:0]
    return df.iloc[bounds[shard] : bounds[shard + 1]]


def channel_shard(channels: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """Channels of one shard: interleaved, so no shard needs the layer's channel count in advance."""
    return channels[channels % n_shards == shard]


def draws_of(shard: int, n_shards: int, m: int) -> list[int]:
    """Draws (0 = real data, 1..m = nulls) scored by draw shard `shard`."""
    return [d for d in range(m + 1) if d % n_shards == shard]


def full_batch(x, size: int):
    """Batch `x` (a tensor, first dimension the batch) padded to `size` rows by repeating its last row.

    For work whose blocks do not hold whole batches: kernels round differently for small batches (a
    batch of one image through a convolution, of 1-3 crops through a ViT, on a CPU), so computing
    every row in a batch of the configured size keeps results the same to the bit whatever the
    split. Use the first len(x) rows of the output.
    """
    n = len(x)
    return x if n >= size or n == 0 else x[list(range(n)) + [n - 1] * (size - n)]
