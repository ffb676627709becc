"""polypsi: the null-calibrated Polysemanticity Index (PSI) for vision-model units."""

import os

# MKL (torch's CPU BLAS) rounds a batched matrix product differently depending on where each matrix
# sits in memory, so a channel's scores would depend on its position in a batch, i.e. on the channel
# and draw shards. Strict conditional numerical reproducibility removes that; it must be set before
# MKL's first call, hence here. A value set by the user wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
