"""Layer geometry measured from the model: stride, centre offset, effective receptive field."""

import pytest
import torch
from torch import nn

from polypsi.config import load_config
from polypsi.geometry import measure_geometry


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


def test_resnet_centres_are_index_times_stride():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    cfg = load_config({"model": {"weights": None, "input_size": 64}, "crops": {"size": {"layer3": 32, "layer4": 48}}})
    g = measure_geometry(model, cfg, probe_size=256)["layers"]
    assert g["layer3"]["stride"] == 16 and g["layer4"]["stride"] == 32
    # torchvision ResNets put the stride on the 3x3 conv with padding 1: centre = i * stride, not (i + .5) * stride
    # (random weights make the gradient slightly asymmetric: allow an eighth of the stride)
    assert abs(g["layer3"]["offset"]) <= 2 and abs(g["layer4"]["offset"]) <= 4


def test_half_stride_option_and_erf_rule():
    cfg = load_config({"model": {"layers": ["layer1", "layer2"], "input_size": 64},
                       "crops": {"size_rule": "erf", "center": "half_stride", "size": {}}})
    g = measure_geometry(Stack(1), cfg, probe_size=96)["layers"]["layer2"]
    assert g["offset"] == 2.0 and g["crop"] == g["erf_side"] and 5 <= g["crop"] <= 15
