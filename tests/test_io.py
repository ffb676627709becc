import numpy as np
import pandas as pd
import pytest

from polypsi.io import atomic_path, read_table, write_table


def test_roundtrip_with_embedding(tmp_path):
    df = pd.DataFrame({"channel": [0, 1, 2], "rank": [0, 0, 0]})
    emb = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    write_table(df, tmp_path / "t.parquet", embeddings={"embedding": emb})
    got, e = read_table(tmp_path / "t.parquet", embedding="embedding")
    pd.testing.assert_frame_equal(got, df)
    assert np.array_equal(e, emb)
    import pyarrow.parquet as pq

    assert str(pq.read_schema(tmp_path / "t.parquet").field("embedding").type) == "fixed_size_list<element: float>[5]"


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_mismatched_embedding_rows(tmp_path):
    with pytest.raises(ValueError, match="2 rows"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet", embeddings={"e": np.zeros((2, 3))})


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the stage"):
        read_table(tmp_path / "none.parquet")


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

    write_table(pd.DataFrame({"a": [1]}), tmp_path / "p.parquet")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "p.parquet").stat().st_mode & 0o777 == 0o666 & ~umask
