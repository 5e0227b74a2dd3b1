"""The one training loop (cross-entropy and distillation alike) and evaluation.

Data never leaves memory: each step indexes a uint8 tensor with a seeded permutation and
normalises the batch with tensor ops. A frozen teacher's logits on fixed inputs are computed
once and looked up by index, which is exactly equivalent to re-running the teacher per batch.
"""
from __future__ import annotations

import contextlib
import functools
import math
import operator
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed
from .device import autocast
from .checkpoint import load_train_state, save_train_state
from .cuda_graph import GraphedStep
from .data.augment import Augment
from .data.batches import Images, batch_indices, normalize, rows
from .errors import KdistillError
from .losses import bind_loss


class Distiller(nn.Module):
    """A student trained against a frozen teacher with a named objective (mdistiller style).

    With no teacher it is plain cross-entropy training, so one loop serves the teacher, the
    distilled student and the from-scratch control. ``teacher`` may be a module (run in eval mode
    under no_grad each step) or a tensor of precomputed logits: [N, C] indexed like the training
    set, or [V, N, C] holding every view V of each image that a shift augmentation can produce.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | torch.Tensor | None = None,
                 loss: str = "kl", *, features: nn.Module | None = None, warmup_epochs: int = 0,
                 teacher_inputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 **loss_params: float) -> None:
        super().__init__()
        # the distillation terms (all but "ce") ramp up linearly over the first warmup_epochs
        # (mdistiller's DKD warm-up); a tensor, so a recorded CUDA graph sees each new value
        self.warmup_epochs = warmup_epochs
        self.warmup = torch.ones(())
        # a live teacher with its own normalisation gets the student's batch re-normalised
        self.teacher_inputs = teacher_inputs
        self.student = student
        # a feature objective (losses.FeatureDistillation): hooks on both models, maybe an adapter
        self.features = features
        self.student_runner: nn.Module = student  # what runs the student: DDP wraps it in fit()
        self.teacher_logits = teacher if isinstance(teacher, torch.Tensor) else None
        self.teacher = teacher if isinstance(teacher, nn.Module) else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
        self.loss_name = loss if teacher is not None else "ce"
        self.objective = bind_loss(loss, **loss_params) if teacher is not None else None

    def set_epoch(self, epoch: int, device: torch.device | str = "cpu") -> None:
        """Tell the objective which epoch (1-based) is about to run."""
        if self.warmup.device != torch.device(device):
            self.warmup = self.warmup.to(device)
        ramp = min(1.0, epoch / self.warmup_epochs) if self.warmup_epochs else 1.0
        self.warmup.fill_(ramp)

    def train(self, mode: bool = True) -> "Distiller":
        self.student.train(mode)
        if self.features is not None:
            self.features.train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never trains: no dropout, frozen statistics
        return self

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        return list(self.trainable().parameters())

    def trainable(self) -> nn.Module:
        """What training changes: the student, plus a feature objective's adapter if any."""
        if self.features is None:
            return self.student
        return nn.ModuleDict({"student": self.student, "features": self.features})

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                      view: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student_runner(x)
        if self.objective is None:
            return logits, {"ce": F.cross_entropy(logits, y)}
        if self.teacher_logits is not None:
            table = self.teacher_logits
            teacher_logits = rows(table, index) if view is None else table[view, index]
        else:
            with torch.no_grad():
                teacher_x = x if self.teacher_inputs is None else self.teacher_inputs(x)
                teacher_logits = self.teacher(teacher_x)
        terms = self.objective(logits, teacher_logits, y)
        if self.features is not None:
            terms.update(self.features())
        if self.warmup_epochs:
            terms = {k: v if k == "ce" else v * self.warmup for k, v in terms.items()}
        return logits, terms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def micro_slices(n: int, parts: int) -> list[slice]:
    """``n`` examples cut into ``parts`` consecutive slices (fewer when n < parts), sized as
    ``Tensor.tensor_split`` sizes them: the first n % parts one longer."""
    size, extra = divmod(n, parts)
    bounds = [0]
    for k in range(min(parts, n)):
        bounds.append(bounds[-1] + size + (k < extra))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def make_scheduler(name: str, opt: torch.optim.Optimizer, total_steps: int,
                   steps_per_epoch: int = 1, milestones: Sequence[int] = (),
                   gamma: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per optimisation step: ``constant``; ``cosine`` (decay from lr to 0 over the
    whole schedule); ``multistep`` (x ``gamma`` once each epoch in ``milestones`` has ended,
    RepDistiller's schedule: milestones 150, 180, 210 make epoch 151 the first at lr x 0.1)."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[m * steps_per_epoch for m in milestones], gamma=gamma)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def make_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float = 0.9,
                   nesterov: bool = True) -> torch.optim.Optimizer:
    # fused: one kernel per step instead of ~10 small ops per tensor (20 % faster on the student)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def _average_gradients(module: nn.Module, world: int) -> None:
    """Average ``module``'s gradients over the processes, as DDP does for the student."""
    for p in module.parameters():
        if p.grad is not None:
            p.grad.copy_(distributed.all_reduce_sum(p.grad) / world)


class NonFiniteLoss(KdistillError):
    """Training diverged (NaN or inf loss)."""


def fit(distiller: Distiller, train: Images, *, epochs: int, batch_size: int, lr: float,
        seed: int, optimizer: str = "adam", weight_decay: float = 0.0, momentum: float = 0.9,
        nesterov: bool = True, schedule: str = "constant", milestones: Sequence[int] = (),
        gamma: float = 0.1,
        augment: Augment = Augment(), evaluate_on: Images | None = None,
        on_epoch_end: Callable[[dict], None] | None = None,
        progress: bool | None = None, desc: str = "train", checkpoint: Path | None = None,
        checkpoint_every: int = 1, precision: str = "fp32", compile: bool = False,
        cuda_graphs: bool = True, micro_batches: int = 1) -> list[dict]:
    """Train ``distiller.student`` in place; return one record per epoch.

    Each record holds ``epoch``, ``train_loss`` (mean over steps), the mean of each loss term,
    ``seconds`` (training time of the epoch) and, when ``evaluate_on`` is given, ``test_accuracy``
    and ``test_loss`` measured after the epoch. Shuffling, ``augment`` (drawn per image) and
    dropout are seeded by ``seed``; a teacher module sees the same augmented batch as the student.

    With ``checkpoint``, the full training state is saved there (atomically) every
    ``checkpoint_every`` epochs and at the end; if the file exists, training continues from it
    and ends bitwise identical to a run that was never stopped.

    On CUDA, ``cuda_graphs`` records the training step as a CUDA graph and replays it
    (:class:`~kdistill.cuda_graph.GraphedStep`) where the step allows: one process, no
    ``compile``, no fp16 gradient scaling, Adam(W), no feature objective, shift augmentation
    at most. Shifts are drawn for a whole epoch at once (the same values as drawing per batch).

    ``micro_batches`` runs each batch as that many consecutive forward/backward passes whose
    gradients, each weighted by its share of the batch, add up before the one optimizer step:
    the same step in less memory (batch norm then sees each micro-batch's statistics).

    Under torchrun every rank draws the same seeded permutation and takes its share of each
    global batch of ``batch_size``; the student runs in DistributedDataParallel, which averages
    the gradients, so a step sees the same global batch as one process would. Rank 0 saves the
    checkpoints. Two processes of one thread each compute bitwise what one process of one
    thread computes with ``micro_batches=2``.
    """
    table = distiller.teacher_logits
    if table is not None and table.shape[:-2] != ((augment.views,) if augment.views else ()):
        raise ValueError(f"teacher logits of shape {tuple(table.shape)} do not match the "
                         f"augmentation {augment} (per-view logits need shifts alone)")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    opt = make_optimizer(optimizer, distiller.get_learnable_parameters(), lr, weight_decay,
                         momentum, nesterov)
    world, rank = distributed.world_size(), distributed.rank()
    device = train.labels.device  # data may be any object with Images' interface
    student = DistributedDataParallel(distiller.student) if world > 1 else distiller.student
    distiller.student_runner = torch.compile(student) if compile else student
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    steps = math.ceil(len(train) / batch_size)
    scheduler = make_scheduler(schedule, opt, epochs * steps, steps, milestones, gamma)
    show = sys.stderr.isatty() if progress is None else progress
    shifts_only = augment.views is not None  # drawn for a whole epoch at once, see below
    term_names: list[str] = []

    def train_step(index: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        """One optimisation step on the examples ``index``: [loss, *terms], detached."""
        view = None
        if shifts is not None:
            pixels, view = augment.apply_shifts(rows(train.images, index), shifts)
            x = normalize(pixels, train.mean, train.std)
        elif augment:
            pixels, view = augment(rows(train.images, index), generator)
            x = normalize(pixels, train.mean, train.std)
        else:
            x = train.inputs(index)
        y = rows(train.labels, index)
        opt.zero_grad(set_to_none=True)
        logged: torch.Tensor | None = None
        parts = micro_slices(len(index), micro_batches)
        for k, part in enumerate(parts):
            # each micro-batch weighs its share of the batch, so the gradients add up to the
            # batch's; under DDP they are all-reduced once, after the last
            weight = (part.stop - part.start) / len(index)
            last = k == len(parts) - 1
            with student.no_sync() if world > 1 and not last else contextlib.nullcontext():
                with autocast(device, precision):
                    _, terms = distiller.forward_train(
                        x[part], y[part], index[part], None if view is None else view[part])
                    loss = functools.reduce(operator.add, terms.values())
                scaler.scale(loss if weight == 1 else loss * weight).backward()
            values = torch.stack([t.detach().float() for t in (loss, *terms.values())])
            values = values if weight == 1 else values * weight
            logged = values if logged is None else logged + values
        if world > 1 and distiller.features is not None:
            _average_gradients(distiller.features, world)  # DDP averages the student's only
        scaler.step(opt)
        scaler.update()
        term_names[:] = terms
        assert logged is not None  # a batch holds at least one example
        return logged

    graphed = (cuda_graphs and device.type == "cuda" and world == 1 and not compile
               and precision != "fp16" and optimizer in ("adam", "adamw")
               and distiller.features is None and (shifts_only or not augment))
    runner = GraphedStep(train_step, opt) if graphed else train_step
    history: list[dict] = []
    done = 0
    if checkpoint is not None and checkpoint.exists():
        done, history = load_train_state(checkpoint, distiller.trainable(), opt, scheduler,
                                         generator)
    for epoch in range(done + 1, epochs + 1):
        distiller.train()
        distiller.set_epoch(epoch, device)
        start = time.perf_counter()
        losses: list[torch.Tensor] = []  # per step, left on the device until the epoch ends
        bar = tqdm(total=steps, desc=f"{desc} {epoch}/{epochs}", disable=not show, leave=False,
                   unit="step", dynamic_ncols=True)
        indexes = list(batch_indices(len(train), batch_size, generator, device=device))
        offsets = (augment.draw_shifts([len(i) for i in indexes], generator, device)
                   if shifts_only else [None] * len(indexes))
        for step, (index, shifts) in enumerate(zip(indexes, offsets), start=1):
            if world > 1:
                index = index.tensor_split(world)[rank]
                shifts = shifts.tensor_split(world, dim=1)[rank] if shifts is not None else None
            losses.append(runner(index) if shifts is None else runner(index, shifts))
            if schedule != "constant":
                scheduler.step()
            if show and (step % 100 == 0 or step == steps):
                bar.set_postfix(loss=f"{torch.stack(losses)[:, 0].mean().item():.4f}",
                                refresh=step == steps)
            bar.update(1)
        bar.close()
        step_losses = torch.stack(losses)  # [steps, 1 + terms]: the loss, then each term
        bad = (~torch.isfinite(step_losses[:, 0])).nonzero()
        if len(bad):
            step = int(bad[0]) + 1
            raise NonFiniteLoss(f"{desc}: loss became {step_losses[step - 1, 0].item()} at epoch "
                                f"{epoch}, step {step}", "lower the learning rate or check the data")
        means = [total / steps for total in step_losses.sum(0).tolist()]
        record = {"epoch": epoch, "train_loss": means[0],
                  **{f"loss_{k}": v for k, v in zip(term_names, means[1:])},
                  "seconds": time.perf_counter() - start}
        if evaluate_on is not None:
            result = evaluate(distiller.student, evaluate_on)
            record.update(test_accuracy=result["accuracy"], test_loss=result["loss"])
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(record)
        if checkpoint is not None and distributed.is_main() and (epoch == epochs or (checkpoint_every and epoch % checkpoint_every == 0)):
            save_train_state(checkpoint, distiller.trainable(), opt, scheduler, generator, epoch,
                             history)
    return history


@torch.inference_mode()
def predict_logits(model: nn.Module, data: Images, batch_size: int = 256,
                   precision: str = "fp32") -> torch.Tensor:
    """Logits (float32) of ``model`` in eval mode for every example of ``data``, in order;
    ``precision`` as in :func:`fit` (the teacher's forward pass there)."""
    was_training = model.training
    model.eval()
    with autocast(data.labels.device, precision):  # data: any object with Images' interface
        out = torch.cat([model(data.inputs(slice(i, i + batch_size))).float()
                         for i in range(0, len(data), batch_size)])
    model.train(was_training)
    return out


def predict_logits_shared(model: nn.Module, data: Images, batch_size: int = 256,
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


def predict_views(model: nn.Module, data: Images, augment: Augment, batch_size: int = 256,
                  precision: str = "fp32") -> torch.Tensor:
    """Logits [V, N, C] on each of the ``augment.views`` shifted views of every example (the
    table :class:`Distiller` looks up per view), each rank computing its share (torchrun)."""
    return torch.stack([
        predict_logits_shared(model, Images(augment.view(data.images, v), data.labels, data.mean,
                                            data.std), batch_size, precision)
        for v in range(augment.views or 0)])


def evaluate(model: nn.Module, data: Images, batch_size: int = 256,
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
