"""Predictions and evaluation of a trained model on in-memory images: logits in order,
per-view logit tables for the teacher, and accuracy, loss and confusion counts (each rank its
share under torchrun)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .data.augment import Augment
from .data.batches import Images
from .device import autocast


def eval_batch_size(device: torch.device) -> int:
    """The batch size for forward passes alone when none is given: 64 on a CPU, where larger
    batches measured slower per image (activations fall out of cache: resnet32x4 in fp32 ran
    1.7x faster per image at 64 than at 256, ``benchmarks/results/eval-batch``), 256 on a GPU."""
    return 64 if device.type == "cpu" else 256


@torch.inference_mode()
def predict_logits(model: nn.Module, data: Images, batch_size: int | None = None,
                   precision: str = "fp32") -> torch.Tensor:
    """Logits (float32) of ``model`` in eval mode for every example of ``data``, in order;
    ``precision`` as in :func:`~kdistill.engine.fit` (the teacher's forward pass there);
    ``batch_size`` defaults to :func:`eval_batch_size` for the data's device."""
    batch_size = batch_size or eval_batch_size(data.labels.device)
    was_training = model.training
    model.eval()
    with autocast(data.labels.device, precision):  # data: any object with Images' interface
        out = torch.cat([model(data.inputs(slice(i, i + batch_size))).float()
                         for i in range(0, len(data), batch_size)])
    model.train(was_training)
    return out


def predict_logits_shared(model: nn.Module, data: Images, batch_size: int | None = None,
                          precision: str = "fp32") -> torch.Tensor:
    """:func:`predict_logits` for all of ``data``, each rank computing its share (torchrun)."""
    if distributed.world_size() == 1:
        return predict_logits(model, data, batch_size, precision)
    part = data.rank_slice()
    mine = predict_logits(model, data.subset(part), batch_size, precision)
    full = torch.zeros(len(data), *mine.shape[1:], dtype=mine.dtype, device=mine.device)
    full[part] = mine
    return distributed.all_reduce_sum(full)  # the other shares are zeros: the sum is exact


def tabulate_views(augment: Augment, epochs: int) -> bool:
    """Whether a table of teacher logits per shifted view (:func:`predict_views`) costs no more
    teacher passes than running the teacher live on each of ``epochs`` epochs."""
    return bool(augment.views) and augment.views <= epochs


def predict_views(model: nn.Module, data: Images, augment: Augment,
                  batch_size: int | None = None, precision: str = "fp32") -> torch.Tensor:
    """Logits [V, N, C] on each of the ``augment.views`` shifted (and flipped) views of every
    example: the table :class:`~kdistill.engine.Distiller` looks up per view, each rank
    computing its share (torchrun). Written view by view into one tensor, so the table is
    never held twice (the CIFAR protocol's 162 views: 3.24 GB)."""
    views = augment.views
    if not views:
        raise ValueError(f"{augment} has no views: predict_views needs shifts or flips alone")
    table: torch.Tensor | None = None
    for v in range(views):
        logits = predict_logits_shared(model, Images(augment.view(data.images, v), data.labels,
                                                     data.mean, data.std), batch_size, precision)
        if table is None:
            table = logits.new_empty((views, *logits.shape))
        table[v] = logits
    assert table is not None
    return table


def evaluate(model: nn.Module, data: Images, batch_size: int | None = None,
             num_classes: int | None = None) -> dict:
    """Accuracy (fraction), mean cross-entropy, per-class accuracy and confusion matrix.

    Under torchrun each rank evaluates its slice of ``data`` and the counts are summed.
    """
    mine = data if distributed.world_size() == 1 else data.subset(data.rank_slice())
    logits = predict_logits(model, mine, batch_size)
    k = num_classes or logits.shape[1]
    confusion = torch.bincount(mine.labels * k + logits.argmax(1), minlength=k * k).reshape(k, k)
    loss_sum = F.cross_entropy(logits, mine.labels, reduction="sum").reshape(1).double()
    confusion = distributed.all_reduce_sum(confusion)
    loss_sum = distributed.all_reduce_sum(loss_sum)
    support = confusion.sum(1).clamp_min(1)
    return {
        "accuracy": confusion.diag().sum().item() / len(data),
        "loss": loss_sum.item() / len(data),
        "per_class_accuracy": (confusion.diag() / support).tolist(),
        "confusion": confusion.tolist(),
    }
