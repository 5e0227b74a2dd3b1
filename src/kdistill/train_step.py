"""One optimisation step of :func:`kdistill.engine.fit`: a batch's inputs (augmented), its
micro-batches (DDP synchronised once), autocast and the gradient scaler, then the update.

A :class:`TrainStep` is a plain callable of tensors, so
:class:`~kdistill.cuda_graph.GraphedStep` can record it as a CUDA graph and replay it.
"""
from __future__ import annotations

import contextlib
import functools
import operator
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .data.augment import Augment
from .data.batches import Images, normalize, rows
from .device import autocast

if TYPE_CHECKING:
    from .engine import Distiller


def micro_slices(n: int, parts: int) -> list[slice]:
    """``n`` examples cut into ``parts`` consecutive slices (fewer when n < parts), sized as
    ``Tensor.tensor_split`` sizes them: the first n % parts one longer."""
    size, extra = divmod(n, parts)
    bounds = [0]
    for k in range(min(parts, n)):
        bounds.append(bounds[-1] + size + (k < extra))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _average_gradients(module: nn.Module, world: int) -> None:
    """Average ``module``'s gradients over the processes, as DDP does for the student."""
    for p in module.parameters():
        if p.grad is not None:
            p.grad.copy_(distributed.all_reduce_sum(p.grad) / world)


class TrainStep:
    """``step(index[, shifts]) -> [loss, *terms]`` (detached): one optimisation step of
    ``distiller`` on the training examples ``index``.

    Inputs: ``shifts`` (offsets drawn for the epoch by :meth:`Augment.draw_shifts`) are applied
    without random draws; otherwise a truthy ``augment`` draws per image from ``generator``.
    ``micro_batches`` runs the batch as that many consecutive forward/backward passes whose
    gradients, each weighted by its share of the batch, add up before the one optimizer step:
    the same step in less memory (batch norm then sees each micro-batch's statistics).

    Under torchrun the student runs in DistributedDataParallel, which averages the gradients
    once, after the last micro-batch, so a step sees the same global batch as one process
    would: two processes of one thread each compute bitwise what one process of one thread
    computes with ``micro_batches=2``. A feature objective's adapter is averaged here.
    """

    def __init__(self, distiller: "Distiller", train: Images, optimizer: torch.optim.Optimizer,
                 generator: torch.Generator, *, augment: Augment = Augment(),
                 precision: str = "fp32", micro_batches: int = 1, compile: bool = False) -> None:
        self.distiller, self.train, self.optimizer = distiller, train, optimizer
        self.generator, self.augment, self.precision = generator, augment, precision
        self.micro_batches, self.compile = micro_batches, compile
        self.world = distributed.world_size()
        self.device = train.labels.device  # data may be any object with Images' interface
        student = distiller.student
        self.student = DistributedDataParallel(student) if self.world > 1 else student
        distiller.student_runner = torch.compile(self.student) if compile else self.student
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.term_names: list[str] = []  # the loss terms' names, in the order of the output

    def graphable(self, optimizer: str) -> bool:
        """Whether a CUDA graph can record this step: on CUDA, one process, no ``compile``, no
        fp16 gradient scaling, Adam(W) (``optimizer``), no feature objective, and no random
        draws inside the step (shift augmentation at most, its offsets drawn per epoch)."""
        return (self.device.type == "cuda" and self.world == 1 and not self.compile
                and self.precision != "fp16" and optimizer in ("adam", "adamw")
                and self.distiller.features is None
                and (self.augment.views is not None or not self.augment))

    def inputs(self, index: torch.Tensor, shifts: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The normalised batch ``index`` (augmented) and each image's view number (shifts and
        flips alone), or None."""
        train, augment = self.train, self.augment
        if shifts is not None:
            pixels, view = augment.apply_shifts(rows(train.images, index), shifts)
        elif augment:
            pixels, view = augment(rows(train.images, index), self.generator)
        else:
            return train.inputs(index), None
        return normalize(pixels, train.mean, train.std), view

    def __call__(self, index: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        x, view = self.inputs(index, shifts)
        return self.update(x, rows(self.train.labels, index), index, view)

    def update(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
               view: torch.Tensor | None) -> torch.Tensor:
        """The step on a batch already prepared by :meth:`inputs` (shared by two models trained
        in one pass); its [loss, *terms]."""
        self.optimizer.zero_grad(set_to_none=True)
        logged: torch.Tensor | None = None
        parts = micro_slices(len(index), self.micro_batches)
        for k, part in enumerate(parts):
            values = self._backward(x[part], y[part], index[part],
                                    None if view is None else view[part],
                                    weight=(part.stop - part.start) / len(index),
                                    last=k == len(parts) - 1)
            logged = values if logged is None else logged + values
        if self.world > 1 and self.distiller.features is not None:
            _average_gradients(self.distiller.features, self.world)  # DDP averages the student's
        self.scaler.step(self.optimizer)
        self.scaler.update()
        assert logged is not None  # a batch holds at least one example
        return logged

    def _backward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                  view: torch.Tensor | None, weight: float, last: bool) -> torch.Tensor:
        """Forward and backward on one micro-batch, its loss weighted by its share ``weight``
        of the batch so the gradients add up to the batch's (all-reduced after the ``last``);
        return its weighted [loss, *terms]."""
        sync = contextlib.nullcontext() if self.world == 1 or last else self.student.no_sync()
        with sync:
            with autocast(self.device, self.precision):
                _, terms = self.distiller.forward_train(x, y, index, view)
                loss = functools.reduce(operator.add, terms.values())
            self.scaler.scale(loss if weight == 1 else loss * weight).backward()
        values = torch.stack([t.detach().float() for t in (loss, *terms.values())])
        self.term_names[:] = terms
        return values if weight == 1 else values * weight
