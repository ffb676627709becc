"""Layer names checked when the workflow is planned: cached module lists, close names, crop sizes after them."""

import json

import pytest

from polypsi import layercheck
from polypsi.config import load_config
from polypsi.errors import ConfigError, ModelLoadError


def _cfg(**model):
    return load_config({"model": {"name": "resnet18", "weights": None, **model},
                        "crops": {"size": {"layer3": 32, "layer4": 48}}})


def test_module_names_are_built_once_and_cached(tmp_path, monkeypatch):
    cfg = _cfg()
    names = layercheck.module_names(cfg, tmp_path)
    assert "layer3" in names and "layer4.1.conv2" in names
    (cached,) = tmp_path.glob("modules-*.json")
    assert json.loads(cached.read_text()) == names
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
