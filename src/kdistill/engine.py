"""The one training loop (cross-entropy and distillation alike): :class:`Distiller` and
:func:`fit`; prediction and evaluation live in :mod:`kdistill.evaluation`.

Data never leaves memory: each step indexes a uint8 tensor with a seeded permutation and
normalises the batch with tensor ops. A frozen teacher's logits on fixed inputs are computed
once and looked up by index, which is exactly equivalent to re-running the teacher per batch.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import Callback, Checkpoint, EpochEnd, ProgressBar
from .cuda_graph import GraphedStep
from .data.augment import Augment
from .data.batches import Images, rows
from .evaluation import (evaluate, predict_logits, predict_logits_shared,  # noqa: F401
                         predict_views, tabulate_views)
from .losses import bind_loss
from .loop import NonFiniteLoss, Trainee, run_epoch, run_together  # noqa: F401
from .models.fold import inference_teacher
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
            if features is None:  # feature hooks need the teacher's own layers to run
                self.teacher = inference_teacher(self.teacher)
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
            teacher_logits = self.live_teacher(x)
        terms = self.objective(logits, teacher_logits, y)
        if self.features is not None:
            terms.update(self.features())
        if self.warmup_epochs:
            terms = {k: v if k == "ce" else v * self.warmup for k, v in terms.items()}
        return logits, terms

    def live_teacher(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits on the student's batch ``x`` (float32): under
        inference_mode, no autograd bookkeeping, unless a feature objective must read its
        activations (then no_grad, its hooks' outputs being ordinary tensors)."""
        assert self.teacher is not None
        mode = torch.no_grad() if self.features is not None else torch.inference_mode()
        with mode:
            teacher_x = x if self.teacher_inputs is None else self.teacher_inputs(x)
            logits = self.teacher(teacher_x)
        # an inference tensor cannot be saved for the student's backward: a normal copy
        return logits.float() if self.features is not None else logits.float().clone()

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


@dataclass
class Alongside:
    """A second model that :func:`fit` trains in the same pass as the first, on the very same
    batches: the control beside the distilled student. It keeps its own optimizer, schedule,
    checkpoint and dropout stream, so it ends bitwise as if :func:`fit` had trained it after
    the first with the same arguments; its epoch records go to ``history``."""

    distiller: Distiller
    desc: str = "control"
    checkpoint: Path | None = None
    callbacks: Sequence[Callback] = ()
    history: list[dict] = field(default_factory=list)


def fit(distiller: Distiller, train: Images, *, epochs: int, batch_size: int, lr: float,
        seed: int, optimizer: str = "adam", weight_decay: float = 0.0, momentum: float = 0.9,
        nesterov: bool = True, schedule: str = "constant", milestones: Sequence[int] = (),
        gamma: float = 0.1,
        augment: Augment = Augment(), evaluate_on: Images | None = None,
        on_epoch_end: Callable[[dict], None] | None = None,
        progress: bool | None = None, desc: str = "train", checkpoint: Path | None = None,
        checkpoint_every: int = 1, precision: str = "fp32", compile: bool = False,
        cuda_graphs: bool = True, micro_batches: int = 1,
        callbacks: Sequence[Callback] = (), alongside: Alongside | None = None) -> list[dict]:
    """Train ``distiller.student`` in place; return one record per epoch.

    Each record holds ``epoch``, ``train_loss`` (mean over steps), the mean of each loss term,
    ``seconds`` (training time of the epoch) and, when ``evaluate_on`` is given, ``test_accuracy``
    and ``test_loss`` measured after the epoch. Shuffling, ``augment`` (drawn per image) and
    dropout are seeded by ``seed``; a teacher module sees the same augmented batch as the student.
    Records go to ``on_epoch_end`` and ``callbacks``; ``progress`` shows a bar (default: on a
    terminal). With ``checkpoint``, the training state is saved there every
    ``checkpoint_every`` epochs and at the end, and an existing one is continued from, ending
    bitwise as a run never stopped. Each step is a :class:`~kdistill.train_step.TrainStep`
    (``micro_batches``; under torchrun each rank takes its share of each global batch), on
    CUDA recorded once as a graph where it allows (:class:`~kdistill.cuda_graph.GraphedStep`).
    ``alongside`` trains a second model on the same batches in the same pass (:class:`Alongside`).
    """
    _check_teacher_table(distiller, augment)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(train) / batch_size)

    def trainee(d: Distiller, name: str, path: Path | None, hooks: list[Callback],
                history: list[dict]) -> Trainee:
        opt = make_optimizer(optimizer, d.get_learnable_parameters(), lr, weight_decay,
                             momentum, nesterov)
        step = TrainStep(d, train, opt, generator, augment=augment, precision=precision,
                         micro_batches=micro_batches, compile=compile)
        scheduler = make_scheduler(schedule, opt, epochs * steps, steps, milestones, gamma)
        saver = None if path is None else Checkpoint(
            path, checkpoint_every, epochs, d.trainable(), opt, scheduler, generator, history)
        return Trainee(step, scheduler, name, hooks, history, saver,
                       scheduled=schedule != "constant")

    show = sys.stderr.isatty() if progress is None else progress
    bar = desc if alongside is None else f"{desc}+{alongside.desc}"
    lead = trainee(distiller, desc, checkpoint, [
        ProgressBar(bar, epochs, steps, show),
        *([EpochEnd(on_epoch_end)] if on_epoch_end is not None else []), *callbacks],
        [])
    if alongside is None:
        done = lead.restore()
        if cuda_graphs and lead.step.graphable(optimizer):
            lead.runner = GraphedStep(lead.step, lead.step.optimizer)
        for epoch in range(done + 1, epochs + 1):
            run_epoch([lead], epoch, batch_size, evaluate_on)
        return lead.history
    other = trainee(alongside.distiller, alongside.desc, alongside.checkpoint,
                    list(alongside.callbacks), alongside.history)
    run_together([lead, other], epochs, batch_size, evaluate_on)
    return lead.history


def _check_teacher_table(distiller: Distiller, augment: Augment) -> None:
    table = distiller.teacher_logits
    if table is not None and table.shape[:-2] != ((augment.views,) if augment.views else ()):
        raise ValueError(f"teacher logits of shape {tuple(table.shape)} do not match the "
                         f"augmentation {augment} (per-view logits need shifts alone)")
