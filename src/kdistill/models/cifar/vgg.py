"""VGG for CIFAR (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015), in the form RepDistiller / CRD use for distillation.

Five conv blocks (conv3x3-BN-ReLU, the last ReLU applied in ``forward`` so hooks on ``blockK`` see
pre-activations, as the reference), max pools between them, global average pooling and a single
512 -> classes linear layer (no big FC head). Parameter and buffer names match RepDistiller's
``models/vgg.py`` (``block0.0.weight``, ``block0.1.running_mean``, ``classifier.weight``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .init import reference_init

#: Channels of the convs in each of the five blocks (RepDistiller's cfg 'S', 'A', 'B', 'D', 'E').
CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_block(channels: Sequence[int], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """conv3x3(-BN)-ReLU per entry, without the trailing ReLU (the reference drops it too)."""
    layers: list[nn.Module] = []
    for width in channels:
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five blocks ``block0``..``block4`` with pools ``pool0``..``pool4`` between them.

    As in the reference, ``pool3`` only runs for 64x64 inputs: at 32x32 the last block sees 4x4
    maps. ``pool4`` is a global average pool, so any input size of at least 8x8 works.
    """

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 100, in_channels: int = 3,
                 batch_norm: bool = True):
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"a VGG config has 5 blocks, got {len(cfg)}")
        ins = [in_channels] + [block[-1] for block in cfg[:-1]]
        self.block0 = _make_block(cfg[0], ins[0], batch_norm)
        self.block1 = _make_block(cfg[1], ins[1], batch_norm)
        self.block2 = _make_block(cfg[2], ins[2], batch_norm)
        self.block3 = _make_block(cfg[3], ins[3], batch_norm)
        self.block4 = _make_block(cfg[4], ins[4], batch_norm)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        reference_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        x = self.pool0(torch.relu(self.block0(x)))
        x = self.pool1(torch.relu(self.block1(x)))
        x = self.pool2(torch.relu(self.block2(x)))
        x = torch.relu(self.block3(x))
        if height == 64:
            x = self.pool3(x)
        x = torch.relu(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def vgg8(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> VGG:
    """VGG-8 with BatchNorm (RepDistiller's ``vgg8_bn``): one conv per block."""
    return VGG(CONFIGS["vgg8"], num_classes, in_channels, **kwargs)


def vgg11(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> VGG:
    """VGG-11 with BatchNorm (``vgg11_bn``, config A)."""
    return VGG(CONFIGS["vgg11"], num_classes, in_channels, **kwargs)


def vgg13(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> VGG:
    """VGG-13 with BatchNorm (``vgg13_bn``, config B)."""
    return VGG(CONFIGS["vgg13"], num_classes, in_channels, **kwargs)


def vgg16(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm (``vgg16_bn``, config D)."""
    return VGG(CONFIGS["vgg16"], num_classes, in_channels, **kwargs)


def vgg19(num_classes: int = 100, in_channels: int = 3, **kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm (``vgg19_bn``, config E)."""
    return VGG(CONFIGS["vgg19"], num_classes, in_channels, **kwargs)
