"""What a run tells as it trains: a line per epoch on stdout, ``log.jsonl`` in the run
directory and, on request, TensorBoard event files; each a :class:`~kdistill.callbacks.Callback`
of :func:`~kdistill.engine.fit`."""
from __future__ import annotations

import json
from pathlib import Path

from .callbacks import Callback
from .errors import KdistillError
from .files import atomic_write_text


def summary_writer(directory: Path):
    """TensorBoard's event-file writer (``pip install tensorboard``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise KdistillError("--tensorboard needs the tensorboard package",
                            "pip install tensorboard (or kdistill[tensorboard])") from None
    return SummaryWriter(str(directory))


class Reporter:
    """Epoch lines on stdout (errors alone go to stderr) and ``log.jsonl`` in the run directory.

    Lines are keyed by (phase, epoch), so an epoch re-run after a resume replaces its line.
    """

    def __init__(self, out_dir: Path, quiet: bool, write: bool = True,
                 tensorboard: bool = False) -> None:
        self.path, self.quiet, self.write = out_dir / "log.jsonl", quiet, write
        self.lines: dict[tuple[str, int], str] = {}
        self.board = summary_writer(out_dir / "tensorboard") if tensorboard and write else None
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                record = json.loads(line)
                self.lines[(record["phase"], record["epoch"])] = line

    def callbacks(self, phase: str, total: int) -> list[Callback]:
        """What ``fit`` calls after each of the ``total`` epochs of ``phase``."""
        log: list[Callback] = [EpochLog(self, phase, total)]
        return log if self.board is None else [*log, TensorBoardLog(self.board, phase)]

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


class EpochLog(Callback):
    """Each epoch's record as a line of ``log.jsonl`` (rewritten atomically) and on stdout."""

    def __init__(self, reporter: Reporter, phase: str, total: int) -> None:
        self.reporter, self.phase, self.total = reporter, phase, total

    def on_epoch_end(self, record: dict) -> None:
        log, phase = self.reporter, self.phase
        log.lines[(phase, record["epoch"])] = json.dumps({"phase": phase, **record})
        if log.write:
            atomic_write_text(log.path, "\n".join(log.lines.values()) + "\n")
        acc = record.get("test_accuracy")
        log.say(f"{phase:8s} epoch {record['epoch']}/{self.total}  loss {record['train_loss']:.4f}"
                + (f"  test acc {100 * acc:.2f}%" if acc is not None else "")
                + f"  {record['seconds']:.1f}s")


class TensorBoardLog(Callback):
    """Each epoch's numbers as TensorBoard scalars ``<phase>/<key>``, flushed every epoch."""

    def __init__(self, board, phase: str) -> None:
        self.board, self.phase = board, phase

    def on_epoch_end(self, record: dict) -> None:
        for key, value in record.items():
            if key not in ("epoch", "seconds"):
                self.board.add_scalar(f"{self.phase}/{key}", value, record["epoch"])
        self.board.flush()
