"""Time the spec's experiment two ways in one benchmark run: the plain reference script
(``reference_spec.py``) and ``kdistill run --preset mnist-spec`` (a fresh teacher); print the ratio and
a per-phase breakdown, and save both to ``benchmarks/results/pipeline.json``.

    python benchmarks/pipeline.py [--epochs 5] [--rounds 2]

Each side runs in a fresh Python process of its own, one after the other, so neither inherits
the other's heap and allocator state; each is timed inside its process, after imports and with
the data loaded (and cached) first. ``--rounds`` pairs run in alternating order (reference,
kdistill, kdistill, reference, ...); the speed-up is the median of the pairs' ratios. Both use
every core (torch's default).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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


def _side(name: str, epochs: int, out: Path) -> None:
    """Run one side in this process and write its timings and results to ``out``."""
    ds = kdistill.load_dataset("mnist")  # fetch + verify outside the timings
    start = time.perf_counter()
    if name == "reference":
        result = reference_spec.run(ds.train_images, ds.train_labels, ds.test_images,
                                    ds.test_labels, epochs=epochs)
        result["total_seconds"] = time.perf_counter() - start
    else:
        with tempfile.TemporaryDirectory() as tmp:
            # retrain_teacher: a teacher cached by an earlier run would make this a different race
            run = kdistill.run("mnist-spec", out=Path(tmp) / "run", quiet=True, retrain_teacher=True,
                               overrides=[f"teacher.epochs={epochs}", f"student.epochs={epochs}"])
            result = {"total_seconds": time.perf_counter() - start, "metrics": run.metrics}
    out.write_text(json.dumps(result))


def _in_fresh_process(name: str, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        subprocess.run([sys.executable, __file__, "--side", name, "--epochs", str(epochs),
                        "--out", str(out)], check=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline.json")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (order alternates)")
    parser.add_argument("--side", choices=["reference", "kdistill"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be at least 1")
    if args.side:
        _side(args.side, args.epochs, args.out)
        return
    references, ours = [], []
    for r in range(args.rounds):  # ABBA...: alternating order cancels a slow drift of the VM
        for side in ("reference", "kdistill") if r % 2 == 0 else ("kdistill", "reference"):
            (references if side == "reference" else ours).append(_in_fresh_process(side, args.epochs))
    speedups = [ref["total_seconds"] / kd["total_seconds"] for ref, kd in zip(references, ours)]
    kd_over_ce = []
    for kd in ours:
        models = kd["metrics"]["models"]
        kd_over_ce.append(statistics.median(h["seconds"] for h in models["student"]["history"])
                          / statistics.median(h["seconds"] for h in models["control"]["history"]))
    summary = {
        "machine": environment(),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "reference": references,
        "kdistill": [{"total_seconds": kd["total_seconds"], "phases": kd["metrics"]["timings"],
                      **{f"{role}_accuracy": m["test_accuracy"]
                         for role, m in kd["metrics"]["models"].items()}} for kd in ours],
        "speedup_per_round": speedups,
        "speedup": statistics.median(speedups),
        "kd_epoch_over_ce_epoch": statistics.median(kd_over_ce),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, summary)
    print(f"machine: {summary['machine']['cpu']}, torch {torch.__version__}, "
          f"{summary['machine']['threads']} threads")
    for r, (ref, kd) in enumerate(zip(references, summary["kdistill"]), start=1):
        print(f"round {r}: reference (spec's way) {ref['total_seconds']:6.1f} s  "
              f"(teacher {ref['history']['teacher'][-1]:.2%}, student {ref['history']['student'][-1]:.2%}; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in ref["times"].items()) + ")")
        print(f"         kdistill run --preset mnist-spec {kd['total_seconds']:6.1f} s  "
              f"(teacher {kd['teacher_accuracy']:.2%}, student {kd['student_accuracy']:.2%}, "
              f"control {kd['control_accuracy']:.2%}; "
              + ", ".join(f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in kd["phases"].items())
              + f")  -> {speedups[r - 1]:.1f}x")
    print(f"speed-up (median of rounds): {summary['speedup']:.1f}x;  KD epoch (cached logits) / "
          f"CE epoch: {summary['kd_epoch_over_ce_epoch']:.2f}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
