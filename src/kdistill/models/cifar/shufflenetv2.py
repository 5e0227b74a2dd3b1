"""ShuffleNetV2 for CIFAR (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018), the ``ShuffleV2`` student of RepDistiller / CRD (net size 1.0).

Each stage is a down-sampling unit (two branches at stride 2, concatenated) followed by basic units
that split the channels in half, transform one half and shuffle. As in the reference, the stem is a
1x1 conv to 24 channels with no stride and no max pool. Parameter and buffer names match
RepDistiller's ``models/ShuffleNetv2.py``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .shufflenetv1 import ChannelShuffle

STEM_WIDTH = 24

#: net size -> (stage widths + last conv width, units per stage), the reference's table.
CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class BasicBlock(nn.Module):
    """Split channels in half; the second half goes 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU;
    concatenate with the untouched first half and shuffle (2 groups)."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split_ratio = split_ratio
        ch = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(ch, ch, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, kernel_size=3, stride=1, padding=1, groups=ch, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(ch)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.shape[1] * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class DownBlock(nn.Module):
    """Stride-2 unit. Left: 3x3/2 depthwise-BN, 1x1-BN-ReLU. Right: 1x1-BN-ReLU, 3x3/2
    depthwise-BN, 1x1-BN-ReLU. Each branch gives half of ``out_channels``; concatenate, shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """1x1 stem ``conv1``/``bn1`` (24 ch), stages ``layer1``..``layer3`` (each a DownBlock then
    basic units), 1x1 ``conv2``/``bn2``, global average pool, ``linear``."""

    def __init__(self, net_size: float = 1, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if net_size not in CONFIGS:
            raise ValueError(f"net_size must be one of {sorted(CONFIGS)}, got {net_size}")
        widths, blocks = CONFIGS[net_size]
        self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.layer1 = _make_stage(STEM_WIDTH, widths[0], blocks[0])
        self.layer2 = _make_stage(widths[0], widths[1], blocks[1])
        self.layer3 = _make_stage(widths[1], widths[2], blocks[2])
        self.conv2 = nn.Conv2d(widths[2], widths[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the reference's avg_pool2d(4) at 32x32 input
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def _make_stage(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
    """A DownBlock to ``out_channels`` followed by ``blocks`` basic units."""
    return nn.Sequential(DownBlock(in_channels, out_channels), *[BasicBlock(out_channels) for _ in range(blocks)])


def shufflev2(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 at net size 1.0: widths 116/232/464, 3/7/3 units, last conv 1024
    (RepDistiller's ``ShuffleV2``); kwarg ``net_size`` picks 0.2, 0.3, 0.5, 1.5 or 2."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)
