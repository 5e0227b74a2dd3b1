"""Why `kdistill bench` times batch-1 latency in blocks: the same calls timed two ways, one
process, single-threaded, on a finished run's teacher and student in eager PyTorch and ONNX
Runtime (its exported .onnx files).

- rotation: one call of each (model, runtime) in turn, so every call follows another model's;
- blocks: 20 consecutive calls of one, after an untimed one (what the bench does).

    python benchmarks/latency_method.py RUN_DIR   # e.g. runs/seed after `kdistill run --out runs/seed`

Prints the median µs per call and the student/teacher and ONNX/eager ratios of each method.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdistill.bench import LATENCY_BLOCK
from kdistill.errors import KdistillError
from kdistill.export import ort_session
from kdistill.pipeline import load_run

CALLS = 1000  # timed calls per (model, runtime) and method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run with its exported .onnx files")
    args = parser.parse_args()
    try:
        run_dir, _, _, test, models = load_run(args.run_dir)
    except KdistillError as exc:
        parser.exit(2, f"error: {exc}\n")
    if not all((run_dir / f"{role}.onnx").is_file() for role in ("teacher", "student")):
        parser.exit(2, f"error: {run_dir} has no exported teacher.onnx and student.onnx "
                       f"(run kdistill export {run_dir} --onnx)\n")
    torch.set_num_threads(1)
    x = test.inputs(slice(0, 1))
    fns = {}
    for role in ("teacher", "student"):
        model = models[role].eval()
        session = ort_session(run_dir / f"{role}.onnx", threads=1)
        fns[f"{role} eager"] = lambda model=model: model(x)
        fns[f"{role} onnx"] = lambda session=session: session.run(None, {"images": x.numpy()})
    rotation = {name: [] for name in fns}
    blocks = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(100):
                fn()
        for _ in range(CALLS // LATENCY_BLOCK):
            for _ in range(LATENCY_BLOCK):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    rotation[name].append(time.perf_counter() - start)
            for name, fn in fns.items():
                fn()
                for _ in range(LATENCY_BLOCK):
                    start = time.perf_counter()
                    fn()
                    blocks[name].append(time.perf_counter() - start)
    for method, times in (("rotation", rotation), ("blocks", blocks)):
        us = {name: statistics.median(t) * 1e6 for name, t in times.items()}
        print(f"{method:8s}", "  ".join(f"{name} {v:.1f} µs" for name, v in us.items()),
              f"| student/teacher eager {us['teacher eager'] / us['student eager']:.2f}x lower",
              f"| student onnx/eager {us['student onnx'] / us['student eager']:.2f}x")


if __name__ == "__main__":
    main()
