"""What a model costs to run: parameters, multiply-adds, latency and throughput.

Timings interleave the models being compared, call by call, so that machine noise hits them
alike; each uses warm-up calls, many repeats and reports medians.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import count_params


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds for one sample (``torch.utils.flop_counter`` FLOPs / 2)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example[:1])
    model.train(was_training)
    return counter.get_total_flops() // 2


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@torch.inference_mode()
def time_models(models: dict[str, nn.Module], example: torch.Tensor, *, latency_repeats: int = 200,
                throughput_batch: int = 1024, throughput_repeats: int = 10,
                warmup: int = 20) -> dict[str, dict[str, float]]:
    """Batch-1 latency (p50, p90) and throughput at ``throughput_batch``, models interleaved.

    ``example`` is a batch of real inputs; it is tiled when smaller than ``throughput_batch``.
    """
    for m in models.values():
        m.eval()
    one = example[:1].contiguous()
    reps = -(-throughput_batch // len(example))
    big = example.repeat(reps, *[1] * (example.dim() - 1))[:throughput_batch].contiguous()
    latencies: dict[str, list[float]] = {n: [] for n in models}
    batch_times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(warmup):
        for m in models.values():
            m(one)
    for m in models.values():
        m(big)
    for _ in range(latency_repeats):
        for name, m in models.items():
            start = time.perf_counter()
            m(one)
            latencies[name].append(time.perf_counter() - start)
    for _ in range(throughput_repeats):
        for name, m in models.items():
            start = time.perf_counter()
            m(big)
            batch_times[name].append(time.perf_counter() - start)
    return {
        name: {
            "latency_batch1_ms": statistics.median(latencies[name]) * 1e3,
            "latency_batch1_p90_ms": _percentile(latencies[name], 0.9) * 1e3,
            "throughput_per_s": throughput_batch / statistics.median(batch_times[name]),
            "throughput_batch": throughput_batch,
        }
        for name in models
    }


def describe_model(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    return {"params": count_params(model), "macs_per_sample": count_macs(model, example)}
