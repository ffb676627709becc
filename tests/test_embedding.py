import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polypsi.config import load_config
from polypsi.embedding import EmbedderLoadError, load_embedder


def _cfg(**emb):
    return load_config({"embedder": {"name": "polypsi-tiny-vit", "pretrained": None, **emb}})


def test_tiny_open_clip_random_weights_encode_normalised():
    cfg = _cfg()
    e = load_embedder(cfg.embedder, cfg, "cpu")
    z = e.encode_images(torch.rand(3, 3, 50, 50))
    t = e.encode_texts(["a photo of a cat.", "a photo of a dog."])
    assert z.shape == (3, 64) and t.shape == (2, 64)
    assert np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    e2 = load_embedder(cfg.embedder, cfg, "cpu")  # seeded random init
    assert np.allclose(e2.encode_texts(["a photo of a cat."]), t[:1], atol=1e-6)


def test_local_checkpoint_roundtrip(tmp_path):
    cfg = _cfg(init_seed=5)
    e = load_embedder(cfg.embedder, cfg, "cpu")
    torch.save(e.model.state_dict(), tmp_path / "clip.pt")
    cfg2 = _cfg(checkpoint=str(tmp_path / "clip.pt"), init_seed=99)
    e2 = load_embedder(cfg2.embedder, cfg2, "cpu")
    x = torch.rand(2, 3, 32, 32)
    assert np.allclose(e.encode_images(x), e2.encode_images(x), atol=1e-5)


def test_missing_pretrained_weights_fail_within_seconds():
    cfg = load_config({"embedder": {"name": "ViT-B-32", "pretrained": "openai"}})
    t = time.monotonic()
    with pytest.raises(EmbedderLoadError) as e:
        load_embedder(cfg.embedder, cfg, "cpu")
    assert time.monotonic() - t < 10
    assert "embedder.checkpoint" in str(e.value) and "open_clip_pytorch_model.bin" in str(e.value)


def test_bad_names():
    cfg = load_config({"embedder": {"name": "ViT-B-32", "pretrained": "no-such-tag"}})
    with pytest.raises(EmbedderLoadError, match="not a known open_clip tag"):
        load_embedder(cfg.embedder, cfg, "cpu")
    cfg = _cfg(name="ViT-Nope")
    with pytest.raises(EmbedderLoadError, match="not an open_clip architecture"):
        load_embedder(cfg.embedder, cfg, "cpu")
    cfg = _cfg(checkpoint="/nonexistent/clip.pt")
    with pytest.raises(EmbedderLoadError, match="does not exist"):
        load_embedder(cfg.embedder, cfg, "cpu")


def _crop_world(tmp_path, n_images=6, channels=6, k=8, seed=0):
    """Images, a dataset table, a geometry and a top-K table whose sites often share a crop box."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    dataset = pd.DataFrame({"image_id": np.arange(n_images), "path": paths})
    geometry = {"input_size": 64, "layers": {"l": {"crop": 40, "stride": 8, "offset": 3.5}}}
    topk = pd.DataFrame({"channel": np.repeat(np.arange(channels), k), "rank": np.tile(np.arange(k), channels),
                         "image_id": rng.integers(0, n_images, channels * k), "u": rng.integers(0, 8, channels * k),
                         "v": rng.integers(0, 8, channels * k), "activation": np.float32(1.0)})
    return dataset, geometry, topk


def _per_channel_shard_reference(e, topk, dataset, geometry, channels, bs):
    """The embedding as it was before crops were shared across shards: a channel shard's distinct sites, each
    crop resized on its own, batches padded to the batch size."""
    from polypsi.crops import crop_boxes, load_image
    from polypsi.shards import full_batch

    g, size = geometry["layers"]["l"], geometry["input_size"]
    rows = topk[topk["channel"].isin(channels)].reset_index(drop=True)
    sites = rows[["image_id", "u", "v"]].drop_duplicates().sort_values(["image_id", "u", "v"]).reset_index(drop=True)
    paths = dataset.set_index("image_id").loc[sites["image_id"], "path"].tolist()
    boxes = crop_boxes(sites["u"].to_numpy(), sites["v"].to_numpy(), g, size)
    crops = torch.stack([torch.nn.functional.interpolate(
        load_image(p, size)[:, y0:y1, x0:x1].unsqueeze(0), size=(e.image_size, e.image_size), mode="bilinear",
        align_corners=False, antialias=True)[0] for p, (y0, x0, y1, x1) in zip(paths, boxes)])
    z = np.concatenate([e.encode_images(full_batch(crops[i : i + bs], bs))[: len(crops[i : i + bs])]
                        for i in range(0, len(crops), bs)])
    pos = pd.Series(np.arange(len(sites)), index=pd.MultiIndex.from_frame(sites))
    return z[pos.loc[pd.MultiIndex.from_frame(rows[["image_id", "u", "v"]])].to_numpy()]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_distinct_crop_embedded_once_whatever_the_shards(tmp_path, workers):
    """Crop shards cover the layer's distinct crops (image, box) exactly once for any shard count; embedded
    shard by shard (whole batches, the last one short and unpadded) they give the bits of one job; and the
    per-channel patch embeddings built from them are those of embedding each channel shard on its own."""
    from polypsi import embedding
    from polypsi.croptable import CROP_COLUMNS, crop_shard, distinct_crops, patch_embeddings
    from polypsi.shards import channel_shard, shard_rows

    dataset, geometry, topk = _crop_world(tmp_path)
    g, size = geometry["layers"]["l"], geometry["input_size"]
    every = distinct_crops(topk, g, size)
    n_sites = len(topk[["image_id", "u", "v"]].drop_duplicates())
    assert len(every) < n_sites < len(topk)  # boxes shifted inside the image are shared by several sites
    cfg = _cfg(batch_size=8)
    e = load_embedder(cfg.embedder, cfg, "cpu")

    def embed(crops, bs):
        paths = dataset.set_index("image_id").loc[crops["image_id"], "path"].tolist()
        return embedding.embed_crops(e, paths, crops[CROP_COLUMNS[1:]].to_numpy(), size, bs, workers=workers)

    z_all = embed(every, 8)
    for n in (1, 2, 3, 5):
        shards = [crop_shard(every, s, n) for s in range(n)]
        got = pd.concat(shards, ignore_index=True)
        assert len(got) == len(every) and not got.duplicated().any()  # each distinct crop once, in one shard
    bs = 5
    assert len(every) % bs  # the layer's last batch is short
    z_one = embed(every, bs)
    for n in (2, 3):
        parts = [shard_rows(every, s, n, bs) for s in range(n)]
        assert sum(len(p) > 0 for p in parts) > 1
        assert all(len(p) % bs == 0 for p in parts[:-1])  # whole batches but for the last block
        np.testing.assert_array_equal(np.concatenate([embed(p, bs) for p in parts if len(p)]), z_one)
    channels = np.unique(topk["channel"])
    for s in range(2):
        mine = channel_shard(channels, s, 2)
        rows, z = patch_embeddings(topk, mine, g, size, every, z_all)
        ref = _per_channel_shard_reference(e, topk, dataset, geometry, mine, 8)
        assert list(rows["channel"].unique()) == list(mine) and len(rows) == len(ref)
        # the same crops (other batch mates and sizes: equal up to rounding)
        np.testing.assert_allclose(z, ref, rtol=0, atol=1e-6)


def test_embed_patches_stage_embeds_its_shard_and_an_empty_shard_imports_no_torch(tmp_path):
    """The stage writes its crop shard's rows with their embeddings (those of embedding the crops directly); a
    shard left empty (fewer crops than MIN_BATCHES_PER_JOB batches per job) writes its empty table in a process
    that never imports torch or open_clip (about 3 s of start-up saved per empty job)."""
    import json
    import os
    import subprocess
    import sys

    from polypsi import embedding
    from polypsi.croptable import CROP_COLUMNS, MIN_BATCHES_PER_JOB, distinct_crops, embed_patches_stage
    from polypsi.io import read_table, write_table
    from polypsi.job import Files, Job

    dataset, geometry, topk = _crop_world(tmp_path)
    write_table(dataset, tmp_path / "dataset.parquet")
    write_table(topk, tmp_path / "topk.parquet")
    (tmp_path / "geometry.json").write_text(json.dumps(geometry))
    every = distinct_crops(topk, geometry["layers"]["l"], geometry["input_size"])
    raw = {"embedder": {"name": "polypsi-tiny-vit", "pretrained": None, "batch_size": 8}, "shards": {"channels": 2},
           "device": "cpu"}
    assert len(every) <= 8 * MIN_BATCHES_PER_JOB  # so all crops go to shard 0, shard 1 is empty
    inputs = {"topk": str(tmp_path / "topk.parquet"), "dataset": str(tmp_path / "dataset.parquet"),
              "geometry": str(tmp_path / "geometry.json")}
    embed_patches_stage(Job(cfg=load_config(raw), input=Files(**inputs),
                            output=Files(crops=str(tmp_path / "s0.parquet")), wildcards={"layer": "l", "cshard": "0"}))
    crops, z = read_table(tmp_path / "s0.parquet", embedding="embedding")
    pd.testing.assert_frame_equal(crops, every)
    e = load_embedder(load_config(raw).embedder, load_config(raw), "cpu")
    paths = dataset.set_index("image_id").loc[every["image_id"], "path"].tolist()
    np.testing.assert_array_equal(z, embedding.embed_crops(e, paths, every[CROP_COLUMNS[1:]].to_numpy(), 64, 8))

    code = (
        "import json, sys\n"
        "from polypsi.config import load_config\n"
        "from polypsi.croptable import embed_patches_stage\n"
        "from polypsi.job import Files, Job\n"
        f"embed_patches_stage(Job(cfg=load_config({raw!r}), input=Files(**{inputs!r}),\n"
        f"    output=Files(crops={str(tmp_path / 's1.parquet')!r}), wildcards={{'layer': 'l', 'cshard': '1'}}))\n"
        "print(json.dumps(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules)))\n"
    )
    src = str(Path(embedding.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": src})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    empty, z1 = read_table(tmp_path / "s1.parquet", embedding="embedding")
    assert len(empty) == 0 and list(empty.columns) == CROP_COLUMNS and z1.shape[0] == 0
