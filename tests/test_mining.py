import numpy as np
import pandas as pd
import pytest
import torch

from polypsi.mining import StreamingTopK, merge_topk, site_candidates


def brute_force(acts: np.ndarray, k: int, one_site: bool) -> pd.DataFrame:
    """Every site of every image, sorted (value desc, image, u, v); one per image if asked."""
    n, c, h, w = acts.shape
    rows = []
    for ch in range(c):
        sites = [(-acts[i, ch, u, v], i, u, v) for i in range(n) for u in range(h) for v in range(w)]
        sites.sort()
        if one_site:
            seen, keep = set(), []
            for s in sites:
                if s[1] not in seen:
                    seen.add(s[1])
                    keep.append(s)
            sites = keep
        for r, (val, i, u, v) in enumerate(sites[:k]):
            rows.append((ch, r, i, u, v, np.float32(-val)))
    return pd.DataFrame(rows, columns=["channel", "rank", "image_id", "u", "v", "activation"])


def stream(acts: np.ndarray, k: int, one_site: bool, batch: int, start: int = 0) -> pd.DataFrame:
    n, c, h, w = acts.shape
    tk = StreamingTopK(c, k)
    for b in range(0, n, batch):
        a = torch.from_numpy(acts[b : b + batch])
        ids = torch.arange(start + b, start + b + len(a))
        tk.update(*site_candidates(a, ids, one_site))
    return tk.table((h, w))


def _acts(seed=0, n=23, c=5, h=3, w=4, ties=True):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, c, h, w)).astype(np.float32)
    if ties:
        a = np.round(a, 1)  # many exact ties
        a[:, 0] = 0.0  # a dead channel: everything tied
        a = np.maximum(a, 0)  # ReLU zeros
    return a


@pytest.mark.parametrize("one_site", [False, True])
@pytest.mark.parametrize("batch", [1, 4, 23])
@pytest.mark.parametrize("ties", [False, True])
def test_streaming_topk_equals_brute_force(one_site, batch, ties):
    a = _acts(ties=ties)
    got = stream(a, 7, one_site, batch)
    want = brute_force(a, 7, one_site)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)


@pytest.mark.parametrize("one_site", [False, True])
def test_merge_of_shards_equals_single_pass(one_site):
    a = _acts(seed=3, n=31)
    whole = stream(a, 6, one_site, 5)
    for bounds in ([0, 31], [0, 10, 31], [0, 3, 17, 31], [0, 0, 31]):
        parts = [stream(a[lo:hi], 6, one_site, 4, start=lo) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
        pd.testing.assert_frame_equal(merge_topk(parts, 6), whole.reset_index(drop=True), check_dtype=False)
    # shard order does not matter either (associative and commutative)
    parts = [stream(a[lo:hi], 6, one_site, 4, start=lo) for lo, hi in [(20, 31), (0, 20)]]
    pd.testing.assert_frame_equal(merge_topk(parts, 6), whole.reset_index(drop=True), check_dtype=False)


def test_fewer_sites_than_k_leaves_no_placeholders():
    a = _acts(n=2, ties=False)
    got = stream(a, 7, True, 1)
    assert (got.groupby("channel").size() == 2).all()
    assert np.isfinite(got["activation"]).all()


def test_nan_activation_never_wins():
    a = _acts(ties=False)
    a[3, 1, 0, 0] = np.nan
    got = stream(a, 5, False, 8)
    assert np.isfinite(got["activation"]).all()


def test_mined_top_k_is_the_same_to_the_bit_for_any_image_shards(tmp_path, monkeypatch):
    """Shards hold whole batches, so each image is computed in the same batch for any shard count (a batch of
    another size would round differently); the data's short last batch is not padded."""
    from PIL import Image

    from polypsi import mining
    from polypsi.config import load_config
    from polypsi.mining import mine_shard

    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    dataset = pd.DataFrame({"image_id": range(10), "path": [str(p) for p in paths], "label": 0, "class_name": "x"})
    batch = 3  # 10 images: three whole batches and one of a single image

    def config(n_shards):
        return load_config({"model": {"name": "resnet18", "weights": None, "layers": ["layer2"], "input_size": 32},
                            "crops": {"size": {"layer2": 16}}, "mining": {"topk": 6, "batch_size": batch,
                                                                         "one_site_per_image": False},
                            "report": {"k_values": [6]}, "shards": {"images": n_shards}})

    site = mining.site_candidates
    model = mining.load_model(config(1), "cpu")
    monkeypatch.setattr(mining, "load_model", lambda cfg, device: model)  # built once

    def mined(n_shards):
        parts = [mine_shard(config(n_shards), dataset, s, "cpu")["layer2"] for s in range(n_shards)]
        return merge_topk(parts, 6)

    sizes = []
    monkeypatch.setattr(mining, "site_candidates", lambda a, ids, one: sizes.append(len(a)) or site(a, ids, one))
    whole = mined(1)
    assert sorted(sizes) == [1, 3, 3, 3]
    for n in (2, 3, 4):
        sizes.clear()
        pd.testing.assert_frame_equal(mined(n), whole, check_exact=True)
        assert sorted(sizes) == [1, 3, 3, 3]  # the same batches in whichever shards
