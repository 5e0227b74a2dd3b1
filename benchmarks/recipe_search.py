"""Rank candidate recipes for the `best` preset's 784-128-10 student on a validation split.

One teacher (the `best` preset's CNN) is trained with the last 10,000 training images held out;
each candidate student recipe (and its from-scratch control under the same schedule and
augmentation) then trains against that teacher, and the table is sorted by the distilled
student's validation accuracy. Test accuracy is printed for information only: it never chooses.
Not yet run to completion (its one GPU attempt ran out of device time): the `best` preset is
still the earlier candidate.

    python benchmarks/recipe_search.py --device cuda --jobs 8      # one GPU
    python benchmarks/recipe_search.py --jobs 1                    # hours on 2 CPU cores

Writes results/recipe_search.json (override with --out).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

BASE = ["data.val_size=10000", "bench.enabled=false"]
AFFINE = ["data.rotate=10", "data.scale=0.1"]
CANDIDATES: dict[str, list[str]] = {
    "jitter T4 a0.9 60ep": ["student.epochs=60"],
    "jitter+affine T4 a0.9 60ep": ["student.epochs=60", *AFFINE],
    "jitter+affine T4 a1.0 60ep": ["student.epochs=60", *AFFINE, "distill.alpha=1.0"],
    "jitter+affine T2 a0.9 60ep": ["student.epochs=60", *AFFINE, "distill.temperature=2"],
    "jitter+affine T8 a0.9 60ep": ["student.epochs=60", *AFFINE, "distill.temperature=8"],
    "jitter+affine T4 a0.9 std 60ep": ["student.epochs=60", *AFFINE, "distill.standardize=true"],
    "jitter+affine dkd 60ep": ["student.epochs=60", *AFFINE, "distill.loss=dkd",
                               "distill.temperature=4", "distill.alpha=1.0", "distill.beta=8"],
    "jitter+affine T4 a0.9 120ep": ["student.epochs=120", *AFFINE],
    "jitter+strong affine T4 a0.9 60ep": ["student.epochs=60", "data.rotate=15", "data.scale=0.15"],
    "jitter+affine T4 a0.9 60ep bs256 lr3e-3": ["student.epochs=60", *AFFINE,
                                                "student.batch_size=256", "student.lr=0.003"],
}


def kdistill_run(out: Path, overrides: list[str], device: str) -> dict:
    cmd = [sys.executable, "-m", "kdistill", "run", "--preset", "best", "--quiet", "--out",
           str(out), "--device", device, *BASE, *overrides]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:], "overrides": overrides}
    metrics = json.loads((out / "metrics.json").read_text())
    return {"overrides": overrides, "seconds": time.perf_counter() - start,
            **{f"{role}_{key}": m.get(key) for role, m in metrics["models"].items()
               for key in ("val_accuracy", "test_accuracy")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="candidates trained at once")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recipe_search.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recipe-search-"))
    teacher = kdistill_run(work / "teacher", ["student.epochs=1", "control=false"], args.device)
    print(f"teacher: val {teacher['teacher_val_accuracy']:.4f}  ({teacher['seconds']:.0f}s)",
          flush=True)
    weights = f"teacher.weights={work / 'teacher' / 'teacher.safetensors'}"
    threads = [f"threads={max(1, (os.cpu_count() or 1) // args.jobs)}"]
    results: dict[str, dict] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(kdistill_run, work / str(i), [weights, *threads, *overrides],
                               args.device): name
                   for i, (name, overrides) in enumerate(CANDIDATES.items())}
        for future in as_completed(futures):  # saved as each finishes: a cut-off run keeps them
            results[futures[future]] = future.result()
            print(f"done: {futures[future]}: {row(futures[future], results[futures[future]])}",
                  flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"teacher": teacher, "candidates": results}, indent=1))
    print("| recipe | student val | control val | gain (val) | student test | control test | s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: -(kv[1].get("student_val_accuracy") or 0)):
        print(row(name, r))


def row(name: str, r: dict) -> str:
    if "error" in r:
        return f"| {name} | failed: {r['error']} |"
    sv, cv = r["student_val_accuracy"], r["control_val_accuracy"]
    return (f"| {name} | {100 * sv:.2f} | {100 * cv:.2f} | {100 * (sv - cv):+.2f} | "
            f"{100 * r['student_test_accuracy']:.2f} | {100 * r['control_test_accuracy']:.2f} | "
            f"{r['seconds']:.0f} |")

if __name__ == "__main__":
    main()
