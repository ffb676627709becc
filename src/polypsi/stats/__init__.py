"""S, Q and D of channels and their null draws (paper section 3).

`score_channels` is the entry point of the workflow's score rule; `stats.backend` selects the
batched torch scorer or the per-channel scikit-learn reference.
"""

from .table import CLUSTER_COLUMNS, SCORE_COLUMNS
from .text import TextBank

__all__ = ["TextBank", "score_channels", "SCORE_COLUMNS", "CLUSTER_COLUMNS"]


def __getattr__(name):
    """`score_channels` on first use: the table stages import TextBank and the columns from here without torch."""
    if name == "score_channels":
        from .score import score_channels  # lazy: imports torch, which table-only jobs never need

        return score_channels
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
