"""The README's GPU rows: the `seed` preset (with the inference benchmark, then without it for
the end-to-end time, then in bf16) and the `best` preset, each a cold `kdistill run` process on
the GPU that `device=cuda` finds.

    python benchmarks/gpu.py OUT_DIR [NAME ...]   # writes OUT_DIR/<name>.json, prints a line each
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = {
    "seed-bench": ["--preset", "seed"],
    "seed": ["--preset", "seed", "bench.enabled=false"],
    "seed-bf16": ["--preset", "seed", "bench.enabled=false", "precision=bf16"],
    "best": ["--preset", "best", "bench.enabled=false"],
}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kdistill-gpu-"))
    for name in sys.argv[2:] or RUNS:
        args = RUNS[name]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kdistill", "run", "--device", "cuda", "--quiet",
                        "--out", str(work / name), *args], check=True)
        wall = time.perf_counter() - start
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
