"""The one training loop (cross-entropy and distillation alike) and evaluation.

Data never leaves memory: each step indexes a uint8 tensor with a seeded permutation and
normalises the batch with tensor ops. A frozen teacher's logits on fixed inputs are computed
once and looked up by index, which is exactly equivalent to re-running the teacher per batch.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .callbacks import Callback, Checkpoint, EpochEnd, ProgressBar
from .cuda_graph import GraphedStep
from .data.augment import Augment
from .data.batches import Images, batch_indices, rows
from .device import autocast
from .errors import KdistillError
from .losses import bind_loss
from .train_step import TrainStep, micro_slices  # noqa: F401 (micro_slices: kept importable here)


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
    # fused: one kernel per step instead of ~10 small ops per tensor
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


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
        cuda_graphs: bool = True, micro_batches: int = 1,
        callbacks: Sequence[Callback] = ()) -> list[dict]:
    """Train ``distiller.student`` in place; return one record per epoch.

    Each record holds ``epoch``, ``train_loss`` (mean over steps), the mean of each loss term,
    ``seconds`` (training time of the epoch) and, when ``evaluate_on`` is given, ``test_accuracy``
    and ``test_loss`` measured after the epoch. Shuffling, ``augment`` (drawn per image) and
    dropout are seeded by ``seed``; a teacher module sees the same augmented batch as the student.
    Each record goes to ``on_epoch_end`` and to each of ``callbacks``
    (:class:`~kdistill.callbacks.Callback`); ``progress`` shows a bar (default: on a terminal).

    With ``checkpoint``, the full training state is saved there (atomically) every
    ``checkpoint_every`` epochs and at the end; if the file exists, training continues from it
    and ends bitwise identical to a run that was never stopped.

    Each step is a :class:`~kdistill.train_step.TrainStep` (``micro_batches``, torchrun: every
    rank draws the same seeded permutation and takes its share of each global batch of
    ``batch_size``; rank 0 saves the checkpoints). On CUDA, ``cuda_graphs`` records the step as
    a CUDA graph and replays it (:class:`~kdistill.cuda_graph.GraphedStep`) where the step
    allows (:meth:`~kdistill.train_step.TrainStep.graphable`). Shifts are drawn for a whole
    epoch at once (the same values as drawing per batch).
    """
    _check_teacher_table(distiller, augment)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    opt = make_optimizer(optimizer, distiller.get_learnable_parameters(), lr, weight_decay,
                         momentum, nesterov)
    step = TrainStep(distiller, train, opt, generator, augment=augment, precision=precision,
                     micro_batches=micro_batches, compile=compile)
    steps = math.ceil(len(train) / batch_size)
    scheduler = make_scheduler(schedule, opt, epochs * steps, steps, milestones, gamma)
    runner = GraphedStep(step, opt) if cuda_graphs and step.graphable(optimizer) else step
    history: list[dict] = []
    saver = None if checkpoint is None else Checkpoint(
        checkpoint, checkpoint_every, epochs, distiller.trainable(), opt, scheduler, generator,
        history)
    done = saver.restore() if saver is not None else 0
    show = sys.stderr.isatty() if progress is None else progress
    hooks = [ProgressBar(desc, epochs, steps, show),
             *([EpochEnd(on_epoch_end)] if on_epoch_end is not None else []), *callbacks,
             *([saver] if saver is not None else [])]
    for epoch in range(done + 1, epochs + 1):
        history.append(_train_epoch(step, runner, epoch, batch_size, scheduler, hooks, desc,
                                    evaluate_on, schedule != "constant"))
        for hook in hooks:
            hook.on_epoch_end(history[-1])
    return history


def _check_teacher_table(distiller: Distiller, augment: Augment) -> None:
    table = distiller.teacher_logits
    if table is not None and table.shape[:-2] != ((augment.views,) if augment.views else ()):
        raise ValueError(f"teacher logits of shape {tuple(table.shape)} do not match the "
                         f"augmentation {augment} (per-view logits need shifts alone)")


def _train_epoch(step: TrainStep, runner: Callable[..., torch.Tensor], epoch: int,
                 batch_size: int, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 hooks: Sequence[Callback], desc: str, evaluate_on: Images | None,
                 scheduled: bool) -> dict:
    """Run one epoch's steps (``runner`` runs ``step``, maybe as a CUDA graph); its record."""
    distiller, train, generator = step.distiller, step.train, step.generator
    distiller.train()
    distiller.set_epoch(epoch, step.device)
    start = time.perf_counter()
    for hook in hooks:
        hook.on_epoch_start(epoch)
    indexes = list(batch_indices(len(train), batch_size, generator, device=step.device))
    offsets = (step.augment.draw_shifts([len(i) for i in indexes], generator, step.device)
               if step.augment.views is not None else [None] * len(indexes))
    losses: list[torch.Tensor] = []  # per step, left on the device until the epoch ends
    rank = distributed.rank()
    for number, (index, shifts) in enumerate(zip(indexes, offsets), start=1):
        if step.world > 1:
            index = index.tensor_split(step.world)[rank]
            shifts = shifts.tensor_split(step.world, dim=1)[rank] if shifts is not None else None
        losses.append(runner(index) if shifts is None else runner(index, shifts))
        if scheduled:
            scheduler.step()
        for hook in hooks:
            hook.on_step_end(number, losses)
    for hook in hooks:
        hook.on_train_epoch_end(epoch)
    return _epoch_record(epoch, torch.stack(losses), step.term_names, start, desc,
                         evaluate_on, distiller.student)


def _epoch_record(epoch: int, step_losses: torch.Tensor, term_names: list[str], start: float,
                  desc: str, evaluate_on: Images | None, student: nn.Module) -> dict:
    """The record of an epoch whose steps logged ``step_losses`` [steps, 1 + terms] (the loss,
    then each term); a non-finite loss ends training."""
    bad = (~torch.isfinite(step_losses[:, 0])).nonzero()
    if len(bad):
        step = int(bad[0]) + 1
        raise NonFiniteLoss(f"{desc}: loss became {step_losses[step - 1, 0].item()} at epoch "
                            f"{epoch}, step {step}", "lower the learning rate or check the data")
    steps = len(step_losses)
    means = [total / steps for total in step_losses.sum(0).tolist()]
    record = {"epoch": epoch, "train_loss": means[0],
              **{f"loss_{k}": v for k, v in zip(term_names, means[1:])},
              "seconds": time.perf_counter() - start}
    if evaluate_on is not None:
        result = evaluate(student, evaluate_on)
        record.update(test_accuracy=result["accuracy"], test_loss=result["loss"])
    return record


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
