"""S, Q and D of channels and their null draws (paper section 3).

`score_channels` is the entry point of the workflow's score rule; `stats.backend` selects the
batched torch scorer or the per-channel scikit-learn reference.
"""

from .score import score_channels
from .table import CLUSTER_COLUMNS, SCORE_COLUMNS
from .text import TextBank

__all__ = ["TextBank", "score_channels", "SCORE_COLUMNS", "CLUSTER_COLUMNS"]
