"""Top-K tables: their columns and the exact merge of per-shard tables (table work only: no torch).

`polypsi.mining` streams the top-K of every channel over the images; merging its shards' tables
is plain pandas, so the merge job starts without importing torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .io import read_table, write_table

TOPK_COLUMNS = ["channel", "rank", "image_id", "u", "v", "activation"]


def merge_topk(shard_tables: list[pd.DataFrame], k: int) -> pd.DataFrame:
    """Exact global top-K from per-shard top-K tables (associative: any shard split gives the same)."""
    df = pd.concat(shard_tables, ignore_index=True)
    df = df.sort_values(["channel", "activation", "image_id", "u", "v"],
                        ascending=[True, False, True, True, True], kind="stable")
    df = df.groupby("channel", sort=True).head(k).copy()
    df["rank"] = df.groupby("channel").cumcount().astype(np.int64)
    return df[TOPK_COLUMNS].reset_index(drop=True)


def merge_topk_stage(job) -> None:
    """Rule merge_topk: the exact top-K of one layer from its image shards' tables."""
    write_table(merge_topk([read_table(p) for p in job.input.shards], job.cfg.mining.topk), job.output.topk)
