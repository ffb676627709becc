"""`model.source: python`: your own module from a file or a package, with kwargs, a checkpoint and preprocessing."""

import sys

import pytest
import torch

from polypsi.config import load_config
from polypsi.errors import ModelLoadError
from polypsi.models import build_model, extractor, load_model

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    polypsi_preprocessing = {"input_size": 40, "mean": [0.5, 0.5, 0.5]}

    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        return self.block(self.conv(x))


def build(width=4):
    return Net(width)


def not_a_module():
    return 3
'''


@pytest.fixture
def net_file(tmp_path):
    p = tmp_path / "mynet.py"
    p.write_text(NET)
    return p


def _cfg(entry, **model):
    return load_config({"model": {"source": "python", "entry": entry, "layers": ["block"], "weights": None,
                                  **model}, "crops": {"size": {"block": 16}}})


def test_entry_from_a_file_with_kwargs_and_declared_preprocessing(net_file):
    cfg = _cfg(f"{net_file}:build", kwargs={"width": 6})
    model = load_model(cfg)
    fx, pre = extractor(model, cfg)
    assert pre.input_size == 40 and pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.229, 0.224, 0.225)
    assert fx(torch.rand(2, 3, 40, 40))["block"].shape == (2, 6, 20, 20)
    # the config wins over what the module declares
    assert extractor(model, _cfg(f"{net_file}:build", input_size=32))[1].input_size == 32


def test_entry_from_a_package_and_a_checkpoint(net_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(net_file.parent))
    sys.modules.pop("mynet", None)
    a = build_model(_cfg("mynet:build", init_seed=1))
    torch.save({"state_dict": a.state_dict()}, tmp_path / "net.pt")
    b = build_model(_cfg("mynet:build", init_seed=2, checkpoint=str(tmp_path / "net.pt")))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ModelLoadError, match="do not fit"):
        build_model(_cfg("mynet:build", kwargs={"width": 5}, checkpoint=str(tmp_path / "net.pt")))


@pytest.mark.parametrize("entry,message", [
    ("nofile.py:build", "does not exist"),
    ("{f}:missing", "has no 'missing'"),
    ("{f}:not_a_module", "returned int, not a torch.nn.Module"),
    ("no_such_package_x.models:build", "no module 'no_such_package_x'"),
    ("{f}", "must be 'package.module:function'"),
])
def test_entry_errors_name_the_entry_and_what_is_wrong(net_file, entry, message):
    with pytest.raises(ModelLoadError, match=message):
        build_model(_cfg(entry.format(f=net_file)))


def test_bad_kwargs_and_missing_entry(net_file):
    with pytest.raises(ModelLoadError, match="could not be called with model.kwargs"):
        build_model(_cfg(f"{net_file}:build", kwargs={"depth": 3}))
    with pytest.raises(Exception, match="needs model.entry"):
        load_config({"model": {"source": "python"}})
