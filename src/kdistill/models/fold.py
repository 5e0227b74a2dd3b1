"""A frozen teacher made cheaper to run: each BatchNorm folded into the convolution (or linear
layer) before it, so inference does one pass over each feature map instead of two, where that
measured faster (:func:`inference_teacher`)."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.nn.utils.fusion import fuse_conv_bn_eval


def inference_teacher(model: nn.Module) -> nn.Module:
    """The frozen teacher as kdistill runs it for logits: BatchNorm folded when the model is in
    channels-last memory format (with bf16, the fast CPU setting, it measured faster), as it is
    in NCHW, where the folded model measured slower on CPU; the numbers are in
    ``benchmarks/results/speedups-cpu``."""
    return fold_batchnorm(model) if is_channels_last(model) else model


def is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s 4-d weights are held in channels-last memory format."""
    return any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
               and not p.is_contiguous() for p in model.parameters())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode, frozen, with its conv → BatchNorm pairs fused into one
    layer (the same function in eval mode, up to float rounding); ``model`` itself when it has
    nothing to fold. The pairs are found by tracing with torch.fx; a model it cannot trace
    (control flow on shapes or values) has the pairs inside its ``nn.Sequential`` blocks folded."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not all(m.track_running_stats for m in norms):
        return model
    was_training = model.training
    try:
        folded: nn.Module | None = fuse(model.eval(), inplace=False)
    except Exception:  # noqa: BLE001 -- any tracing failure: fold what Sequential order shows
        folded = _fold_sequential(model)
    model.train(was_training)
    if folded is None:
        return model
    if is_channels_last(model):
        folded = folded.to(memory_format=torch.channels_last)
    return folded.eval().requires_grad_(False)


def _fold_sequential(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` with each Conv2d directly followed by a BatchNorm2d in the same
    ``nn.Sequential`` fused (the BatchNorm becomes an Identity); None if there is none."""
    folded = copy.deepcopy(model).eval()
    changed = False
    for block in folded.modules():
        if not isinstance(block, nn.Sequential):
            continue
        names = list(block._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = block._modules[first], block._modules[second]
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
                    and norm.track_running_stats):
                block._modules[first] = fuse_conv_bn_eval(conv, norm)
                block._modules[second] = nn.Identity()
                changed = True
    return folded if changed else None
