"""Bad and odd inputs: each gets a clear error naming the file or key and its fix, or a counted skip, and no
valid image is lost. Library functions on tiny generated files (no workflow run), so the suite takes seconds."""

import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from polypsi import preflight
from polypsi.config import load_config
from polypsi.crops import load_image
from polypsi.data import DatasetError, index_dataset_stage, index_imagefolder
from polypsi.errors import ConfigError, ModelLoadError, StageError
from polypsi.job import Files, Job
from conftest import write_images

# ---------------------------------------------------------------- helpers


def _good(root):
    """Six valid images in two classes: every test checks that all of them are still indexed."""
    return write_images(root / "cats", 3, size=16) + write_images(root / "dogs", 3, size=16, seed=1)


def _index(tmp_path, root, **data):
    """index_dataset as the workflow runs it: (usable table, skipped.csv, log text)."""
    cfg = load_config({"data": {"source": "imagefolder", "root": str(root), "max_skipped_share": 0.5, **data}})
    out = Files(dataset=tmp_path / "dataset.parquet", skipped=tmp_path / "skipped.csv")
    index_dataset_stage(Job(cfg=cfg, output=out, log=str(tmp_path / "index.log")))
    return pd.read_parquet(out.dataset), pd.read_csv(out.skipped), (tmp_path / "index.log").read_text()


def _all_good_kept(df, good):
    assert sorted(df.path) == sorted(map(str, good)) and list(df.image_id) == list(range(len(good)))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width, height, bit_depth, colour_type, raw: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def _jpeg_bytes(tmp_path):
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "whole.jpg", quality=95)
    return (tmp_path / "whole.jpg").read_bytes()


# ---------------------------------------------------------------- unreadable files: skipped, named, counted

UNREADABLE = {
    "truncated.jpg": (lambda t: _jpeg_bytes(t)[: len(_jpeg_bytes(t)) // 2], "not a readable image"),
    "zero.png": (lambda t: b"", "not a readable image"),
    "text.jpg": (lambda t: b"this is a text file named like an image\n", "not a readable image"),
    # 40000 x 40000 declared by a 70-byte file: refused from the header, before any decode
    "bomb.png": (lambda t: _png(40000, 40000, 8, 2, b"\0"), "refused as a decompression bomb"),
    "large.png": (lambda t: _png(64, 64, 8, 0, b"\0" * 65 * 64), "64 x 64 = 4096 pixels exceeds data.max_pixels (1000)"),
    "garbled.png": (lambda t: _png(16, 16, 8, 2, b"\0" * 49 * 16)[:40] + b"\xff" * 60, "not a readable image"),
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_file_is_skipped_by_name_and_counted(tmp_path, name):
    root = tmp_path / "data"
    good = _good(root)
    make, reason = UNREADABLE[name]
    (root / "dogs" / name).write_bytes(make(tmp_path))
    df, skipped, log = _index(tmp_path, root, max_pixels=1000)
    assert skipped.path.str.endswith("/" + name).tolist() == [True], skipped
    assert reason in skipped.reason[0]
    assert f"skipped {root / 'dogs' / name}: " in log and "7 images, 6 usable, 1 skipped" in log
    _all_good_kept(df, good)


# ---------------------------------------------------------------- files that are not part of the dataset

IGNORED = {
    "macOS resource fork": ("cats/._img_000.png", lambda: b"\0\5\26\7 Mac OS X resource fork"),
    "hidden image": ("cats/.x.png", lambda: _png(4, 4, 8, 0, b"\0" * 5 * 4)),
    "text file": ("cats/notes.txt", lambda: b"not an image"),
    "other extension": ("dogs/labels.json", lambda: b"{}"),
    "hidden folder": (".thumbs/a.png", lambda: _png(4, 4, 8, 0, b"\0" * 5 * 4)),
}


@pytest.mark.parametrize("case", list(IGNORED))
def test_hidden_and_non_image_files_are_ignored(tmp_path, case):
    root = tmp_path / "data"
    good = _good(root)
    rel, make = IGNORED[case]
    (root / rel).parent.mkdir(exist_ok=True)
    (root / rel).write_bytes(make())
    df, skipped, log = _index(tmp_path, root)
    assert skipped.empty and "0 skipped" in log and set(df.class_name) == {"cats", "dogs"}
    _all_good_kept(df, good)


# ---------------------------------------------------------------- classes


def test_empty_class_folder_is_reported(tmp_path):
    root = tmp_path / "data"
    good = _good(root)
    (root / "birds").mkdir()
    df, _, log = _index(tmp_path, root)
    assert "1 class folder(s) of" in log and "hold no images (birds)" in log
    _all_good_kept(df, good)


def test_one_class_data_is_warned_about_with_its_consequence(tmp_path):
    root = tmp_path / "data"
    good = write_images(root / "cats", 4, size=16)
    df, _, log = _index(tmp_path, root)
    assert "one class only ('cats'): Q" in log and "interventions find no channel" in log
    _all_good_kept(df, good)


def test_classes_sharing_a_name_are_warned_about(tmp_path):
    root = tmp_path / "data"
    good = write_images(root / "Red_Car", 2, size=16) + write_images(root / "red car", 2, size=16, seed=3)
    df, _, log = _index(tmp_path, root)
    assert "1 group(s) of classes share one name in the prompts (Red_Car = red car)" in log
    assert df.label.nunique() == 2
    _all_good_kept(df, good)


def test_too_many_unreadable_files_stop_the_run_listing_them(tmp_path):
    root = tmp_path / "data"
    _good(root)
    for i in range(3):
        (root / "dogs" / f"broken{i}.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"(?s)3 of 9 images \(33.3%\) cannot be read, more than "
                                           r"data.max_skipped_share \(5%\).*broken0.jpg.*broken2.jpg.*Replace or remove"):
        _index(tmp_path, root, max_skipped_share=0.05)


def test_no_readable_image_at_all_stops_the_run(tmp_path):
    root = tmp_path / "data"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"(?s)none of the 1 images can be read:.*a.jpg: not a readable image"):
        _index(tmp_path, root, max_skipped_share=1.0)


# ---------------------------------------------------------------- image modes: kept, with their real values


def _save(im, path, **kw):
    im.save(path, **kw)
    return path.read_bytes()


def _palette_with_transparency(path):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return _save(im, path, transparency=1)


MODES = {  # file name, its bytes, the RGB value it must load as, tolerance
    "16-bit grey PNG": ("g16.png", lambda p: _save(Image.fromarray(np.full((4, 4), 32768, np.uint16)), p),
                        (128, 128, 128), 0),
    "16-bit RGB PNG": ("rgb16.png", lambda p: _png(4, 4, 16, 2, (b"\0" + b"\xff\xff\x80\x00\x00\x00" * 4) * 4),
                       (255, 128, 0), 0),
    "I;16 TIFF": ("i16.tif", lambda p: _save(Image.fromarray(np.full((4, 4), 65535, np.uint16)), p), (255, 255, 255), 0),
    "CMYK JPEG": ("cmyk.jpg", lambda p: _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), p, quality=100),
                  (255, 0, 0), 2),
    "palette PNG with transparency": ("p.png", _palette_with_transparency, (10, 200, 30), 0),
    "LA PNG": ("la.png", lambda p: _save(Image.new("LA", (4, 4), (100, 0)), p), (100, 100, 100), 0),
}


@pytest.mark.parametrize("case", list(MODES))
def test_image_modes_are_kept_and_load_with_their_values(tmp_path, case):
    root = tmp_path / "data"
    good = _good(root)
    name, make, rgb, tol = MODES[case]
    path = root / "dogs" / name
    path.write_bytes(make(tmp_path / name))
    df, skipped, _ = _index(tmp_path, root)
    assert skipped.empty and str(path) in set(df.path) and len(df) == 7
    assert all(str(p) in set(df.path) for p in good)
    got = (load_image(path, 4)[:, 1, 1] * 255).round().int().tolist()
    assert np.abs(np.array(got) - rgb).max() <= tol, got


# ---------------------------------------------------------------- settings and assets, before any job runs

NET = """from torch import nn


def build():
    # two layers: `0` (stride 2, 8 channels) and `2` (stride 8, 16 channels)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=4, padding=1))
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A two-layer model of one's own (built in milliseconds) and a cache for its probes."""
    d = tmp_path_factory.mktemp("net")
    (d / "net.py").write_text(NET)
    return d


def _net_cfg(net, **over):
    raw = {"model": {"source": "python", "entry": f"{net / 'net.py'}:build", "weights": None, "input_size": 64,
                     "layers": ["0", "2"]},
           "crops": {"size": {"0": 16, "2": 32}}, "embedder": {"name": "polypsi-tiny-vit", "pretrained": None}}
    for section, values in over.items():
        raw[section] = {**raw.get(section, {}), **values}
    return load_config(raw)


def _layer_messages(net, **over):
    return [p.message for p in preflight.layer_problems(_net_cfg(net, **over), net)]


def test_the_small_model_passes(net):
    assert _layer_messages(net) == []


@pytest.mark.parametrize("over,message", [
    ({"model": {"input_size": 8}}, "model.input_size (8 px) gives layer 2 a 1 x 1 feature map"),
    ({"crops": {"size": {"0": 16, "2": 100}}}, "crops.size.2 (100 px) is larger than the model input, "
                                                "model.input_size (64 px)"),
    ({"shards": {"channels": 12}}, "shards.channels (12) is more than the 8 channels of layer 0"),
    ({"model": {"layers": ["0", "22"]}}, "model.layers: '22' is not a module of the model; close names: ['2'"),
], ids=["input_size too small", "crop larger than input", "more channel shards than channels", "unknown layer"])
def test_settings_that_cannot_fit_the_model_are_refused_by_key(net, over, message):
    got = _layer_messages(net, **over)
    assert any(message in m for m in got), got


@pytest.mark.parametrize("raw,message", [
    ({"shards": {"draws": 8}, "nulls": {"m": 5}}, "shards.draws (8) exceeds the 6 draws there are"),
    ({"mining": {"topkk": 5}}, "unknown key 'mining.topkk'; did you mean 'mining.topk'?"),
    ({"nulls": {"m": "twenty"}}, "key 'nulls.m': Input should be a valid integer"),
    ({"data": {"max_skipped_share": 2}}, "key 'data.max_skipped_share': Input should be less than or equal to 1"),
], ids=["more draw shards than draws", "unknown key", "wrong type", "out of range"])
def test_invalid_config_is_refused_by_key(raw, message):
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert message in str(e.value)


def test_fewer_images_than_topk_is_refused_before_the_model_loads(tmp_path):
    from polypsi.mining import mine_shard

    cfg = load_config({"mining": {"topk": 12, "one_site_per_image": True}, "report": {"k_values": [12]}})
    dataset = pd.DataFrame({"image_id": range(5), "path": ["x.png"] * 5, "label": 0, "class_name": "x"})
    with pytest.raises(StageError, match=r"mining.topk \(12\) is more than the 5 usable images.*at most 5"):
        mine_shard(cfg, dataset, 0, "cpu")
    # known before the run for generated data, the planted world, Tiny-ImageNet and data.max_images
    cfg = load_config({"data": {"source": "synthetic", "synthetic": {"n_images": 8}},
                       "mining": {"topk": 12, "one_site_per_image": True}, "report": {"k_values": [12]}})
    (p,) = preflight.topk_problems(cfg, None)
    assert p.key == "mining.topk" and "the 8 images of the run" in p.message


def test_missing_data_root(tmp_path):
    cfg = load_config({"data": {"source": "imagefolder", "root": str(tmp_path / "nowhere")}})
    (p,), _ = preflight.data_problems(cfg)
    assert p.key == "data.root" and "nowhere does not exist" in p.message
    with pytest.raises(DatasetError, match="nowhere does not exist; set data.root"):
        index_imagefolder(tmp_path / "nowhere")


def test_missing_and_corrupt_checkpoints(tmp_path):
    import torch

    from polypsi.models import load_state_dict_file

    cfg = load_config({"model": {"checkpoint": str(tmp_path / "absent.pt")}})
    (p,) = preflight.model_file_problems(cfg)
    assert p.key == "model.checkpoint" and "absent.pt does not exist" in p.message
    with pytest.raises(ModelLoadError, match="absent.pt does not exist; fix model.checkpoint"):
        load_state_dict_file(tmp_path / "absent.pt")
    torch.save({"w": torch.zeros(4)}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:300])
    cfg = load_config({"embedder": {"checkpoint": str(tmp_path / "cut.pt")}})
    (p,) = preflight.embedder_file_problems(cfg)
    assert p.key == "embedder.checkpoint" and "truncated or corrupt" in p.message
    with pytest.raises(ModelLoadError) as e:
        load_state_dict_file(tmp_path / "cut.pt")
    assert "is not a readable torch checkpoint" in str(e.value) and "replace a corrupt or truncated file" in str(e.value)
    assert "weights_only` set to `False`" not in str(e.value)  # torch's unsafe advice is not passed on


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("# only a comment\n\n   \n", "is empty"),
], ids=["prompt file missing", "empty prompt file"])
def test_prompt_lists_missing_or_empty(tmp_path, content, message):
    from polypsi.prompts import read_list

    path = tmp_path / "concepts.txt"
    if content is not None:
        path.write_text(content)
    cfg = load_config({"prompts": {"concepts": str(path)}})
    (p,) = preflight.prompt_problems(cfg)
    assert p.key == "prompts.concepts" and message in p.message
    with pytest.raises(ConfigError, match=f"prompts.concepts.*{message}|{message}.*prompts.concepts"):
        read_list(str(path), cfg, "concepts")


def test_templates_without_a_slot(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of {}\na drawing\n{} and {}\n")
    (p,) = preflight.prompt_problems(load_config({"prompts": {"templates": str(tmp_path / "t.txt")}}))
    assert p.key == "prompts.templates" and "['a drawing', '{} and {}']" in p.message
