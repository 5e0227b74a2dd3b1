"""Do the speed-ups change accuracy? Short resnet20 <- resnet56 runs with and without them.

    python benchmarks/speedup_accuracy.py [--seeds 3] [--epochs 3] [--out DIR]

Data: the first 10,000 Fashion-MNIST training images as RGB 32x32 (``data.channels=3
data.image_size=32``; Debian's ``dataset-fashion-mnist``), crop (padding 4) and flip, tested on
all 10,000 test images. Recipe: the ``cifar100-resnet56-resnet20`` preset (SGD lr 0.05, momentum
0.9, weight decay 5e-4, batch 64, KD at T = 4) with ``--epochs`` epochs for the teacher, the
student and the control, a cosine schedule, and the dataset's own mean/std.

Without: fp32, ``channels_last=false``, the control trained after the student. With:
``precision=bf16 channels_last=true control_pass=shared``. (The live teacher's folded
BatchNorm is on in both; ``tests/test_shared_pass.py`` checks its logits match.) Each seed
trains one teacher, in the run without the speed-ups; the run with them distils from that very
teacher (``teacher.weights``, ``teacher.epochs=0``), so the two students differ only by the
speed-ups. The last epoch's test accuracy is reported; nothing is chosen on the test set.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from kdistill.pipeline import environment
from results_files import stated, write_results

RESULTS = Path(__file__).parent / "results" / "speedup-accuracy"
ROLES = ("teacher", "student", "control")
SETTINGS = {"without": ["precision=fp32", "channels_last=false", "control_pass=separate"],
            "with": ["precision=bf16", "channels_last=true", "control_pass=shared"]}


def overrides(epochs: int, seed: int) -> list[str]:
    return ["data.name=fashion-mnist", "data.channels=3", "data.image_size=32",
            "data.train_subset=10000", "data.mean=null", "data.std=null", "bench.enabled=false",
            f"seed={seed}", *[f"{role}.{key}" for role in ("teacher", "student") for key in
                              (f"epochs={epochs}", "schedule=cosine")]]


def run(out: Path, cache: Path, epochs: int, seed: int, setting: str,
        teacher: list[str]) -> dict:
    """One ``kdistill run`` in its own process; each model's last-epoch test accuracy."""
    command = [sys.executable, "-m", "kdistill", "run", "--quiet", "--preset",
               "cifar100-resnet56-resnet20", "--out", str(out), *overrides(epochs, seed),
               *SETTINGS[setting], *teacher]
    subprocess.run(command, check=True, env={**__import__("os").environ,
                                             "KDISTILL_CACHE": str(cache)})
    models = json.loads((out / "metrics.json").read_text())["models"]
    return {role: models[role]["test_accuracy"] for role in ROLES}


def summary(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def table(results: dict) -> str:
    """The two settings side by side, with each seed's paired difference (same seed, same
    teacher): a mean difference inside the seeds' spread can still lean one way every time."""
    lines = [stated(results) + "Last-epoch test accuracy (%), "
             f"{len(results['seeds'])} seeds: mean ± sample std [min–max]; the teacher is the "
             "same in both settings.", "",
             "| model | without (fp32, separate control) | with (bf16, channels_last, "
             "shared pass) | with − without, per seed | mean | within the seeds' spread |",
             "|---|---:|---:|---:|---:|---|"]
    for role in ROLES:
        a, b = results["without"][role], results["with"][role]
        paired = [100 * (y - x) for x, y in zip(a["values"], b["values"])]
        diff = b["mean"] - a["mean"]
        spread = max(a["max"] - a["min"], b["max"] - b["min"])
        cells = [f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} [{100 * s['min']:.2f}–"
                 f"{100 * s['max']:.2f}]" for s in (a, b)]
        lines.append(f"| {role} | {cells[0]} | {cells[1]} | "
                     f"{', '.join(f'{d:+.2f}' for d in paired)} | {100 * diff:+.2f} | "
                     f"{'yes' if abs(diff) <= spread else 'no'} (spread {100 * spread:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    per_seed: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            teacher: list[str] = []
            for name in SETTINGS:
                out = Path(tmp) / f"{name}-{seed}"
                per_seed[name].append(run(out, Path(tmp) / "cache", args.epochs, seed, name,
                                          teacher))
                teacher = [f"teacher.weights={out / 'teacher.safetensors'}", "teacher.epochs=0"]
                print(name, seed, per_seed[name][-1], flush=True)
    results = {"command": "python benchmarks/speedup_accuracy.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "env": environment(),
               "seeds": list(range(args.seeds)), "epochs": args.epochs,
               "overrides": overrides(args.epochs, 0), "settings": SETTINGS,
               "per_seed": per_seed,
               **{name: {role: summary([r[role] for r in runs]) for role in ROLES}
                  for name, runs in per_seed.items()}}
    write_results(args.out, results, table(results))


if __name__ == "__main__":
    main()
