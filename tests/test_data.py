import pytest

from polypsi.config import load_config
from polypsi.data import DatasetError, download_tiny_imagenet, index_dataset, index_imagefolder, \
    index_tiny_imagenet, render_synthetic
from conftest import write_images


def test_tiny_imagenet_val_layout(tiny_imagenet):
    df = index_tiny_imagenet(tiny_imagenet, "val")
    assert list(df.columns) == ["image_id", "path", "label", "class_name"]
    assert len(df) == 6 and list(df["image_id"]) == list(range(6))
    assert set(df["class_name"]) == {"goldfish", "European fire salamander", "bullfrog"}
    # labels follow wnids.txt order
    assert df.groupby("class_name")["label"].first().to_dict()["goldfish"] == 0


def test_tiny_imagenet_train_layout(tiny_imagenet):
    df = index_tiny_imagenet(tiny_imagenet, "train")
    assert len(df) == 6 and df["label"].value_counts().to_dict() == {0: 2, 1: 2, 2: 2}


def test_tiny_imagenet_errors_name_the_file(tiny_imagenet):
    (tiny_imagenet / "words.txt").unlink()
    with pytest.raises(DatasetError, match="words.txt is missing"):
        index_tiny_imagenet(tiny_imagenet)


def test_bad_annotation_line(tiny_imagenet):
    ann = tiny_imagenet / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "img_000.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match=r"val_annotations.txt:7"):
        index_tiny_imagenet(tiny_imagenet)


def test_imagefolder_and_max_images(tmp_path):
    write_images(tmp_path / "cats", 3)
    write_images(tmp_path / "dogs", 2, seed=1)
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    df = index_imagefolder(tmp_path)
    assert len(df) == 5 and df["class_name"].tolist() == ["cats"] * 3 + ["dogs"] * 2
    cfg = load_config({"data": {"source": "imagefolder", "root": str(tmp_path), "max_images": 4}})
    assert len(index_dataset(cfg)) == 4


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        index_imagefolder(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        index_imagefolder(tmp_path)


def test_synthetic_is_deterministic(tmp_path):
    cfg = load_config({"data": {"source": "synthetic", "synthetic": {"n_images": 8, "n_classes": 2}}})
    render_synthetic(cfg.data.synthetic, tmp_path / "a")
    render_synthetic(cfg.data.synthetic, tmp_path / "b")
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert a == b and len(a) == 8
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in a)


def test_download_disabled_or_unreachable_fails_fast_with_instructions(tmp_path):
    cfg = load_config({"data": {"root": str(tmp_path / "tiny"), "download": False}})
    with pytest.raises(DatasetError, match="data.download is false"):
        download_tiny_imagenet(cfg.data)
    # an unreachable local URL: the error says where to put the data by hand
    cfg = load_config({"data": {"root": str(tmp_path / "tiny"), "url": "http://127.0.0.1:9/tiny.zip"}})
    with pytest.raises(DatasetError, match="wnids.txt"):
        download_tiny_imagenet(cfg.data, timeout=5)


def test_download_checksums_and_extracts(tmp_path, tiny_imagenet):
    import hashlib
    import shutil

    archive = shutil.make_archive(str(tmp_path / "tiny"), "zip", tiny_imagenet.parent, tiny_imagenet.name)
    md5 = hashlib.md5(open(archive, "rb").read()).hexdigest()
    dest = tmp_path / "dest" / "tiny-imagenet-200"
    cfg = load_config({"data": {"root": str(dest), "url": f"file://{archive}", "md5": "0" * 32}})
    with pytest.raises(DatasetError, match="checksum mismatch"):
        download_tiny_imagenet(cfg.data)
    assert not dest.exists()
    cfg = load_config({"data": {"root": str(dest), "url": f"file://{archive}", "md5": md5}})
    assert (download_tiny_imagenet(cfg.data) / "wnids.txt").is_file()
    assert len(index_tiny_imagenet(dest)) == 6
    # as in the workflow, where Snakemake has already created the (empty) output folder
    existing = tmp_path / "existing" / "tiny-imagenet-200"
    existing.mkdir(parents=True)
    cfg = load_config({"data": {"root": str(existing), "url": f"file://{archive}", "md5": md5}})
    download_tiny_imagenet(cfg.data)
    assert (existing / "wnids.txt").is_file() and len(index_tiny_imagenet(existing)) == 6
