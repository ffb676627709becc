"""A small network of one's own, for config/examples/python_entry.yaml."""

from torch import nn


class SmallNet(nn.Module):
    # Optional: how images enter this model (used where the config leaves them null).
    polypsi_preprocessing = {"input_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x):
        return self.head(self.stage2(self.stage1(self.stem(x))))


def build(width: int = 32, classes: int = 10) -> nn.Module:
    return SmallNet(width, classes)
