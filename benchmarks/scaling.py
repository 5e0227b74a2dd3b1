"""Seconds per training epoch against training-set size, batch size and thread count, for the
spec's teacher (cross-entropy) and student (KL on cached teacher logits).

    python benchmarks/scaling.py [--repeats 3]

Each cell is the median of ``--repeats`` epochs, measured in rounds over the whole grid so that
a noisy stretch of the machine does not fall on one cell alone. Writes
``benchmarks/results/scaling.json`` (every epoch's time) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import kdistill
from kdistill.engine import Distiller, Images, fit
from kdistill.files import atomic_write_json
from kdistill.pipeline import environment

SIZES, BATCHES, THREADS = (10_000, 30_000, 60_000), (64, 256, 1024), (1, 2)


def epoch_seconds(role: str, train: Images, batch: int) -> float:
    torch.manual_seed(0)
    model = kdistill.create_model("spec-teacher" if role == "teacher" else "spec-student")
    teacher = None if role == "teacher" else torch.randn(len(train), 10)
    start = time.perf_counter()
    fit(Distiller(model, teacher, "kl"), train, epochs=1, batch_size=batch, lr=1e-3, seed=0,
        progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="epochs per cell (default 3)")
    repeats = parser.parse_args().repeats
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    ds = kdistill.load_dataset("mnist")
    cells = list(itertools.product(THREADS, SIZES, BATCHES))
    times: dict[tuple, dict[str, list[float]]] = {c: {"teacher": [], "student": []} for c in cells}
    for round_ in range(repeats):
        for cell in cells:
            threads, size, batch = cell
            torch.set_num_threads(threads)
            train = Images(ds.train_images[:size], ds.train_labels[:size])
            for role, spent in times[cell].items():
                spent.append(epoch_seconds(role, train, batch))
            print(f"round {round_ + 1}", json.dumps({"cell": cell, **times[cell]}), file=sys.stderr)
    rows = [{"threads": t, "train_size": n, "batch_size": b,
             **{f"{role}_seconds": statistics.median(spent) for role, spent in times[t, n, b].items()},
             **{f"{role}_all_seconds": spent for role, spent in times[t, n, b].items()}}
            for t, n, b in cells]
    out = Path(__file__).parent / "results" / "scaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"machine": environment(), "rows": rows})
    print("| threads | train size | batch | teacher s/epoch | student (KD) s/epoch |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['threads']} | {r['train_size']:,} | {r['batch_size']} | "
              f"{r['teacher_seconds']:.2f} | {r['student_seconds']:.2f} |")


if __name__ == "__main__":
    main()
