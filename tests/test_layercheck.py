"""Layer names checked when the workflow is planned: cached module lists, close names, crop sizes after them."""

import json

import pytest

from polypsi import layercheck
from polypsi.config import CropConfig, ShardConfig, load_config
from polypsi.errors import ConfigError, ModelLoadError
from polypsi.modelfit import check_geometry


def _cfg(**model):
    return load_config({"model": {"name": "resnet18", "weights": None, **model},
                        "crops": {"size": {"layer3": 32, "layer4": 48}}})


def test_module_names_are_built_once_and_cached(tmp_path, monkeypatch):
    cfg = _cfg()
    names = layercheck.module_names(cfg, tmp_path)
    assert "layer3" in names and "layer4.1.conv2" in names
    (cached,) = tmp_path.glob("probe-*.json")
    assert json.loads(cached.read_text())["modules"] == names
    monkeypatch.setattr(layercheck.sources.Source, "load", lambda *a: pytest.fail("the cache was not used"))
    assert layercheck.module_names(cfg, tmp_path) == names


def test_the_key_follows_the_model_settings_not_its_weights_or_layers():
    assert layercheck._key(_cfg()) == layercheck._key(_cfg(weights="IMAGENET1K_V1", layers=["layer4"],
                                                           checkpoint="x.pt"))
    assert layercheck._key(_cfg()) != layercheck._key(_cfg(name="resnet34"))
    assert layercheck._key(_cfg()) != layercheck._key(_cfg(kwargs={"num_classes": 10}))


def test_unknown_layers_come_before_missing_crop_sizes(tmp_path):
    with pytest.raises(ModelLoadError, match="'layer5' is not a module of the model; close names"):
        layercheck.check_layers_and_crops(_cfg(layers=["layer5", "layer2"]), tmp_path)
    with pytest.raises(ConfigError, match=r"crops.size has no entry for layer\(s\) \['layer2'\]"):
        layercheck.check_layers_and_crops(_cfg(layers=["layer2"]), tmp_path)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYPSI_CACHE", str(tmp_path / "c"))
    assert layercheck.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("POLYPSI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert layercheck.cache_dir() == tmp_path / "x" / "polypsi"


def test_the_probe_records_every_layers_output_shape(tmp_path):
    found = layercheck.probe(_cfg(input_size=64), tmp_path)
    assert found["input_size"] == 64 and found["error"] is None
    assert found["shapes"]["layer3"] == [256, 4, 4, "feature_map"] and found["shapes"]["layer4"] == [512, 2, 2, "feature_map"]
    assert "fc" not in found["shapes"]  # logits are no feature map


def test_settings_that_cannot_work_are_refused_by_key(tmp_path):
    with pytest.raises(ConfigError, match=r"shards.channels \(300\) is more than the 256 channels of layer layer3.*"
                                          r"at most 256"):
        layercheck.check_layers_and_crops(_cfg().model_copy(update={"shards": ShardConfig(channels=300)}), tmp_path)
    with pytest.raises(ConfigError, match=r"crops.size.layer4 \(100 px\) is larger than the model input, "
                                          r"model.input_size \(64 px\)"):
        layercheck.check_layers_and_crops(_cfg(input_size=64).model_copy(
            update={"crops": CropConfig(size={"layer3": 32, "layer4": 100})}), tmp_path)
    with pytest.raises(ConfigError, match=r"model.input_size \(16 px\) gives layer layer3 a 1 x 1 feature map"):
        layercheck.check_layers_and_crops(_cfg(input_size=16).model_copy(
            update={"crops": CropConfig(size={"layer3": 8, "layer4": 8})}), tmp_path)


def test_sizes_wait_for_the_geometry_rule_when_weights_may_bring_their_own(tmp_path):
    """Without model.input_size, torchvision weights set the input size: the plan cannot know it (nothing is downloaded)."""
    big = _cfg(weights="IMAGENET1K_V1").model_copy(update={"crops": CropConfig(size={"layer3": 300, "layer4": 48})})
    layercheck.check_layers_and_crops(big, tmp_path)  # no error here ...
    with pytest.raises(ConfigError, match=r"crops.size.layer3 \(300 px\) is larger than the model input, "
                                          r"the model's own input size \(224 px"):
        check_geometry(big, 224, {})  # ... but in the geometry rule, which knows the weights' size
