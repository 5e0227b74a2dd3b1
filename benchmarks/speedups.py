"""Two speed-ups measured one at a time on this machine: the frozen teacher's forward pass, and
the control trained in the same pass as the distilled student.

    python benchmarks/speedups.py [--repeats 5] [--out benchmarks/results/speedups-cpu]

(1) Teacher: seconds per batch of 64 CIFAR-shaped images for resnet56 and resnet32x4 in eval
    mode, as a live teacher runs each step: under ``no_grad``, under ``inference_mode``, and
    under ``inference_mode`` with BatchNorm folded into the convolutions; each in NCHW and
    channels-last, fp32 and bf16 autocast. Variants alternate within each repeat; the table
    gives medians and the ratio to ``no_grad`` in one run. (kdistill folds a channels-last
    teacher only: ``kdistill.models.fold.inference_teacher``.)
(2) Control: one epoch of the distilled student then one of its control (one after the other)
    against both in one pass on shared batches (``fit(alongside=...)``), for the ``mnist-spec``
    student (784-128-10 MLP, teacher logits from a table, 10,000 MNIST-shaped images) and for
    resnet20 distilled from a live resnet56 (1,024 CIFAR-shaped images, crop + flip). Orders
    alternate; the table gives the median seconds of each and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from kdistill.data.augment import Augment
from kdistill.device import autocast
from kdistill.engine import Alongside, Distiller, Images, fit
from kdistill.models import create_model
from kdistill.models.fold import fold_batchnorm
from kdistill.pipeline import environment
from results_files import stated, write_results

RESULTS = Path(__file__).parent / "results" / "speedups-cpu"


def teacher_rows(repeats: int, batches: int = 4) -> list[dict]:
    """Median seconds per batch of each teacher variant, per precision and memory format."""
    x = torch.randn(64, 3, 32, 32)
    rows = []
    for name in ("resnet56", "resnet32x4"):
        for layout in ("NCHW", "channels_last"):
            model = create_model(name, num_classes=100).eval()
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            folded = fold_batchnorm(model)
            variants = {"no_grad": (model, torch.no_grad),
                        "inference_mode": (model, torch.inference_mode),
                        "folded + inference_mode": (folded, torch.inference_mode)}
            for precision in ("fp32", "bf16"):
                rows += _time_variants(variants, x, precision, repeats, batches,
                                       {"teacher": name, "layout": layout})
    return rows


def _time_variants(variants: dict, x: torch.Tensor, precision: str, repeats: int, batches: int,
                   about: dict) -> list[dict]:
    """Each variant's median seconds per batch, the variants alternating in every repeat."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats + 1):  # the first round warms up
        for label, (net, mode) in variants.items():
            with mode(), autocast(x.device, precision):
                start = time.perf_counter()
                for _ in range(batches):
                    net(x)
                seconds = (time.perf_counter() - start) / batches
            if r:
                times[label].append(seconds)
    base = statistics.median(times["no_grad"])
    return [{**about, "precision": precision, "variant": label,
             "seconds_per_batch": statistics.median(values),
             "speedup": base / statistics.median(values)} for label, values in times.items()]


def _setup(kind: str) -> tuple:
    """(train data, teacher source, student factory, augment, recipe) for one control case."""
    g = torch.Generator().manual_seed(0)
    if kind == "mnist-spec":
        train = Images(torch.randint(0, 256, (10_000, 1, 28, 28), dtype=torch.uint8, generator=g),
                       torch.randint(0, 10, (10_000,), generator=g), mean=0.5, std=0.5)
        table = torch.randn(10_000, 10, generator=g)
        return (train, table, lambda: create_model("mlp:784-128-10"), Augment(),
                dict(batch_size=64, lr=1e-3, optimizer="adam"))
    train = Images(torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 100, (1024,), generator=g), mean=(0.5,) * 3, std=(0.25,) * 3)
    teacher = create_model("resnet56", num_classes=100).eval()
    return (train, teacher, lambda: create_model("resnet20", num_classes=100),
            Augment(translate=4, hflip=True),
            dict(batch_size=64, lr=0.05, optimizer="sgd", weight_decay=5e-4))


def control_time(kind: str, together: bool) -> float:
    train, source, student, augment, recipe = _setup(kind)
    torch.manual_seed(0)
    first, second = student(), student()
    common = dict(epochs=1, seed=0, augment=augment, progress=False, **recipe)
    start = time.perf_counter()
    if together:
        fit(Distiller(first, source, "kl", temperature=4.0), train,
            alongside=Alongside(Distiller(second)), **common)
    else:
        fit(Distiller(first, source, "kl", temperature=4.0), train, **common)
        fit(Distiller(second), train, **common)
    return time.perf_counter() - start


def control_rows(repeats: int) -> list[dict]:
    rows = []
    for kind in ("mnist-spec", "resnet20 ← resnet56"):
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(repeats + 1):  # the first round warms up
            for together in ((False, True) if r % 2 else (True, False)):
                seconds = control_time(kind, together)
                if r:
                    times[together].append(seconds)
        after, same = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"case": kind, "one_after_the_other_s": after, "same_pass_s": same,
                     "speedup": after / same})
    return rows


def table(results: dict) -> str:
    lines = [stated(results) + f"Medians of {results['repeats']} repeats "
             "after one warm-up round, variants alternating; ratios within this run.", "",
             "| teacher | memory format | precision | forward pass | ms / batch of 64 | "
             "× no_grad |", "|---|---|---|---|---:|---:|"]
    lines += [f"| {r['teacher']} | {r['layout']} | {r['precision']} | {r['variant']} | "
              f"{1000 * r['seconds_per_batch']:.1f} | {r['speedup']:.2f}x |"
              for r in results["teacher"]]
    lines += ["", "| student and control, one epoch each | one after the other (s) | "
              "same pass (s) | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['one_after_the_other_s']:.2f} | {r['same_pass_s']:.2f} | "
              f"{r['speedup']:.2f}x |" for r in results["control"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", choices=["teacher", "control"])
    args = parser.parse_args()
    results = {"command": "python benchmarks/speedups.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "repeats": args.repeats,
               "env": environment(), "teacher": [], "control": []}
    if args.only != "control":
        results["teacher"] = teacher_rows(args.repeats)
    if args.only != "teacher":
        results["control"] = control_rows(args.repeats)
    write_results(args.out, results, table(results))


if __name__ == "__main__":
    main()
