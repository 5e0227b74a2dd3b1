"""Seconds per training epoch against training-set size, batch size and thread count, for the
spec's teacher (cross-entropy) and student (KL on cached teacher logits).

    python benchmarks/scaling.py

Writes ``benchmarks/results/scaling.json`` and prints a markdown table.
"""
from __future__ import annotations

import itertools
import json
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
    ds = kdistill.load_dataset("mnist")
    rows = []
    for threads, size, batch in itertools.product(THREADS, SIZES, BATCHES):
        torch.set_num_threads(threads)
        train = Images(ds.train_images[:size], ds.train_labels[:size])
        row = {"threads": threads, "train_size": size, "batch_size": batch,
               **{f"{r}_seconds": epoch_seconds(r, train, batch) for r in ("teacher", "student")}}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
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
