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


# ---------------------------------------------------------------- bad and odd images


def _odd_folder(root):
    """A class folder of good images plus files that cannot be mined, and hidden files to ignore."""
    good = write_images(root / "cats", 4, size=16)
    write_images(root / "dogs", 2, size=16, seed=1)
    full = (root / "cats" / "img_000.png").read_bytes()
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "dogs" / "whole.jpg", quality=95)
    data = (root / "dogs" / "whole.jpg").read_bytes()
    (root / "dogs" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.jpg").write_text("not an image")
    (root / "cats" / "._img_000.png").write_bytes(full[:40])  # a macOS resource fork
    (root / "cats" / ".DS_Store").write_bytes(b"\0\1")
    (root / "birds").mkdir()  # an empty class
    return good


def _index(tmp_path, root, **data):
    from polypsi.config import Config
    from polypsi.job import Files, Job
    from polypsi.data import index_dataset_stage

    cfg = Config.model_validate({"data": {"source": "imagefolder", "root": str(root), **data}})
    out = Files(dataset=tmp_path / "dataset.parquet", skipped=tmp_path / "skipped.csv")
    index_dataset_stage(Job(cfg=cfg, output=out, log=str(tmp_path / "index.log")))
    import pandas as pd

    return pd.read_parquet(out.dataset), pd.read_csv(out.skipped), (tmp_path / "index.log").read_text()


def test_unreadable_images_are_skipped_named_and_counted(tmp_path):
    root = tmp_path / "data"
    _odd_folder(root)
    df, skipped, log = _index(tmp_path, root, max_skipped_share=0.5)
    names = {p.split("/")[-1] for p in skipped.path}
    assert names == {"truncated.jpg", "empty.png", "notes.jpg"}
    assert skipped.set_index(skipped.path.str.split("/").str[-1]).loc["notes.jpg", "reason"].startswith(
        "not a readable image")
    # every good image is kept, ids are contiguous, hidden files were never indexed
    assert len(df) == 7 and list(df.image_id) == list(range(7)) and not df.path.str.contains("/\\.").any()
    assert "truncated.jpg" in log and "3 skipped" in log and "hold no images (birds)" in log


def test_too_many_unreadable_images_stop_the_run_listing_them(tmp_path):
    root = tmp_path / "data"
    _odd_folder(root)
    with pytest.raises(DatasetError, match=r"(?s)3 of 10 images \(30.0%\) cannot be read.*truncated.jpg.*max_skipped_share"):
        _index(tmp_path, root)


def test_oversized_images_are_refused_from_their_header(tmp_path):
    root = tmp_path / "data"
    write_images(root / "a", 3, size=16)
    from PIL import Image

    Image.new("RGB", (40, 40)).save(root / "a" / "big.png")
    df, skipped, _ = _index(tmp_path, root, max_pixels=1000, max_skipped_share=0.5)
    assert len(df) == 3 and skipped.reason.tolist() == ["40 x 40 = 1600 pixels exceeds data.max_pixels (1000)"]


@pytest.mark.parametrize("mode,make,expected", [
    ("I;16", lambda: __import__("numpy").full((4, 4), 32768, dtype="uint16"), (128, 128, 128)),
    ("I;16-max", lambda: __import__("numpy").full((4, 4), 65535, dtype="uint16"), (255, 255, 255)),
    ("CMYK", lambda: (255, 0, 0, 0), (0, 255, 255)),
    ("P", lambda: 1, (10, 200, 30)),
    ("LA", lambda: (100, 50), (100, 100, 100)),
    ("L", lambda: 77, (77, 77, 77)),
])
def test_image_modes_convert_to_rgb_with_known_values(tmp_path, mode, make, expected):
    from PIL import Image

    from polypsi.crops import load_image

    if mode.startswith("I;16"):
        im = Image.fromarray(make())
        assert im.mode.startswith("I;16")
        path = tmp_path / "x.png"
    elif mode == "P":
        im = Image.new("P", (4, 4), make())
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        path = tmp_path / "x.png"
    else:
        im = Image.new(mode, (4, 4), make())
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    px = (load_image(path, 4)[:, 1, 1] * 255).round().int().tolist()
    assert px == list(expected)
