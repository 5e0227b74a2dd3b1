"""torch.distributed helpers: one process per device under ``torchrun``, gloo on CPU, NCCL on
CUDA. Outside torchrun (no ``WORLD_SIZE``) everything here is a no-op for a single process."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from .errors import KdistillError


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return True


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Only the main process (rank 0) writes artefacts and prints."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every rank (a picklable object)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0, its result (or its user error) on every rank (torchrun); just
    ``fn()`` in a single process."""
    outcome: Any = None
    if is_main():
        try:
            outcome = fn()
        except KdistillError as exc:
            outcome = exc
    outcome = broadcast(outcome)
    if isinstance(outcome, KdistillError):
        raise outcome
    return outcome


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over ranks (in place, returned for chaining)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
