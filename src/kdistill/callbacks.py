"""What :func:`kdistill.engine.fit` does around its steps: hooks it calls at fixed points.

A :class:`Callback` overrides the hooks it needs. ``fit`` builds its own (the progress bar, the
``on_epoch_end`` function, the checkpoint) and runs them in that order, any given in
``callbacks=`` after ``on_epoch_end`` and before the checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .checkpoint import load_train_state, save_train_state


class Callback:
    """Hooks of the training loop; each does nothing unless overridden."""

    def on_epoch_start(self, epoch: int) -> None:
        """Epoch ``epoch`` (1-based) is about to run its steps."""

    def on_step_end(self, step: int, losses: list[torch.Tensor]) -> None:
        """Step ``step`` (1-based) of the epoch is done; ``losses`` holds each step's
        [loss, *terms] so far, on the device."""

    def on_train_epoch_end(self, epoch: int) -> None:
        """The epoch's steps are done (before its losses are checked and it is evaluated)."""

    def on_epoch_end(self, record: dict) -> None:
        """The epoch's record is complete (and already appended to the history)."""


class ProgressBar(Callback):
    """A tqdm bar per epoch on stderr, its loss refreshed every 100 steps (off unless ``show``)."""

    def __init__(self, desc: str, epochs: int, steps: int, show: bool) -> None:
        self.desc, self.epochs, self.steps, self.show = desc, epochs, steps, show
        self.bar: tqdm | None = None

    def on_epoch_start(self, epoch: int) -> None:
        self.bar = tqdm(total=self.steps, desc=f"{self.desc} {epoch}/{self.epochs}",
                        disable=not self.show, leave=False, unit="step", dynamic_ncols=True)

    def on_step_end(self, step: int, losses: list[torch.Tensor]) -> None:
        assert self.bar is not None
        if self.show and (step % 100 == 0 or step == self.steps):
            self.bar.set_postfix(loss=f"{torch.stack(losses)[:, 0].mean().item():.4f}",
                                 refresh=step == self.steps)
        self.bar.update(1)

    def on_train_epoch_end(self, epoch: int) -> None:
        if self.bar is not None:
            self.bar.close()


class EpochEnd(Callback):
    """A plain function called with each epoch's record (``fit(on_epoch_end=...)``)."""

    def __init__(self, fn: Callable[[dict], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, record: dict) -> None:
        self.fn(record)


class Checkpoint(Callback):
    """The full training state saved to ``path`` (atomically, by rank 0) every ``every`` epochs
    and after the last; :meth:`restore` continues from it, bitwise as if never stopped."""

    def __init__(self, path: Path, every: int, epochs: int, model: nn.Module,
                 optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
                 history: list[dict]) -> None:
        self.path, self.every, self.epochs = path, every, epochs
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.generator, self.history = generator, history

    def restore(self) -> int:
        """Load the saved state if there is one, its records into the history; return the number
        of epochs it had done (0 without one)."""
        if not self.path.exists():
            return 0
        done, history = load_train_state(self.path, self.model, self.optimizer, self.scheduler,
                                         self.generator)
        self.history[:] = history
        return done

    def on_epoch_end(self, record: dict) -> None:
        epoch = record["epoch"]
        due = epoch == self.epochs or (self.every and epoch % self.every == 0)
        if due and distributed.is_main():
            save_train_state(self.path, self.model, self.optimizer, self.scheduler,
                             self.generator, epoch, self.history)
