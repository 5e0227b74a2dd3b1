"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, sec. 4.2).

Three stages of basic blocks at 32x32, 16x16 and 8x8, the teachers and students of most
distillation papers (RepDistiller / CRD, Tian et al. 2020). Parameter and buffer names match
RepDistiller's ``models/resnet.py`` so its checkpoints load unchanged; feature stages are the
submodules ``layer1``..``layer3`` (take them with forward hooks).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, add the shortcut, then ReLU.

    ``downsample`` (1x1 conv + BN) projects the shortcut when stride or width changes.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2): a 3x3 stem, three stages of n basic blocks (strides 1, 2, 2), global
    average pooling and a linear classifier.

    ``widths`` is (stem, stage1, stage2, stage3): (16, 16, 32, 64) for the paper's nets,
    (32, 64, 128, 256) for the 4x-wide ``resnet8x4``/``resnet32x4`` of CRD.
    """

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, stage1, stage2, stage3), got {tuple(widths)}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = _make_stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = _make_stage(widths[2], widths[3], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the reference's AvgPool2d(8) at 32x32 input
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal (fan out) convolutions, BatchNorm at identity, as the reference."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` basic blocks; the first one strides and, if needed, projects its shortcut."""
    downsample = None
    if stride != 1 or in_planes != planes * BasicBlock.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(in_planes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * BasicBlock.expansion))
    layers = [BasicBlock(in_planes, planes, stride, downsample)]
    layers += [BasicBlock(planes * BasicBlock.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def resnet8(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-8, widths 16/32/64."""
    return CifarResNet(8, _BASE, num_classes, in_channels, **kwargs)


def resnet14(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-14, widths 16/32/64."""
    return CifarResNet(14, _BASE, num_classes, in_channels, **kwargs)


def resnet20(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-20, widths 16/32/64."""
    return CifarResNet(20, _BASE, num_classes, in_channels, **kwargs)


def resnet32(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-32, widths 16/32/64."""
    return CifarResNet(32, _BASE, num_classes, in_channels, **kwargs)


def resnet44(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-44, widths 16/32/64."""
    return CifarResNet(44, _BASE, num_classes, in_channels, **kwargs)


def resnet56(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-56, widths 16/32/64."""
    return CifarResNet(56, _BASE, num_classes, in_channels, **kwargs)


def resnet110(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-110, widths 16/32/64."""
    return CifarResNet(110, _BASE, num_classes, in_channels, **kwargs)


def resnet8x4(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-8 at 4x width (stem 32, stages 64/128/256), CRD's usual student."""
    return CifarResNet(8, _X4, num_classes, in_channels, **kwargs)


def resnet32x4(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-32 at 4x width (stem 32, stages 64/128/256), CRD's strongest teacher."""
    return CifarResNet(32, _X4, num_classes, in_channels, **kwargs)
