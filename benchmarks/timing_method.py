"""Why `kdistill bench` times calls in blocks: the same calls timed two ways in one process, on
a finished run's teacher and student in eager PyTorch and ONNX Runtime (its exported .onnx
files), the two methods alternating round by round so that both see the same machine drift.

- rotation: one call of each (model, runtime) in turn, always on the same batch, so every call
  follows another model's (the bench's batch-1 latency until commit 88bf77b, its throughput
  until the commit that added this option);
- blocks: what the bench does now (`kdistill.bench.time_blocks`): consecutive calls of one
  (model, runtime), each block after an untimed call, over distinct batches of the test set.

    python benchmarks/timing_method.py RUN_DIR                # batch-1 latency, one thread
    python benchmarks/timing_method.py RUN_DIR --batch 1024   # throughput, all threads
    python benchmarks/timing_method.py RUN_DIR --batch 1024 --glibc-defaults

Both methods keep freed memory for reuse as the bench does (`kdistill.bench.reused_memory`);
`--glibc-defaults` times them with glibc's default allocator settings instead, under which a
block over 32 MB (the teacher's batch-1024 activation) is mapped afresh, page by page, on
every call of a process whose heap holds no free block that large.

RUN_DIR is e.g. runs/seed after `kdistill run --out runs/seed`. Prints each method's median
time per call (µs) or images/s, and the student/teacher and ONNX/eager ratios.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from kdistill.bench import LATENCY_BLOCK, THROUGHPUT_BLOCK, reused_memory, time_blocks
from kdistill.errors import KdistillError
from kdistill.export import ort_call, ort_session
from kdistill.rundir import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run with its exported .onnx files")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="time with glibc's default allocator settings, not the bench's")
    args = parser.parse_args()
    try:
        run_dir, _, _, test, models = load_run(args.run_dir)
    except KdistillError as exc:
        parser.exit(2, f"error: {exc}\n")
    if not all((run_dir / f"{role}.onnx").is_file() for role in ("teacher", "student")):
        parser.exit(2, f"error: {run_dir} has no exported teacher.onnx and student.onnx "
                       f"(run kdistill export {run_dir} --onnx)\n")
    b = args.batch
    if not 1 <= b <= len(test):
        parser.exit(2, f"error: --batch must be between 1 and the {len(test)} test images\n")
    if b == 1:
        torch.set_num_threads(1)
    block, rounds = (LATENCY_BLOCK, 50) if b == 1 else (THROUGHPUT_BLOCK, 8)
    pool = test.inputs(slice(0, len(test)))
    batches = [pool[i:i + b] for i in range(0, len(pool) - b + 1, b)]
    fns, inputs = {}, {}
    for role in ("teacher", "student"):
        fns[f"{role} eager"] = models[role].eval()
        fns[f"{role} onnx"] = ort_call(ort_session(run_dir / f"{role}.onnx"))
        inputs[f"{role} eager"] = batches
        inputs[f"{role} onnx"] = [x.numpy() for x in batches]
    rotation: dict[str, list[float]] = {name: [] for name in fns}
    blocks: dict[str, list[float]] = {name: [] for name in fns}
    allocator = contextlib.nullcontext() if args.glibc_defaults else reused_memory()
    with torch.inference_mode(), allocator:
        for name, fn in fns.items():
            for x in inputs[name][:3]:
                fn(x)
        for _ in range(rounds):
            for _ in range(block):
                for name, fn in fns.items():
                    x = inputs[name][0]
                    start = time.perf_counter()
                    fn(x)
                    rotation[name].append(time.perf_counter() - start)
            for name, times in time_blocks(fns, inputs, block,
                                           lambda spent: len(spent) >= block).items():
                blocks[name].extend(times)
    for method, times in (("rotation", rotation), ("blocks", blocks)):
        median = {name: statistics.median(t) for name, t in times.items()}
        shown = (f"{name} {v * 1e6:.1f} µs" if b == 1 else f"{name} {b / v:,.0f}/s"
                 for name, v in median.items())
        print(f"{method:8s}", "  ".join(shown),
              f"| student/teacher eager {median['teacher eager'] / median['student eager']:.2f}x",
              f"| student onnx/eager time {median['student onnx'] / median['student eager']:.2f}x")


if __name__ == "__main__":
    main()
