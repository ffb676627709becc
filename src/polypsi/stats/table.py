"""The score table: columns and assembly from per-draw arrays (shared by both scoring backends)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SCORE_COLUMNS = ["channel", "draw", "S", "Q", "D", "k_hat", "contrast", "index_k"]
CLUSTER_COLUMNS = [
    "assignments",
    "cluster_size",
    "cluster_silhouette",
    "cluster_concept_1",
    "cluster_concept_2",
    "cluster_gap",
    "cluster_similarity_1",
]


def rows_to_frame(channels: np.ndarray, draws: list[int], per_draw: dict[int, dict]) -> pd.DataFrame:
    """Assemble the score table (draw-major) from per-draw column arrays."""
    frames = []
    for m in draws:
        r = per_draw[m]
        df = pd.DataFrame({
            "channel": channels.astype(np.int64),
            "draw": np.full(len(channels), m, dtype=np.int64),
            "S": np.asarray(r["S"], dtype=float),
            "Q": np.asarray(r["Q"], dtype=float),
            "D": np.asarray(r["D"], dtype=float),
            "k_hat": np.asarray(r["k_hat"], dtype=np.int64),
            "contrast": np.asarray(r["contrast"], dtype=float),
            "index_k": np.asarray(r["index_k"], dtype=float),
        })
        if 0 in draws:
            det = r.get("details") or None  # null draws carry no cluster details
            for col in CLUSTER_COLUMNS:
                df[col] = [row[col] for row in det] if det is not None else [None] * len(df)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
