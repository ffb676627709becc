"""How work is split: contiguous image shards, interleaved channel shards, draw shards, full batches."""

import numpy as np
import pandas as pd
import torch

from polypsi.shards import channel_shard, draws_of, full_batch, shard_rows


def test_every_item_is_in_exactly_one_shard():
    df = pd.DataFrame({"image_id": range(11)})
    assert pd.concat([shard_rows(df, s, 3) for s in range(3)]).equals(df)
    ch = np.arange(10)
    assert sorted(np.concatenate([channel_shard(ch, s, 3) for s in range(3)])) == list(ch)
    assert sorted(sum((draws_of(s, 4, 6) for s in range(4)), [])) == list(range(7))


def test_shards_of_whole_batches():
    """With a batch size, every block but the last holds whole batches (no job pads a short batch but the last)."""
    df = pd.DataFrame({"image_id": range(23)})
    for n in (1, 2, 3, 5, 8):
        parts = [shard_rows(df, s, n, 4) for s in range(n)]
        assert pd.concat(parts).equals(df)
        filled = [len(p) for p in parts if len(p)]
        assert all(k % 4 == 0 for k in filled[:-1]) and sum(filled) == 23
    assert [len(shard_rows(df, s, 3, 4)) for s in range(3)] == [8, 8, 7]
    assert [len(shard_rows(df, s, 3)) for s in range(3)] == [8, 7, 8]  # unit 1: as before
    # at least 2 units a block: 6 units go to 3 blocks of 4 requested, the 4th is empty
    parts = [shard_rows(df, s, 4, 4, min_units=2) for s in range(4)]
    assert [len(p) for p in parts] == [8, 8, 7, 0] and pd.concat(parts).equals(df)
    assert [len(shard_rows(df, s, 2, 4, min_units=10)) for s in range(2)] == [23, 0]  # too few for one: all in one


def test_a_short_batch_is_padded_with_its_last_row():
    x = torch.arange(6.0).view(3, 2)
    padded = full_batch(x, 5)
    assert padded.shape == (5, 2) and torch.equal(padded[:3], x) and torch.equal(padded[3:], x[[2, 2]])
    assert full_batch(x, 3) is x and full_batch(x, 2) is x and len(full_batch(x[:0], 4)) == 0
