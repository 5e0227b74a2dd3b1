"""The CIFAR model zoo of the distillation literature (RepDistiller / CRD, Tian et al. 2020;
mdistiller): ResNets, WRNs, VGGs, MobileNetV2 and ShuffleNets for 32x32 inputs.

Every factory is ``factory(num_classes=100, in_channels=3, **kwargs) -> nn.Module`` and returns
logits only; parameter and buffer names match RepDistiller's, so its checkpoints load with
``load_state_dict`` unchanged. Importing this package registers every model with
``kdistill.models.create_model``; ``ZOO`` maps the same names to the factories.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import register_model
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .resnet import (CifarResNet, resnet8, resnet8x4, resnet14, resnet20, resnet32, resnet32x4, resnet44,
                     resnet56, resnet110)
from .shufflenetv1 import ShuffleNet, shufflev1
from .shufflenetv2 import ShuffleNetV2, shufflev2
from .vgg import VGG, vgg8, vgg11, vgg13, vgg16, vgg19
from .wrn import WideResNet, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

_RESNET = "CIFAR ResNet (He et al. 2016), 3 stages of basic blocks"
_WRN = "CIFAR Wide ResNet (Zagoruyko & Komodakis 2016), 3 stages of pre-activation blocks"
_VGG = "CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015), 5 conv blocks, global pool, one linear"

_ENTRIES: list[tuple[str, Callable[..., nn.Module], str]] = [
    ("resnet8", resnet8, f"{_RESNET}, 1 per stage, width 16/32/64"),
    ("resnet14", resnet14, f"{_RESNET}, 2 per stage, width 16/32/64"),
    ("resnet20", resnet20, f"{_RESNET}, 3 per stage, width 16/32/64"),
    ("resnet32", resnet32, f"{_RESNET}, 5 per stage, width 16/32/64"),
    ("resnet44", resnet44, f"{_RESNET}, 7 per stage, width 16/32/64"),
    ("resnet56", resnet56, f"{_RESNET}, 9 per stage, width 16/32/64"),
    ("resnet110", resnet110, f"{_RESNET}, 18 per stage, width 16/32/64"),
    ("resnet8x4", resnet8x4, f"{_RESNET}, 1 per stage, width 64/128/256 (4x wide)"),
    ("resnet32x4", resnet32x4, f"{_RESNET}, 5 per stage, width 64/128/256 (4x wide)"),
    ("wrn_16_1", wrn_16_1, f"{_WRN}, depth 16, width 16/32/64"),
    ("wrn_16_2", wrn_16_2, f"{_WRN}, depth 16, width 32/64/128"),
    ("wrn_40_1", wrn_40_1, f"{_WRN}, depth 40, width 16/32/64"),
    ("wrn_40_2", wrn_40_2, f"{_WRN}, depth 40, width 32/64/128"),
    ("vgg8", vgg8, f"{_VGG}, 1-1-1-1-1 convs (8 layers)"),
    ("vgg11", vgg11, f"{_VGG}, 1-1-2-2-2 convs (11 layers)"),
    ("vgg13", vgg13, f"{_VGG}, 2-2-2-2-2 convs (13 layers)"),
    ("vgg16", vgg16, f"{_VGG}, 2-2-3-3-3 convs (16 layers)"),
    ("vgg19", vgg19, f"{_VGG}, 2-2-4-4-4 convs (19 layers)"),
    ("MobileNetV2", mobilenetv2, "CIFAR MobileNetV2 (Sandler et al. 2018), width 0.5, expansion 6 "
                                 "(RepDistiller's mobile_half)"),
    ("ShuffleV1", shufflev1, "CIFAR ShuffleNet v1 (Zhang et al. 2018), g=3, width 240/480/960, 4/8/4 units"),
    ("ShuffleV2", shufflev2, "CIFAR ShuffleNetV2 (Ma et al. 2018), net size 1.0, width 116/232/464, "
                             "3/7/3 units"),
]

#: Every zoo model by its registered name.
ZOO: dict[str, Callable[..., nn.Module]] = {name: factory for name, factory, _ in _ENTRIES}

for _name, _factory, _description in _ENTRIES:
    register_model(_name, _description)(_factory)

__all__ = ["ZOO", "CifarResNet", "MobileNetV2", "ShuffleNet", "ShuffleNetV2", "VGG", "WideResNet"]
