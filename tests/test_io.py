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


def _dead_pid():
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_writers_temporaries_go_with_the_next_write(tmp_path):
    """Temporary names carry their writer: a dead one's are removed, a live or another host's are kept."""
    import os

    from polypsi.io import _HOST, atomic_dir, remove_stale_temps

    dead, me = _dead_pid(), os.getpid()
    (tmp_path / f".images.{dead}-{_HOST}.abcd1234.part").mkdir()  # a killed render's folder
    (tmp_path / f".images.{dead}-{_HOST}.abcd1234.part" / "x.png").write_text("half")
    (tmp_path / ".images.k2j4h5g6").mkdir()  # an older version's folder (no owner)
    (tmp_path / f".images.{me}-{_HOST}.zzzz9999.part").mkdir()  # a live writer
    (tmp_path / f".images.{dead}-00000000.abcd1234.part").mkdir()  # another machine's
    (tmp_path / ".images.settings").write_text("not ours")  # not a temporary name
    with atomic_dir(tmp_path / "images") as d:
        (d / "a.png").write_text("png")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["images", f".images.{me}-{_HOST}.zzzz9999.part", f".images.{dead}-00000000.abcd1234.part",
                           ".images.settings"])
    assert (tmp_path / "images" / "a.png").read_text() == "png"
    (tmp_path / f".t.parquet.{dead}-{_HOST}.qwer5678.part").write_text("half")
    assert [p.name for p in remove_stale_temps(tmp_path / "t.parquet")] == [f".t.parquet.{dead}-{_HOST}.qwer5678.part"]


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path):
    from polypsi.io import atomic_dir

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "old.png").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "images") as d:
            (d / "new.png").write_text("new")
            raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["images"] and (tmp_path / "images" / "old.png").exists()
