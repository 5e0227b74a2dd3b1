"""The README's GPU rows: the `mnist-spec` preset with CUDA graphs (the default), with eager
steps (`cuda_graphs=false`), with the inference benchmark, in bf16, and the `mnist-best` preset;
each a cold `kdistill run --device cuda` process with an empty teacher cache of its own, so every
teacher is trained. Runs go one after another (never two at once), and a failed run is reported
and skipped. The row names (`seed`, `best`, ...) are the presets' former names, kept so that
results stored under them still match.

    python benchmarks/gpu.py OUT_DIR [NAME ...]   # writes OUT_DIR/<name>.json, prints a line each
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = {
    "seed": ["--preset", "mnist-spec", "bench.enabled=false"],
    "seed-eager": ["--preset", "mnist-spec", "bench.enabled=false", "cuda_graphs=false"],
    "seed-bench": ["--preset", "mnist-spec"],
    "seed-bf16": ["--preset", "mnist-spec", "bench.enabled=false", "precision=bf16"],
    "best": ["--preset", "mnist-best", "bench.enabled=false"],
}
TIMEOUT_S = 400  # per run


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kdistill-gpu-"))
    for name in sys.argv[2:] or RUNS:
        env = {**os.environ, "KDISTILL_CACHE": str(work / f"cache-{name}")}
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "kdistill", "run", "--device", "cuda",
                                   "--quiet", "--out", str(work / name), *RUNS[name]], env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"{name}: stopped after {TIMEOUT_S} s", flush=True)
            continue
        wall = time.perf_counter() - start
        if done.returncode:
            print(f"{name}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True)
            continue
        metrics = json.loads((work / name / "metrics.json").read_text())
        metrics["process_wall_seconds"] = wall
        for entry in metrics["models"].values():
            entry.pop("confusion", None)
        (out / f"{name}.json").write_text(json.dumps(metrics, indent=1))
        print(f"{name}: wall {wall:.1f}s on {metrics['env']['device']}",
              {k: v["test_accuracy"] for k, v in metrics["models"].items()},
              {k: round(v, 2) for k, v in metrics["timings"].items()}, flush=True)


if __name__ == "__main__":
    main()
