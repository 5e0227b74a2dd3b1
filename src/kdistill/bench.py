"""What a model costs to run: parameters, multiply-adds, memory, latency and throughput, in
eager PyTorch, ONNX Runtime and int8.

Timings rotate among every (model, runtime) pair, so machine noise hits them alike: batch-1
latency in blocks of consecutive calls (steady state), throughput call by call. Each uses
warm-up calls and many repeats and reports medians (latency also p90).
"""
from __future__ import annotations

import copy
import statistics
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from .device import synchronize
from .engine import Images, predict_logits
from .models import count_params


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds for one sample (``torch.utils.flop_counter`` FLOPs / 2)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example[:1])
    model.train(was_training)
    return counter.get_total_flops() // 2


class _PeakTensorMemory(TorchDispatchMode):
    """Tracks the bytes of live tensors created inside the mode; ``peak`` is their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor._base is None:
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def peak_memory(model: nn.Module, batch: torch.Tensor) -> int:
    """Peak bytes of the tensors one eager forward pass allocates (activations and outputs)."""
    model.eval()
    with torch.inference_mode(), _PeakTensorMemory() as tracker:
        model(batch)
    return tracker.peak


def describe_model(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    return {"params": count_params(model), "macs_per_sample": count_macs(model, example)}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


LATENCY_BLOCK = 20  # consecutive timed batch-1 calls of one function


def time_callables(fns: dict[str, Callable[[torch.Tensor], Any]], example: torch.Tensor, *,
                   batches: tuple[int, ...] = (1, 64, 1024), latency_repeats: int = 200,
                   throughput_repeats: int = 10, throughput_seconds: float = 1.0,
                   warmup: int = 20) -> dict[str, dict]:
    """Batch-1 latency (p50, p90 in ms) and throughput (images/s) at each batch size.

    ``example`` is a batch of real inputs, tiled up to the largest batch size; every function
    is called on the same inputs. Batch-1 latency runs with one torch thread (a batch of one
    does not use more), in blocks of ``LATENCY_BLOCK`` timed calls of one function after an
    untimed one, the blocks rotating among the functions: each call is timed in the steady
    state of a server answering a stream of requests, and machine noise falls on all alike.
    (Single calls in rotation time each model with its weights evicted by the others': the
    spec's student then reads 41 instead of 27 µs.) Throughput is the median of up to
    ``throughput_repeats`` calls per batch size; a call stops being repeated once it has run
    3 times and ``throughput_seconds`` in all (slow ones: an int8 conv at batch 1024). On a GPU
    each call is timed to its end (the device is synchronised).
    """
    device = example.device
    if device.type != "cpu":
        fns = {name: (lambda f: lambda x: (f(x), synchronize(device)))(fn)
               for name, fn in fns.items()}
    reps = -(-max(batches) // len(example))
    tiled = example.repeat(reps, *[1] * (example.dim() - 1))
    inputs = {b: tiled[:b].contiguous() for b in batches}
    one = example[:1].contiguous()
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn(one)
        for x in inputs.values():
            for fn in fns.values():
                fn(x)
        latency: dict[str, list[float]] = {n: [] for n in fns}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # batch-1 latency single-threaded for every runtime
        try:
            for _ in range(-(-latency_repeats // LATENCY_BLOCK)):
                for name, fn in fns.items():
                    fn(one)  # refills the caches the other functions' calls emptied
                    for _ in range(min(LATENCY_BLOCK, latency_repeats - len(latency[name]))):
                        start = time.perf_counter()
                        fn(one)
                        latency[name].append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(threads)
        seconds: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in fns}
        for _ in range(throughput_repeats):
            for b, x in inputs.items():
                for name, fn in fns.items():
                    spent = seconds[name][b]
                    if len(spent) >= 3 and sum(spent) >= throughput_seconds:
                        continue
                    start = time.perf_counter()
                    fn(x)
                    spent.append(time.perf_counter() - start)
    return {name: {"latency_batch1_ms": statistics.median(latency[name]) * 1e3,
                   "latency_batch1_p90_ms": _percentile(latency[name], 0.9) * 1e3,
                   "throughput_per_s": {b: b / statistics.median(seconds[name][b]) for b in batches}}
            for name in fns}


def _ort_runner(session, single_thread_session) -> Callable[[torch.Tensor], Any]:
    """Run a batch on ONNX Runtime: a batch of one on a one-thread session, as a server answering
    one request per core would (waking a second thread costs more than it saves on such a
    small graph), larger batches on ``session`` with torch's thread count."""
    return lambda x: (single_thread_session if len(x) == 1 else session).run(
        None, {"images": x.numpy()})


def _accuracy(logits: np.ndarray, data: Images) -> float:
    return float((logits.argmax(1) == data.labels.numpy()).mean())


def deployment_bench(models: dict[str, nn.Module], test: Images, out_dir: Path, *,
                     batches: tuple[int, ...] = (1, 64, 1024), latency_repeats: int = 200,
                     throughput_repeats: int = 10, onnx: bool = True) -> dict[str, dict]:
    """Measure each model in eager PyTorch and, with ``onnx``, exported to ONNX Runtime (parity
    checked on the whole test set) and int8 (ONNX Runtime dynamic quantization of the linear
    layers).
    Eager PyTorch runs where the models and ``test`` are (a GPU too), ONNX Runtime on the CPU;
    timings rotate among the runtimes that share a device (:func:`time_callables`).

    Returns ``{role: {params, macs_per_sample, peak_memory_bytes, runtimes: {eager, onnx, int8:
    {latency_batch1_ms, latency_batch1_p90_ms, throughput_per_s: {batch: images/s},
    test_accuracy, bytes}}, onnx_parity}}``; ONNX files are written into ``out_dir``.
    """
    from .export import export_onnx, ort_logits, ort_session, parity, quantize_int8

    example = test.inputs(slice(0, min(len(test), max(batches))))
    test_cpu = test.to("cpu")
    fns: dict[torch.device, dict[str, Callable[[torch.Tensor], Any]]] = {example.device: {}}
    cpu = fns.setdefault(torch.device("cpu"), {})
    result: dict[str, dict] = {}
    for role, model in models.items():
        model.eval()
        eager_logits = predict_logits(model, test).cpu().numpy()
        eager_accuracy = _accuracy(eager_logits, test_cpu)
        entry: dict[str, Any] = {**describe_model(model, example),
                                 "peak_memory_bytes": peak_memory(model, example),
                                 "runtimes": {"eager": {"test_accuracy": eager_accuracy}}}
        fns[example.device][f"{role}/eager"] = model
        if onnx:
            on_cpu = example.device.type == "cpu"
            cpu_model = model if on_cpu else copy.deepcopy(model).cpu()
            path = export_onnx(cpu_model, example.cpu(), out_dir / f"{role}.onnx")
            session = ort_session(path)
            onnx_logits = ort_logits(session, test_cpu)
            reference = eager_logits if on_cpu else predict_logits(cpu_model, test_cpu).numpy()
            entry["onnx_parity"] = parity(reference, onnx_logits)
            int8_path = quantize_int8(path, out_dir / f"{role}.int8.onnx")
            int8 = ort_session(int8_path)
            entry["runtimes"]["onnx"] = {"bytes": path.stat().st_size,
                                         "test_accuracy": _accuracy(onnx_logits, test_cpu)}
            entry["runtimes"]["int8"] = {"bytes": int8_path.stat().st_size,
                                         "test_accuracy": _accuracy(ort_logits(int8, test_cpu), test_cpu)}
            entry["runtimes"]["int8"]["accuracy_delta"] = (
                entry["runtimes"]["int8"]["test_accuracy"] - eager_accuracy)
            cpu[f"{role}/onnx"] = _ort_runner(session, ort_session(path, threads=1))
            cpu[f"{role}/int8"] = _ort_runner(int8, ort_session(int8_path, threads=1))
        result[role] = entry
    timings = {}
    for device, group in fns.items():
        if group:
            timings.update(time_callables(group, example.to(device), batches=batches,
                                          latency_repeats=latency_repeats,
                                          throughput_repeats=throughput_repeats))
    for key, numbers in timings.items():
        role, runtime = key.split("/")
        result[role]["runtimes"][runtime].update(numbers)
    return result
