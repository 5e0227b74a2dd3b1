"""Time the spec's experiment two ways in one process: the plain reference script
(``reference_spec.py``) and ``kdistill run --preset seed``; print the ratio and a per-phase
breakdown, and save both to ``benchmarks/results/pipeline.json``.

    python benchmarks/pipeline.py [--epochs 5]

Data is loaded (and cached) before either is timed. Both use every core (torch's default).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import reference_spec  # noqa: E402

import kdistill  # noqa: E402
from kdistill.files import atomic_write_json  # noqa: E402
from kdistill.pipeline import environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline.json")
    args = parser.parse_args()
    ds = kdistill.load_dataset("mnist")  # fetch + verify outside the timings

    start = time.perf_counter()
    reference = reference_spec.run(ds.train_images, ds.train_labels, ds.test_images,
                                   ds.test_labels, epochs=args.epochs)
    reference["total_seconds"] = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        # retrain_teacher: a teacher cached by an earlier run would make this a different race
        result = kdistill.run("seed", out=Path(tmp) / "run", quiet=True, retrain_teacher=True,
                              overrides=[f"teacher.epochs={args.epochs}", f"student.epochs={args.epochs}"])
        ours_total = time.perf_counter() - start
    models = result.metrics["models"]
    kd_epoch = statistics.median(h["seconds"] for h in models["student"]["history"])
    ce_epoch = statistics.median(h["seconds"] for h in models["control"]["history"])
    summary = {
        "machine": environment(),
        "epochs": args.epochs,
        "reference": reference,
        "kdistill": {"total_seconds": ours_total, "phases": result.metrics["timings"],
                     "teacher_accuracy": models["teacher"]["test_accuracy"],
                     "student_accuracy": models["student"]["test_accuracy"],
                     "control_accuracy": models["control"]["test_accuracy"]},
        "speedup": reference["total_seconds"] / ours_total,
        "kd_epoch_over_ce_epoch": kd_epoch / ce_epoch,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, summary)
    print(f"machine: {summary['machine']['cpu']}, torch {torch.__version__}, "
          f"{summary['machine']['threads']} threads")
    print(f"reference (spec's way): {reference['total_seconds']:7.1f} s  "
          f"teacher {reference['history']['teacher'][-1]:.2%}  student {reference['history']['student'][-1]:.2%}")
    for phase, seconds in reference["times"].items():
        print(f"    {phase:22s} {seconds:7.2f} s")
    print(f"kdistill run --preset seed: {ours_total:7.1f} s  teacher {models['teacher']['test_accuracy']:.2%}  "
          f"student {models['student']['test_accuracy']:.2%}  control {models['control']['test_accuracy']:.2%}")
    for phase, seconds in result.metrics["timings"].items():
        print(f"    {phase.removesuffix('_seconds'):22s} {seconds:7.2f} s")
    print(f"speed-up: {summary['speedup']:.1f}x;  KD epoch (cached logits) / CE epoch: "
          f"{summary['kd_epoch_over_ce_epoch']:.2f}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
