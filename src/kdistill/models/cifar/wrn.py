"""Wide residual networks for CIFAR (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: three stages of (d-4)/6 pre-activation blocks, widths 16k/32k/64k. Parameter and buffer
names match RepDistiller's ``models/wrn.py`` (``block1.layer.0.bn1``, ``convShortcut``, ...) so its
checkpoints load unchanged; feature stages are the submodules ``block1``..``block3``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .init import reference_init


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut.

    When width changes, the shortcut is a 1x1 ``convShortcut`` applied to the *activated* input
    (BN-ReLU is shared by both paths); otherwise it is the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(  # reference's name, kept for checkpoints
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``num_layers`` blocks in ``self.layer``; the first one strides and widens."""

    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor: 3x3 stem (16), three stages, final BN-ReLU, global average pool, fc."""

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100, in_channels: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the reference's avg_pool2d(8) at 32x32 input
        self.fc = nn.Linear(widths[3], num_classes)
        reference_init(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def wrn_16_1(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> WideResNet:
    """WRN-16-1: 2 blocks per stage, widths 16/32/64."""
    return WideResNet(16, 1, num_classes, in_channels, **kwargs)


def wrn_16_2(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> WideResNet:
    """WRN-16-2: 2 blocks per stage, widths 32/64/128."""
    return WideResNet(16, 2, num_classes, in_channels, **kwargs)


def wrn_40_1(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> WideResNet:
    """WRN-40-1: 6 blocks per stage, widths 16/32/64."""
    return WideResNet(40, 1, num_classes, in_channels, **kwargs)


def wrn_40_2(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> WideResNet:
    """WRN-40-2: 6 blocks per stage, widths 32/64/128."""
    return WideResNet(40, 2, num_classes, in_channels, **kwargs)
