"""MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018), the half-width variant RepDistiller / CRD distill into (``mobile_half``).

Inverted residual blocks (1x1 expand, 3x3 depthwise, linear 1x1 project) in seven groups. As in the
reference, the stem strides by 2 even at 32x32 and the last 1x1 conv keeps 1280 channels at width
0.5. Parameter and buffer names match RepDistiller's ``models/mobilenetv2.py`` (``conv1.0.weight``,
``blocks.3.1.conv.4.running_var``, ``classifier.0.weight``); feature groups are ``blocks.0``..``blocks.6``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .init import reference_init

#: (expansion t, channels c, repeats n, first stride s) per group; t=None means "the net's expansion".
SETTINGS: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
    (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1),
]


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """conv(kernel, no bias)-BN-ReLU, the stem and the final 1x1 conv."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear), all in ``self.conv``;
    the input is added back when shape allows (stride 1, same width)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """Stem ``conv1`` (3x3, stride 2), seven groups ``blocks``, ``conv2`` (1x1 to 1280), global
    average pool, ``classifier`` (a Sequential holding one Linear, as the reference)."""

    def __init__(self, expand_ratio: int = 6, width_mult: float = 0.5, num_classes: int = 100,
                 in_channels: int = 3):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            out = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(channels, out, s if i == 0 else 1, expand_ratio if t is None else t))
                channels = out
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(channels, self.last_channel, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the reference's AvgPool2d(2, ceil_mode) at 32x32 input
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        reference_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for group in self.blocks:
            out = group(out)
        out = self.conv2(out)
        return self.classifier(torch.flatten(self.avgpool(out), 1))


def mobilenetv2(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 at width 0.5, expansion 6 (RepDistiller's ``mobile_half``); kwargs
    ``width_mult`` and ``expand_ratio`` give the other variants (``mobile_full``: width_mult=1.0)."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)
