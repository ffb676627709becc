"""`model.source: timm`: architectures by name with random weights, token layers, offline pretrained weights."""

import pytest
import torch

from polypsi.config import load_config
from polypsi.errors import ModelLoadError
from polypsi.geometry import measure_geometry
from polypsi.models import build_model, extractor, load_model

# A small ViT: 64 px images in 8 px patches (an 8 x 8 grid), 4 blocks.
VIT = {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 64, "patch_size": 8, "depth": 4}}


def _cfg(layers, crops, **model):
    return load_config({"model": {"source": "timm", "weights": None, "layers": layers, **model},
                        "crops": {"size": crops}})


def test_timm_resnet_random_init_with_its_data_config():
    cfg = _cfg(["layer3"], {"layer3": 64}, name="resnet18")
    model = load_model(cfg)
    fx, pre = extractor(model, cfg)
    assert pre.input_size == 224 and pre.mean == pytest.approx((0.485, 0.456, 0.406))
    assert fx(torch.rand(1, 3, 64, 64))["layer3"].shape == (1, 256, 4, 4)
    again = build_model(cfg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_vit_block_sites_are_its_patch_tokens():
    cfg = _cfg(["blocks.2"], {"blocks.2": 24}, **VIT)
    model = load_model(cfg)
    fx, pre = extractor(model, cfg)
    assert pre.input_size == 64 and pre.mean == (0.5, 0.5, 0.5)  # timm's data config for this ViT
    x = torch.rand(2, 3, 64, 64)
    grid = fx(x)["blocks.2"]
    assert grid.shape == (2, 192, 8, 8)
    # the grid is the block's output without the class token, in row-major patch order
    store = {}
    h = dict(model.named_modules())["blocks.2"].register_forward_hook(lambda _m, _i, o: store.setdefault("t", o))
    with torch.no_grad():
        model((x - 0.5) / 0.5)
    h.remove()
    assert torch.allclose(grid[:, :, 2, 5], store["t"][:, 1 + 2 * 8 + 5, :], atol=1e-5)


def test_vit_geometry_stride_is_the_patch_and_centres_are_measured():
    cfg = _cfg(["blocks.1"], {"blocks.1": 24}, **VIT)
    g = measure_geometry(build_model(cfg), cfg)
    layer = g["layers"]["blocks.1"]
    assert g["input_size"] == 64 and layer["kind"] == "tokens"
    assert layer["stride"] == 8 and (layer["height"], layer["width"], layer["channels"]) == (8, 8, 192)
    assert 2.0 <= layer["offset"] <= 5.0  # patch i covers pixels 8i..8i+7: centre 8i + 3.5


def test_register_tokens_are_left_out():
    cfg = _cfg(["blocks.0"], {"blocks.0": 24}, **{**VIT, "kwargs": {**VIT["kwargs"], "reg_tokens": 4}})
    model = load_model(cfg)
    assert model.num_prefix_tokens == 5
    assert extractor(model, cfg)[0](torch.rand(1, 3, 64, 64))["blocks.0"].shape == (1, 192, 8, 8)


def test_pretrained_weights_offline_fail_fast_naming_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"vit_tiny_patch16_224\.augreg_in21k.*not on this machine.*model.checkpoint"):
        build_model(_cfg(["blocks.0"], {"blocks.0": 64}, name="vit_tiny_patch16_224", weights="augreg_in21k"))
    with pytest.raises(ModelLoadError, match="not a timm pretrained tag"):
        build_model(_cfg(["blocks.0"], {"blocks.0": 64}, name="vit_tiny_patch16_224", weights="nope"))
    with pytest.raises(ModelLoadError, match="not a timm architecture; close names"):
        build_model(_cfg(["blocks.0"], {"blocks.0": 64}, name="vit_tiny_patch16_22"))
