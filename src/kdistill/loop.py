"""The epochs of :func:`kdistill.engine.fit`: each model's share of a training pass (a
:class:`Trainee`) and the loop that runs one model, or two on the same batches.

Two models trained in one pass (the distilled student and its control) share the shuffling
generator and each batch's augmented inputs, which both would draw identically when trained
one after the other; each keeps its own stream of the global RNG (dropout), so the result is
bitwise the same as training them in turn.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from . import distributed
from .callbacks import Callback, Checkpoint
from .data.batches import Images, batch_indices, rows
from .errors import KdistillError
from .evaluation import evaluate
from .train_step import TrainStep


class NonFiniteLoss(KdistillError):
    """Training diverged (NaN or inf loss)."""


class RngStream:
    """One model's own state of the global RNG (CPU, and CUDA on a CUDA device), swapped in
    around each of its steps so that two models trained in one pass draw what each alone would."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._save()

    def _save(self) -> None:
        self.cpu = torch.get_rng_state()
        self.gpu = torch.cuda.get_rng_state() if self.cuda else None

    def load(self) -> None:
        """Make this stream the global RNG's state."""
        torch.set_rng_state(self.cpu)
        if self.gpu is not None:
            torch.cuda.set_rng_state(self.gpu)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.load()
        try:
            yield
        finally:
            self._save()


class Trainee:
    """One model's share of a training pass: its step (``runner`` runs it, maybe as a CUDA
    graph), schedule, hooks, history, checkpoint and, trained beside another, RNG stream."""

    def __init__(self, step: TrainStep, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 desc: str, hooks: list[Callback], history: list[dict],
                 saver: Checkpoint | None, scheduled: bool) -> None:
        self.step, self.scheduler, self.desc, self.history = step, scheduler, desc, history
        self.saver, self.scheduled = saver, scheduled
        self.hooks = [*hooks, *([saver] if saver is not None else [])]
        self.runner: Callable[..., torch.Tensor] = step
        self.rng: RngStream | None = None
        self.losses: list[torch.Tensor] = []
        self.busy = 0.0  # seconds of this epoch spent on this model (trained beside another)

    def active(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.rng is None else self.rng.active()

    def restore(self) -> int:
        """Continue from the checkpoint if there is one; the number of epochs it had done."""
        with self.active():
            return self.saver.restore() if self.saver is not None else 0

    def begin(self, epoch: int) -> None:
        distiller = self.step.distiller
        distiller.train()
        distiller.set_epoch(epoch, self.step.device)
        self.losses, self.busy = [], 0.0
        for hook in self.hooks:
            hook.on_epoch_start(epoch)

    def advance(self, number: int, index: torch.Tensor, shifts: torch.Tensor | None,
                shared: tuple | None) -> None:
        """Step ``number`` of the epoch: on the batch ``shared`` by the pass when given."""
        start = time.perf_counter()
        with self.active():
            if shared is not None:
                self.losses.append(self.step.update(*shared))
            else:
                self.losses.append(self.runner(index) if shifts is None
                                   else self.runner(index, shifts))
        if self.scheduled:
            self.scheduler.step()
        for hook in self.hooks:
            hook.on_step_end(number, self.losses)
        self.busy += time.perf_counter() - start

    def finish(self, epoch: int, evaluate_on: Images | None, seconds: float | None) -> None:
        """Close the epoch: its record (``seconds``: the epoch's time, or None for the time
        this model itself took), then the hooks that read it."""
        start = time.perf_counter()
        for hook in self.hooks:
            hook.on_train_epoch_end(epoch)
        own = self.busy + time.perf_counter() - start
        self.history.append(epoch_record(epoch, torch.stack(self.losses), self.step.term_names,
                                         own if seconds is None else seconds, self.desc,
                                         evaluate_on, self.step.distiller.student))
        with self.active():  # a checkpoint saves the model's RNG state
            for hook in self.hooks:
                hook.on_epoch_end(self.history[-1])


def run_epoch(trainees: Sequence[Trainee], epoch: int, batch_size: int,
              evaluate_on: Images | None) -> None:
    """One epoch of every trainee, batch by batch; more than one share each batch's inputs."""
    lead, start = trainees[0].step, time.perf_counter()
    for trainee in trainees:
        trainee.begin(epoch)
    indexes = list(batch_indices(len(lead.train), batch_size, lead.generator, device=lead.device))
    offsets = (lead.augment.draw_shifts([len(i) for i in indexes], lead.generator, lead.device)
               if lead.augment.views is not None else [None] * len(indexes))
    rank = distributed.rank()
    for number, (index, shifts) in enumerate(zip(indexes, offsets), start=1):
        if lead.world > 1:
            index = index.tensor_split(lead.world)[rank]
            shifts = shifts.tensor_split(lead.world, dim=1)[rank] if shifts is not None else None
        shared = None
        if len(trainees) > 1:  # the inputs' time counts as the first model's
            prepared = time.perf_counter()
            x, view = lead.inputs(index, shifts)
            shared = (x, rows(lead.train.labels, index), index, view)
            trainees[0].busy += time.perf_counter() - prepared
        for trainee in trainees:
            trainee.advance(number, index, shifts, shared)
    alone = len(trainees) == 1
    for trainee in trainees:
        trainee.finish(epoch, evaluate_on, time.perf_counter() - start if alone else None)


def run_together(trainees: Sequence[Trainee], epochs: int, batch_size: int,
                 evaluate_on: Images | None) -> None:
    """Train every trainee to ``epochs`` in one pass, each from its checkpoint if any. The
    global RNG starts each model's stream where the pass's seed left it; one whose checkpoint
    is behind the others catches up alone first, then all go on together."""
    for trainee in trainees:
        trainee.rng = RngStream(trainee.step.device)
    done = [trainee.restore() for trainee in trainees]
    for trainee, epoch in sorted(zip(trainees, done), key=lambda pair: pair[1]):
        if epoch < max(done):
            trainee.restore()  # the shared generator back to where this one stopped
            for e in range(epoch + 1, max(done) + 1):
                run_epoch([trainee], e, batch_size, evaluate_on)
    for epoch in range(max(done) + 1, epochs + 1):
        run_epoch(trainees, epoch, batch_size, evaluate_on)
    last = trainees[-1].rng
    assert last is not None
    last.load()  # leave the global RNG as training the last one alone would


def epoch_record(epoch: int, step_losses: torch.Tensor, term_names: list[str], seconds: float,
                 desc: str, evaluate_on: Images | None, student: nn.Module) -> dict:
    """The record of an epoch whose steps logged ``step_losses`` [steps, 1 + terms] (the loss,
    then each term) in ``seconds``; a non-finite loss ends training."""
    bad = (~torch.isfinite(step_losses[:, 0])).nonzero()
    if len(bad):
        step = int(bad[0]) + 1
        raise NonFiniteLoss(f"{desc}: loss became {step_losses[step - 1, 0].item()} at epoch "
                            f"{epoch}, step {step}", "lower the learning rate or check the data")
    steps = len(step_losses)
    means = [total / steps for total in step_losses.sum(0).tolist()]
    record = {"epoch": epoch, "train_loss": means[0],
              **{f"loss_{k}": v for k, v in zip(term_names, means[1:])}, "seconds": seconds}
    if evaluate_on is not None:
        result = evaluate(student, evaluate_on)
        record.update(test_accuracy=result["accuracy"], test_loss=result["loss"])
    return record
