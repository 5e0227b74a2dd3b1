"""ShuffleNet (v1) for CIFAR (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", CVPR 2018), the ``ShuffleV1`` student of RepDistiller / CRD.

Bottleneck units with grouped 1x1 convs and a channel shuffle; groups g=3, stage widths
240/480/960 with 4/8/4 units. As in the reference, the stem is a 1x1 conv to 24 channels with no
stride, and each stage's first unit strides by 2 and concatenates an average-pooled shortcut.
Parameter and buffer names match RepDistiller's ``models/ShuffleNetv1.py``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

STEM_WIDTH = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*k, H, W] -> view [N, g, k, H, W] -> swap g and k -> [N, k*g, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelShuffle(nn.Module):
    """Channel shuffle as a (parameter-free) module, so it shows in prints and can be hooked."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class Bottleneck(nn.Module):
    """Grouped 1x1-BN-ReLU, shuffle, 3x3 depthwise-BN, grouped 1x1-BN; add the input (stride 1) or
    concatenate a 3x3/2 average pool of it (stride 2), then ReLU.

    The unit reading the 24-channel stem uses an ungrouped first 1x1 conv (24 is too few channels
    to split; the reference tests ``in_planes == 24``).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        first_groups = 1 if in_planes == STEM_WIDTH else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNet(nn.Module):
    """1x1 stem ``conv1``/``bn1`` (24 ch), stages ``layer1``..``layer3``, global average pool, ``linear``."""

    def __init__(self, out_planes: Sequence[int] = (240, 480, 960), num_blocks: Sequence[int] = (4, 8, 4),
                 groups: int = 3, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.layer1 = _make_stage(STEM_WIDTH, out_planes[0], num_blocks[0], groups)
        self.layer2 = _make_stage(out_planes[0], out_planes[1], num_blocks[1], groups)
        self.layer3 = _make_stage(out_planes[1], out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the reference's avg_pool2d(4) at 32x32 input
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def _make_stage(in_planes: int, out_planes: int, blocks: int, groups: int) -> nn.Sequential:
    """The first unit strides and outputs ``out_planes - in_planes`` channels, the pooled input
    filling the rest; later units keep ``out_planes``."""
    layers = [Bottleneck(in_planes, out_planes - in_planes, stride=2, groups=groups)]
    layers += [Bottleneck(out_planes, out_planes, stride=1, groups=groups) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def shufflev1(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v1, g=3, widths 240/480/960, 4/8/4 units (RepDistiller's ``ShuffleV1``)."""
    return ShuffleNet(num_classes=num_classes, in_channels=in_channels, **kwargs)
