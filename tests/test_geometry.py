"""Layer geometry measured from the model: stride, centre offset, effective receptive field."""

import pytest
import torch
from torch import nn

from polypsi.config import load_config
from polypsi.errors import StageError
from polypsi.geometry import measure_geometry
from polypsi.models import build_model


class Stack(nn.Module):
    """Two strided convs with constant positive weights: the true centre of unit i is known."""

    def __init__(self, pad: int):
        super().__init__()
        self.layer1 = nn.Conv2d(3, 4, 3, stride=2, padding=pad)
        self.layer2 = nn.Conv2d(4, 4, 3, stride=2, padding=pad)
        for m in (self.layer1, self.layer2):
            nn.init.constant_(m.weight, 0.1)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.layer2(self.layer1(x))


@pytest.mark.parametrize("pad,offset2", [(1, 0.0), (0, 3.0)])
def test_measured_geometry_matches_receptive_field_arithmetic(pad, offset2):
    # padding 1: centre of unit i is 4i; padding 0: each 3x3 conv shifts the centre by one input step -> 3 + 4i
    cfg = load_config({"model": {"layers": ["layer1", "layer2"], "input_size": 64},
                       "crops": {"size": {"layer1": 8, "layer2": 16}}})
    g = measure_geometry(Stack(pad), cfg, probe_size=96)["layers"]
    assert g["layer2"]["stride"] == 4.0 and g["layer1"]["stride"] == 2.0
    assert g["layer2"]["offset"] == offset2
    assert g["layer1"]["offset"] == (0.0 if pad else 1.0)
    assert g["layer2"]["crop"] == 16 and g["layer2"]["erf_side"] >= 7


def test_resnet_geometry_is_the_same_for_any_weights():
    torchvision = pytest.importorskip("torchvision")
    cfg = load_config({"model": {"weights": None, "input_size": 224}})
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(measure_geometry(torchvision.models.resnet18().eval(), cfg, probe_size=256)["layers"])
    for g in runs:
        assert g["layer3"]["stride"] == 16 and g["layer4"]["stride"] == 32
        # torchvision ResNets put the stride on the 3x3 conv with padding 1: centre = i * stride, not (i + .5) * stride;
        # the architecture probe gives it exactly, and the random weights' own gradient centre agrees
        for layer in ("layer3", "layer4"):
            assert g[layer]["offset"] == 0.0 and g[layer]["offset_method"] == "architecture"
            assert abs(g[layer]["gradient_offset"]) <= 1.0
        # the effective receptive field grows with depth
        assert g["layer3"]["erf_side"] < g["layer4"]["erf_side"]
        assert g["layer3"]["reliable"] and g["layer4"]["reliable"] and g["layer4"]["warning"] is None
    for layer in ("layer3", "layer4"):
        assert abs(runs[0][layer]["gradient_offset"] - runs[1][layer]["gradient_offset"]) <= 1.0
        assert abs(runs[0][layer]["erf_side"] - runs[1][layer]["erf_side"]) <= 0.1 * runs[0][layer]["erf_side"]


@pytest.fixture
def one_thread():
    """The world model's many small ops run faster on one thread when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_planted_world_offsets_agree_across_world_seeds(one_thread):
    """One architecture, weights from different world seeds: the centre of the gradient mass moves by several px
    from one probe image to the next (max-pooling, a max over shape detectors), yet the measured offset may not."""
    runs = []
    for seed in (0, 2):
        cfg = load_config({"world": {"seed": seed}, "data": {"source": "world"},
                           "model": {"source": "world", "layers": ["layer3", "layer4"], "input_size": 128},
                           "crops": {"size": {"layer3": 56, "layer4": 80}}})
        runs.append(measure_geometry(build_model(cfg), cfg)["layers"])
    for layer, stride in (("layer3", 8), ("layer4", 16)):
        offsets = [g[layer]["offset"] for g in runs]
        assert max(offsets) - min(offsets) <= 1.0
        # the cell of a stride-s unit is s px wide: its centre lies within it
        assert all(0 <= o < stride and g[layer]["offset_method"] == "gradient" for o, g in zip(offsets, runs))
        assert all(g[layer]["offset_reliable"] and g[layer]["gradient_offset_se"] <= 0.25 for g in runs)
    for g in runs:
        assert g["layer3"]["erf"] < g["layer4"]["erf"] and g["layer4"]["erf_reliable"]


class Asymmetric(nn.Module):
    """Three 5x5 convs (padding 2) whose weight sits in one corner: the architecture centres unit i on 4i, the
    weights move the gradient up and left by 2 units of each conv's input: 2 + 4 + 8 = 14 px."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Conv2d(3, 3, 5, stride=2, padding=2, bias=False)
        self.layer2 = nn.Conv2d(3, 3, 5, stride=2, padding=2, bias=False)
        self.layer3 = nn.Conv2d(3, 3, 5, stride=1, padding=2, bias=False)
        for m in (self.layer1, self.layer2, self.layer3):
            nn.init.zeros_(m.weight)
            with torch.no_grad():
                m.weight[:, :, 0, 0] = 1.0

    def forward(self, x):
        return self.layer3(self.layer2(self.layer1(x)))


def test_unreliable_geometry_is_flagged_and_logged(caplog):
    cfg = load_config({"model": {"layers": ["layer2", "layer3"], "input_size": 64},
                       "crops": {"size": {"layer2": 16, "layer3": 16}}})
    with caplog.at_level("WARNING", logger="polypsi.geometry"):
        g = measure_geometry(Asymmetric(), cfg, probe_size=96)["layers"]["layer3"]
    assert g["offset_method"] == "architecture" and g["offset"] == 0.0
    assert g["gradient_offset"] == pytest.approx(-14.0, abs=0.5)  # gradient and architecture disagree
    assert not g["reliable"] and not g["offset_reliable"] and "receptive-field centre" in g["warning"]
    assert "layer layer3 cannot be trusted" in caplog.text


class NoGrowth(nn.Module):
    """layer2 adds nothing to layer1's receptive field: its ERF cannot grow."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.layer2 = nn.Identity()

    def forward(self, x):
        return self.layer2(self.layer1(x))


def test_an_erf_that_does_not_grow_with_depth_is_flagged_and_refused_by_the_erf_rule():
    fixed = load_config({"model": {"layers": ["layer1", "layer2"], "input_size": 64},
                         "crops": {"size": {"layer1": 8, "layer2": 8}}})
    g = measure_geometry(NoGrowth(), fixed, probe_size=64)["layers"]
    for layer in ("layer1", "layer2"):
        assert g[layer]["offset_reliable"] and not g[layer]["erf_reliable"] and not g[layer]["reliable"]
        assert "does not grow with depth" in g[layer]["warning"]
    erf = load_config({"model": {"layers": ["layer1", "layer2"], "input_size": 64},
                       "crops": {"size_rule": "erf", "size": {}}})
    with pytest.raises(StageError, match=r"layer 'layer1'.*crops: \{size_rule: fixed, size: \{layer1:"):
        measure_geometry(NoGrowth(), erf, probe_size=64)


def test_half_stride_option_and_erf_rule():
    cfg = load_config({"model": {"layers": ["layer1", "layer2"], "input_size": 64},
                       "crops": {"size_rule": "erf", "center": "half_stride", "size": {}}})
    g = measure_geometry(Stack(1), cfg, probe_size=96)["layers"]["layer2"]
    assert g["offset"] == 2.0 and g["crop"] == g["erf_side"] and 5 <= g["crop"] <= 15
