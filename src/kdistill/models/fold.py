"""A frozen teacher made cheaper to run: each BatchNorm folded into the convolution (or linear
layer) before it, so inference does one pass over each feature map instead of two."""
from __future__ import annotations

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every conv/linear → BatchNorm pair fused into one
    layer (the same function in eval mode, up to float rounding); ``model`` itself when it has
    no BatchNorm or torch.fx cannot trace it (Python control flow on tensors)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not all(m.track_running_stats for m in norms):
        return model
    was_training = model.training
    try:
        folded = fuse(model.eval(), inplace=False)
    except Exception:  # noqa: BLE001 -- any tracing failure: run the model as it is
        return model.train(was_training)
    model.train(was_training)
    channels_last = any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                        and not p.is_contiguous() for p in model.parameters())
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    return folded.eval().requires_grad_(False)
