"""What a model costs to run: parameters, multiply-adds, memory, latency and throughput, in
eager PyTorch, ONNX Runtime and int8.

Every call is timed in steady state, in blocks of consecutive calls of one (model, runtime)
pair over distinct batches of real inputs, the blocks rotating among the pairs so that machine
noise hits them alike. Warm-up calls first, many repeats, medians (latency also p90). Freed
memory stays in the process while timing (:func:`reused_memory`).
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import itertools
import statistics
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

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
    """Tracks the bytes of live tensors created inside the mode; ``peak`` is their maximum.
    An output that shares the storage of an input (a view, an in-place result) allocated
    nothing and is not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage.data_ptr() in seen:
                    continue
                seen.add(storage.data_ptr())
                size = storage.nbytes()
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


_reusing = 0  # depth of nested reused_memory() blocks


@contextlib.contextmanager
def reused_memory() -> Iterator[None]:
    """Keep freed host memory in the process for reuse while timing (glibc; elsewhere a no-op).

    glibc serves a large block from its heap only if a free one is there, and otherwise maps
    fresh pages and hands them back to the OS when the block is freed, so every call of a model
    with large activations would fault its pages in again. Inside this block mmap is off and the
    heap is kept, as jemalloc or tcmalloc would keep it, so every process times the models'
    steady state. On leaving the outermost block glibc's defaults come back and the kept memory
    returns to the OS. Training does not use it: a kept heap fragments over a long run.
    """
    global _reusing
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        yield
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
    if _reusing == 0:
        mallopt(m_mmap_max, 0)
        mallopt(m_trim_threshold, 1 << 30)
    _reusing += 1
    try:
        yield
    finally:
        _reusing -= 1
        if _reusing == 0:
            mallopt(m_mmap_max, 65536)
            mallopt(m_trim_threshold, 128 * 1024)
            malloc_trim(0)


LATENCY_BLOCK = 20    # consecutive timed batch-1 calls of one function
THROUGHPUT_BLOCK = 5  # consecutive timed calls of one function at a larger batch size


def time_blocks(fns: dict[str, Callable[[Any], Any]], inputs: dict[str, list],
                block: int, enough: Callable[[list[float]], bool]) -> dict[str, list[float]]:
    """Seconds per timed call of each function: blocks of up to ``block`` consecutive calls of
    one function, each block after one untimed call, the blocks rotating among the functions
    until ``enough`` holds for every function's times. Each function's calls cycle through its
    ``inputs`` (the same data for all, each in its function's array type), so its consecutive
    calls see different data, as a server's do."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    cycles = {name: itertools.cycle(inputs[name]) for name in fns}
    while not all(enough(spent) for spent in times.values()):
        for name, fn in fns.items():
            spent = times[name]
            if enough(spent):
                continue
            fn(next(cycles[name]))  # refills the caches the other functions' calls emptied
            for _ in range(block):
                if enough(spent):
                    break
                x = next(cycles[name])
                start = time.perf_counter()
                fn(x)
                spent.append(time.perf_counter() - start)
    return times


def time_callables(fns: dict[str, Callable[[Any], Any]], examples: torch.Tensor, *,
                   batches: tuple[int, ...] = (1, 64, 1024), latency_repeats: int = 200,
                   throughput_repeats: int = 10, throughput_seconds: float = 1.0,
                   warmup: int = 20,
                   convert: dict[str, Callable[[torch.Tensor], Any]] | None = None
                   ) -> dict[str, dict]:
    """Batch-1 latency (p50, p90 in ms) and throughput (images/s) at each batch size.

    ``examples`` are real inputs (tiled when fewer than the largest batch size), cut into
    consecutive batches of each size; every function sees the same batches, in its own array
    type where ``convert`` names a conversion for it (ONNX Runtime takes numpy arrays),
    converted before any timing, as a server's request decoder would produce. Every call is
    timed in the steady state of a server answering a stream of requests: in blocks of
    consecutive calls of one function, each block after an untimed call, the blocks rotating
    among the functions so that machine noise falls on all alike (:func:`time_blocks`), and
    no model is timed just after another has emptied the caches.

    Batch-1 latency runs with one torch thread (a batch of one does not use more), in blocks
    of ``LATENCY_BLOCK`` calls. Throughput, with all threads, is the median of up to
    ``throughput_repeats`` calls per batch size in blocks of ``THROUGHPUT_BLOCK``; a function
    stops being timed at a batch size once it has run 3 times and ``throughput_seconds`` in
    all (slow ones: an int8 conv at batch 1024). On a GPU each call is timed to its end (the
    device is synchronised).
    """
    device = examples.device
    if device.type != "cpu":
        fns = {name: (lambda f: lambda x: (f(x), synchronize(device)))(fn)
               for name, fn in fns.items()}
    inputs = _batched_inputs(fns, examples, (1, *batches), convert or {})

    def enough(spent: list[float]) -> bool:
        return len(spent) >= throughput_repeats or (
            len(spent) >= 3 and sum(spent) >= throughput_seconds)

    with torch.inference_mode(), reused_memory():
        _warm_up(fns, inputs, warmup)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # batch-1 latency single-threaded for every runtime
        try:
            latency = time_blocks(fns, inputs[1], LATENCY_BLOCK,
                                  lambda spent: len(spent) >= latency_repeats)
        finally:
            torch.set_num_threads(threads)
        seconds = {b: time_blocks(fns, inputs[b], THROUGHPUT_BLOCK, enough) for b in batches}
    return {name: {"latency_batch1_ms": statistics.median(latency[name]) * 1e3,
                   "latency_batch1_p90_ms": _percentile(latency[name], 0.9) * 1e3,
                   "throughput_per_s": {b: b / statistics.median(seconds[b][name])
                                        for b in batches}}
            for name in fns}


def _batched_inputs(fns: dict[str, Callable[[Any], Any]], examples: torch.Tensor,
                    sizes: tuple[int, ...], convert: dict[str, Callable[[torch.Tensor], Any]]
                    ) -> dict[int, dict[str, list]]:
    """For each batch size, every function's consecutive batches of ``examples`` (tiled up to
    the largest size), converted to its array type where ``convert`` says."""
    reps = -(-max(sizes) // len(examples))
    pool = examples.repeat(reps, *[1] * (examples.dim() - 1))

    def batches_of(size: int) -> dict[str, list]:
        cut = [pool[i:i + size] for i in range(0, len(pool) - size + 1, size)]
        return {name: [convert[name](x) for x in cut] if name in convert else cut
                for name in fns}

    return {b: batches_of(b) for b in sizes}


def _warm_up(fns: dict[str, Callable[[Any], Any]], inputs: dict[int, dict[str, list]],
             calls: int) -> None:
    """``calls`` batch-1 calls of each function, then one call at each batch size."""
    for _ in range(calls):
        for name, fn in fns.items():
            fn(inputs[1][name][0])
    for batch in inputs.values():
        for name, fn in fns.items():
            fn(batch[name][0])


def _ort_runner(session, single_thread_session) -> Callable[[np.ndarray], np.ndarray]:
    """Run a batch on ONNX Runtime: a batch of one on a one-thread session, as a server answering
    one request per core would (waking a second thread costs more than it saves on such a
    small graph), larger batches on ``session`` with torch's thread count."""
    from .export import ort_call

    single, batched = ort_call(single_thread_session), ort_call(session)
    return lambda x: (single if len(x) == 1 else batched)(x)


def _top1(logits: np.ndarray, data: Images) -> float:
    """The fraction of ``data`` whose label is the largest of its ``logits``."""
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
    examples = test.inputs(slice(0, len(test)))  # timings cycle through the whole test set
    example = examples[:max(batches)]  # one batch of the largest size: MACs, memory, export
    test_cpu = test.to("cpu")
    fns: dict[torch.device, dict[str, Callable[[Any], Any]]] = {example.device: {}}
    cpu = fns.setdefault(torch.device("cpu"), {})
    result: dict[str, dict] = {}
    for role, model in models.items():
        model.eval()
        eager_logits = predict_logits(model, test).cpu().numpy()
        entry: dict[str, Any] = {**describe_model(model, example),
                                 "peak_memory_bytes": peak_memory(model, example),
                                 "runtimes": {"eager": {"test_accuracy": _top1(eager_logits,
                                                                               test_cpu)}}}
        fns[example.device][f"{role}/eager"] = model
        if onnx:
            cpu.update(_onnx_runtimes(role, model, entry, example, test_cpu, eager_logits,
                                      out_dir))
        result[role] = entry
    ort_runs = [name for name in cpu if not name.endswith("/eager")]  # they take numpy arrays
    timings = {}
    for device, group in fns.items():
        if group:
            timings.update(time_callables(
                group, examples.to(device), batches=batches, latency_repeats=latency_repeats,
                throughput_repeats=throughput_repeats,
                convert=dict.fromkeys(ort_runs, torch.Tensor.numpy)))
    for key, numbers in timings.items():
        role, runtime = key.split("/")
        result[role]["runtimes"][runtime].update(numbers)
    return result


def _onnx_runtimes(role: str, model: nn.Module, entry: dict, example: torch.Tensor,
                   test_cpu: Images, eager_logits: np.ndarray, out_dir: Path
                   ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Export ``model`` to ONNX and int8 in ``out_dir``, record their parity, accuracy and bytes
    in ``entry``; return their runners (``role/onnx``, ``role/int8``) to time on the CPU."""
    from .export import export_onnx, ort_logits, ort_session, parity, quantize_int8

    on_cpu = example.device.type == "cpu"
    cpu_model = model if on_cpu else copy.deepcopy(model).cpu()
    path = export_onnx(cpu_model, example.cpu(), out_dir / f"{role}.onnx")
    session = ort_session(path)
    onnx_logits = ort_logits(session, test_cpu)
    reference = eager_logits if on_cpu else predict_logits(cpu_model, test_cpu).numpy()
    entry["onnx_parity"] = parity(reference, onnx_logits)
    int8_path = quantize_int8(path, out_dir / f"{role}.int8.onnx")
    int8 = ort_session(int8_path)
    int8_accuracy = _top1(ort_logits(int8, test_cpu), test_cpu)
    entry["runtimes"]["onnx"] = {"bytes": path.stat().st_size,
                                 "test_accuracy": _top1(onnx_logits, test_cpu)}
    entry["runtimes"]["int8"] = {
        "bytes": int8_path.stat().st_size, "test_accuracy": int8_accuracy,
        "accuracy_delta": int8_accuracy - entry["runtimes"]["eager"]["test_accuracy"]}
    return {f"{role}/onnx": _ort_runner(session, ort_session(path, threads=1)),
            f"{role}/int8": _ort_runner(int8, ort_session(int8_path, threads=1))}
