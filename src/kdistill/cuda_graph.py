"""Whole training steps recorded once as a CUDA graph and replayed.

The networks kdistill trains are so small that an eager GPU step is bound by Python and kernel
launches, not arithmetic; a CUDA graph launches a whole step (forward, backward, optimizer
update) at once (timings: benchmarks/results/gpu-h200/). This follows PyTorch's whole-network
capture recipe (docs: "CUDA Graphs", notes/cuda): warm up on a side stream, capture with static
inputs, then copy each batch into them and replay.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

WARMUP_STEPS = 3  # eager steps before the capture: they build optimizer state and GPU workspaces


class GraphedStep:
    """``step(*inputs) -> Tensor``, one whole training step with no host synchronisation, run
    eagerly for its first ``warmup`` calls, recorded as a CUDA graph on the next and replayed
    from then on. Calls whose input shapes differ from the first call's (an epoch's smaller last
    batch) run eagerly. Every call is a real step and returns its output as a fresh tensor.

    The optimizer's learning rate reaches the graph through a device tensor that is refreshed
    from the param group before each replay, so schedulers keep working. The optimizer must
    accept ``capturable`` and a tensor ``lr`` (fused Adam/AdamW do)."""

    def __init__(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
                 warmup: int = WARMUP_STEPS) -> None:
        self.step, self.optimizer, self.warmup = step, optimizer, warmup
        self.shapes: list[torch.Size] | None = None
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.output: torch.Tensor | None = None
        self.lrs: list[tuple[dict, torch.Tensor]] = []
        self.lr_values: list[float] = []

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        shapes = [x.shape for x in inputs]
        self.shapes = self.shapes or shapes
        if shapes != self.shapes:
            return self.step(*inputs)
        if self.graph is None:
            self.calls += 1
            if self.calls <= self.warmup:
                return _on_side_stream(self.step, inputs)
            self._capture(inputs)
        for static, x in zip(self.inputs, inputs):
            static.copy_(x, non_blocking=True)
        for i, (group, lr) in enumerate(self.lrs):
            if group["lr"] != self.lr_values[i]:
                lr.fill_(group["lr"])
                self.lr_values[i] = group["lr"]
        self.graph.replay()
        return self.output.clone()

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self.inputs = tuple(x.clone() for x in inputs)
        graph = torch.cuda.CUDAGraph()
        with self._capturable(), torch.cuda.graph(graph):
            self.output = self.step(*self.inputs)
        self.graph = graph  # the capture ran nothing: the caller replays it for this step

    @contextlib.contextmanager
    def _capturable(self) -> Iterator[None]:
        """The optimizer as the capture needs it: ``capturable`` and its lr a device tensor (a
        float would be frozen into the graph); plain floats again afterwards for eager steps,
        schedulers and checkpoints."""
        groups = self.optimizer.param_groups
        saved = [(g["lr"], g["capturable"]) for g in groups]
        device = groups[0]["params"][0].device
        self.lrs = [(g, torch.tensor(g["lr"], device=device)) for g in groups]
        self.lr_values = [g["lr"] for g in groups]
        for group, lr in self.lrs:
            group.update(lr=lr, capturable=True)
        try:
            yield
        finally:
            for group, (lr, capturable) in zip(groups, saved):
                group.update(lr=lr, capturable=capturable)


def _on_side_stream(step: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]
                    ) -> torch.Tensor:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = step(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    return out
