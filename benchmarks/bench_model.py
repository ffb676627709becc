"""ResNet-50 (random weights) whose analysed layers are the first C channels of layer3 and layer4.

The pipeline benchmark's model (`model.source: python`, benchmarks/bench_pipeline.py): the whole
network runs on every image, as in the paper's setup, but `layer3` and `layer4` here are taps that
pass on only the first `channels` channels of torchvision's layer3 / layer4, so that a small run
analyses C channels per layer. channels=None keeps all (1024 and 2048).
"""

import torch
from torch import nn
from torchvision.models import resnet50


class FirstChannels(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x if self.channels is None else x[:, : self.channels]


class TappedResNet50(nn.Module):
    polypsi_preprocessing = {"input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

    def __init__(self, channels=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = resnet50(weights=None)
        self.layer3 = FirstChannels(channels)
        self.layer4 = FirstChannels(channels)

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer3(n.layer2(n.layer1(x)))
        self.layer3(x)
        x = n.layer4(x)
        self.layer4(x)
        return n.fc(torch.flatten(n.avgpool(x), 1))


def build(channels=None, seed=0):
    return TappedResNet50(channels, seed)
