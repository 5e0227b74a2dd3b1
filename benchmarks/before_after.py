"""Did a change make a run slower? The same ``kdistill run`` from two versions of the code.

    python benchmarks/before_after.py --before 3f65605 [--rounds 3] [--name mnist-spec]
        [-- run arguments, default: --preset mnist-spec]

Checks the ``--before`` revision out into a temporary git worktree and times ``kdistill run``
(bench off, an empty teacher cache each time, so the teacher is trained) from it and from this
working tree, each run in its own fresh process, alternating which goes first, ``--rounds``
times. The table gives every run's wall time, the medians and their ratio, all in one sitting.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from kdistill.pipeline import environment
from results_files import stated, write_results

ROOT = Path(__file__).resolve().parents[1]


def timed_run(src: Path, args: list[str], scratch: Path) -> float:
    """Seconds of one ``python -m kdistill run`` importing kdistill from ``src``."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    env = {**os.environ, "PYTHONPATH": str(src), "KDISTILL_CACHE": str(out / "cache")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kdistill", "run", "--quiet", "--out", str(out / "run"),
                    *args, "bench.enabled=false"], check=True, env=env, cwd=scratch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="mnist-spec")
    parser.add_argument("--out", type=Path)
    parser.add_argument("run_args", nargs="*", default=["--preset", "mnist-spec"])
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"{args.name}-before-after"
    times: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        tree = scratch / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                        args.before], check=True)
        try:
            sources = {"before": tree / "src", "after": ROOT / "src"}
            for r in range(args.rounds):
                for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    times[side].append(timed_run(sources[side], args.run_args, scratch))
                    print(side, f"{times[side][-1]:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)
    medians = {side: statistics.median(values) for side, values in times.items()}
    results = {"command": "python benchmarks/before_after.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "env": environment(), "before": args.before,
               "run_args": args.run_args, "seconds": times, "median_seconds": medians,
               "after_over_before": medians["after"] / medians["before"]}
    table = "\n".join([
        stated(results) + f"`kdistill run {' '.join(args.run_args)} bench.enabled=false`, "
        "teacher trained (empty cache), each run a fresh process, sides alternating.", "",
        "| code | runs (s) | median (s) |", "|---|---|---:|",
        *[f"| {side}{' (' + args.before + ')' if side == 'before' else ' (this tree)'} | "
          f"{', '.join(f'{t:.1f}' for t in times[side])} | {medians[side]:.1f} |"
          for side in ("before", "after")],
        "", f"After ÷ before: {results['after_over_before']:.2f}x the time.", ""])
    write_results(out, results, table)


if __name__ == "__main__":
    main()
