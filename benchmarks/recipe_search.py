"""Rank candidate recipes for the `mnist-best` preset's 784-128-10 student on a validation split.

Each candidate is one `kdistill run --preset mnist-best` with its overrides and the last 10,000
training images held out (`data.val_size=10000`): it trains its own teacher under its own
augmentation (a shared teacher cache reuses identical ones), the distilled student and the
from-scratch control under the same schedule and augmentation. The table is sorted by the
distilled student's validation accuracy; test accuracy is printed for information only and never
chooses.

    python benchmarks/recipe_search.py              # all candidates (not timed whole; 6 took 39 min)
    python benchmarks/recipe_search.py --only "jitter ±1, T2 a0.9"   # some, added to the JSON
    python benchmarks/recipe_search.py --device cuda   # --jobs N: N at once (12 at once on one
                                                       # H200 left each launch-bound run slower)

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

# The first search's single teacher (cnn w16, 8 epochs) unless a candidate says otherwise; every
# candidate names its jitter and temperature, so a change of the preset cannot change it.
BASE = ["data.val_size=10000", "bench.enabled=false", "student.epochs=100", "teacher.ensemble=1",
        "teacher.epochs=8", "distill.loss=hinton", "distill.alpha=0.9"]
J1T2 = ["data.translate=1", "distill.temperature=2"]
CANDIDATES: dict[str, list[str]] = {
    "jitter ±2, T4 a0.9": ["data.translate=2", "distill.temperature=4"],
    "jitter ±1, T4 a0.9": ["data.translate=1", "distill.temperature=4"],
    "jitter ±1, T2 a0.9": J1T2,
    "jitter ±1, T1 a0.9": ["data.translate=1", "distill.temperature=1"],
    "no jitter, T2 a0.9": ["data.translate=0", "distill.temperature=2"],
    # cutout makes the teacher run live (about 7 s per student epoch on 2 cores)
    "jitter ±1 + erase 10 px, T2 a0.9": [*J1T2, "data.erase=10"],
    "jitter ±1, T2 a1.0": [*J1T2, "distill.alpha=1.0"],
    "jitter ±1, T4 a1.0": ["data.translate=1", "distill.temperature=4", "distill.alpha=1.0"],
    "jitter ±1, T1 a0.9, standardized logits": ["data.translate=1", "distill.temperature=1",
                                                "distill.standardize=true"],
    "jitter ±1, dkd T4": ["data.translate=1", "distill.loss=dkd", "distill.temperature=4"],
    "jitter ±1, T2 a0.9, 200 epochs": [*J1T2, "student.epochs=200"],
    "ensemble of 2 (5 epochs each), jitter ±1, T2 a0.9": [*J1T2, "teacher.ensemble=2",
                                                           "teacher.epochs=5"],
    "ensemble of 3 (4 epochs each), jitter ±1, T2 a0.9": [*J1T2, "teacher.ensemble=3",
                                                           "teacher.epochs=4"],
    "ensemble of 4 (3 epochs each), jitter ±1, T2 a0.9": [*J1T2, "teacher.ensemble=4",
                                                           "teacher.epochs=3"],
    "ensemble of 3 (4 epochs each), jitter ±1, mse a0.9": [
        "data.translate=1", "distill.loss=mse", "teacher.ensemble=3", "teacher.epochs=4"],
}


def kdistill_run(out: Path, overrides: list[str], device: str) -> dict:
    cmd = [sys.executable, "-m", "kdistill", "run", "--preset", "mnist-best", "--quiet", "--out",
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
    p.add_argument("--only", nargs="+", metavar="NAME", choices=CANDIDATES,
                   help="run these candidates and add them to the JSON's others")
    args = p.parse_args()
    chosen = {name: CANDIDATES[name] for name in args.only or CANDIDATES}
    work = Path(tempfile.mkdtemp(prefix="recipe-search-"))
    os.environ.setdefault("KDISTILL_CACHE", str(work / "cache"))
    threads = [f"threads={max(1, (os.cpu_count() or 1) // args.jobs)}"]
    results: dict[str, dict] = (json.loads(args.out.read_text())["candidates"]
                                if args.only and args.out.exists() else {})
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(kdistill_run, work / str(i), [*threads, *overrides],
                               args.device): name
                   for i, (name, overrides) in enumerate(chosen.items())}
        for future in as_completed(futures):  # saved as each finishes: a cut-off run keeps them
            results[futures[future]] = future.result()
            print(f"done: {futures[future]}: {row(futures[future], results[futures[future]])}",
                  flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"base": BASE, "candidates": results}, indent=1))
    print("| recipe | teacher val | student val | control val | gain (val) | student test | "
          "control test | s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: -(kv[1].get("student_val_accuracy") or 0)):
        print(row(name, r))


def row(name: str, r: dict) -> str:
    if "error" in r:
        return f"| {name} | failed: {r['error']} |"
    sv, cv = r["student_val_accuracy"], r["control_val_accuracy"]
    seconds = "–" if r.get("seconds") is None else f"{r['seconds']:.0f}"  # – : shared control
    return (f"| {name} | {100 * r['teacher_val_accuracy']:.2f} | {100 * sv:.2f} | {100 * cv:.2f} | {100 * (sv - cv):+.2f} | "
            f"{100 * r['student_test_accuracy']:.2f} | {100 * r['control_test_accuracy']:.2f} | "
            f"{seconds} |")


if __name__ == "__main__":
    main()
