"""`model.source: torchvision` with a vision transformer: encoder layers are token layers."""

import torch

from polypsi.config import load_config
from polypsi.geometry import measure_geometry
from polypsi.models import extractor, load_model


def test_torchvision_vit_encoder_layer_as_a_patch_grid():
    cfg = load_config({"model": {"source": "torchvision", "name": "vit_b_32", "weights": None,
                                 "kwargs": {"image_size": 64}, "layers": ["encoder.layers.encoder_layer_1"]},
                       "crops": {"size": {"encoder.layers.encoder_layer_1": 48}}})
    model = load_model(cfg)
    fx, pre = extractor(model, cfg)
    assert pre.input_size == 64  # the model's own image size
    out = fx(torch.rand(2, 3, 64, 64))["encoder.layers.encoder_layer_1"]
    assert out.shape == (2, 768, 2, 2)  # 64 px in 32 px patches; the class token is left out
    g = measure_geometry(model, cfg)["layers"]["encoder.layers.encoder_layer_1"]
    assert g["kind"] == "tokens" and g["stride"] == 32 and 10 <= g["offset"] <= 22
