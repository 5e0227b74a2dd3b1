"""The batch size of forward passes alone (evaluation, the teacher's logit tables) on this CPU.

    python benchmarks/eval_batch.py [--repeats 5] [--images 1024]
        [--out benchmarks/results/eval-batch]

Milliseconds per 64 CIFAR-shaped images for resnet56 and resnet32x4 as kdistill runs a frozen
teacher (``predict_logits`` under ``inference_mode``, BatchNorm folded in channels-last), at
batches of 64, 128 and 256, in fp32 NCHW and in bf16 channels-last. Batch sizes alternate
within each repeat after one untimed round; the table gives medians and the ratio to 256, the
default before ``eval_batch_size`` defaulted to 64 on a CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from kdistill.engine import Images, predict_logits
from kdistill.models import create_model
from kdistill.models.fold import inference_teacher
from kdistill.pipeline import environment
from results_files import stated, write_results

RESULTS = Path(__file__).parent / "results" / "eval-batch"
BATCHES = (64, 128, 256)
VARIANTS = {"fp32 NCHW": ("fp32", False), "bf16 channels-last": ("bf16", True)}


def measure(model_name: str, variant: str, data: Images, repeats: int) -> list[dict]:
    """Rows of one model and variant: ms per 64 images at each batch size (medians)."""
    precision, channels_last = VARIANTS[variant]
    model = create_model(model_name, num_classes=100).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = inference_teacher(model)
    seconds: dict[int, list[float]] = {b: [] for b in BATCHES}
    for repeat in range(repeats + 1):  # round 0 warms up every batch size, untimed
        for batch in BATCHES:
            start = time.perf_counter()
            predict_logits(teacher, data, batch, precision)
            if repeat:
                seconds[batch].append(time.perf_counter() - start)
    ms = {b: 1000 * statistics.median(s) / len(data) * 64 for b, s in seconds.items()}
    return [{"model": model_name, "variant": variant, "batch": b, "ms_per_64": ms[b],
             "speedup_vs_256": ms[256] / ms[b]} for b in BATCHES]


def table(results: dict) -> str:
    lines = [stated(results) + f"{results['images']} images per pass; medians "
             f"of {results['repeats']} repeats after one untimed round, batch sizes alternating.",
             "", "| teacher | variant | batch | ms / 64 images | × batch 256 |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['batch']} | {r['ms_per_64']:.1f} | "
              f"{r['speedup_vs_256']:.2f}x |" for r in results["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    data = Images(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.zeros(args.images, dtype=torch.long), mean=(0.5, 0.5, 0.5),
                  std=(0.25, 0.25, 0.25))
    results = {"command": "python benchmarks/eval_batch.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "repeats": args.repeats, "images": args.images,
               "env": environment(), "rows": []}
    for model_name in ("resnet56", "resnet32x4"):
        for variant in VARIANTS:
            results["rows"] += measure(model_name, variant, data, args.repeats)
    write_results(args.out, results, table(results))


if __name__ == "__main__":
    main()
