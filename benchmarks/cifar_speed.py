"""Distillation epochs at CIFAR scale: the loop people write today against ``kdistill run``.

    python benchmarks/cifar_speed.py [--images 2048] [--rounds 2] [--workers 2] [--device cpu]
        [--pairs resnet56:resnet20,resnet32x4:resnet8x4] [--kdistill precision=bf16 ...]

``--device cuda`` runs both sides on the GPU (the reference loop copies each batch there, as
RepDistiller does, and its time ends with a synchronize).

Both sides distil the same student from the same (untrained: speed does not depend on its
weights) teacher on the same synthetic CIFAR-shaped data: ``--images`` uint8 images 3x32x32 of
100 classes, batch 64, SGD lr 0.05 momentum 0.9 weight decay 5e-4, KD with T = 4, CE weight 0.1
and KD weight 0.9, one epoch over ``--images`` images.

(a) The reference loop, written as RepDistiller's ``train_student.py`` does it: a map-style
    dataset of PIL images with per-sample RandomCrop(32, padding=4), RandomHorizontalFlip,
    ToTensor and Normalize (the same operations written with Pillow and numpy, as torchvision is
    not installed here) through a DataLoader with ``--workers`` workers; the teacher in eval mode
    under no_grad on every batch; one SGD step per batch of 64.
(b) ``kdistill run`` on the same pair and recipe (the ``cifar100-<teacher>-<student>`` preset,
    teacher used as built, no control, no bench), plus ``--kdistill`` overrides to try.

Each epoch runs in its own fresh process, the two sides alternating, ``--rounds`` times; the
table gives the median images/s of the epoch's training steps (data loading included), seconds
per 50,000-image epoch and the projected wall time of the full protocol (240 teacher + 240
student + 240 control epochs, the teacher's epochs at the student's rate scaled by nothing: a
lower bound). Peak memory is the process's maximum resident set size.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_files import write_results

RESULTS = Path(__file__).parent / "results" / "cifar-speed"
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
FULL, EPOCHS = 50_000, 240


def synthetic(path: Path, images: int) -> None:
    """CIFAR-shaped data as an npz both sides read: random pixels, 100 classes."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    test = min(256, images)
    np.savez(path, x_train=x, y_train=rng.integers(0, 100, images),
             x_test=x[:test], y_test=rng.integers(0, 100, test))


def reference_epoch(data: Path, teacher_name: str, student_name: str, workers: int,
                    device: str) -> dict:
    """One epoch of the reference loop (runs in a child process) on ``device``; seconds and
    images."""
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageOps

    from kdistill.models import create_model

    arrays = np.load(data)
    x, y = arrays["x_train"], arrays["y_train"]
    mean = np.array(MEAN, np.float32).reshape(3, 1, 1)
    std = np.array(STD, np.float32).reshape(3, 1, 1)

    class PilCifar(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, i: int):
            image = ImageOps.expand(Image.fromarray(x[i]), border=4, fill=0)  # RandomCrop pad 4
            top, left = np.random.randint(0, 9, 2)
            image = image.crop((left, top, left + 32, top + 32))
            if np.random.rand() < 0.5:  # RandomHorizontalFlip
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            pixels = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0  # ToTensor
            return torch.from_numpy((pixels - mean) / std), int(y[i])  # Normalize

    cuda = device.startswith("cuda")
    loader = torch.utils.data.DataLoader(PilCifar(), batch_size=64, shuffle=True,
                                         num_workers=workers, pin_memory=cuda)
    teacher = create_model(teacher_name, num_classes=100).eval().to(device)
    student = create_model(student_name, num_classes=100).train().to(device)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.no_grad():
            soft = teacher(inputs)
        logits = student(inputs)
        kd = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(soft / 4, 1), reduction="batchmean")
        loss = 0.1 * F.cross_entropy(logits, targets) + 0.9 * 16 * kd
        opt.zero_grad()
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "images": len(y)}


def kdistill_epoch(data: Path, teacher_name: str, student_name: str, extra: list[str],
                   device: str) -> dict:
    """One distillation epoch of ``kdistill run`` on ``device`` (in this child process); its
    training time."""
    import kdistill

    preset = f"cifar100-{teacher_name}-{student_name}"
    with tempfile.TemporaryDirectory() as tmp:
        result = kdistill.run(preset, out=Path(tmp) / "run", quiet=True, overrides=[
            f"data.name={data}", "data.mean=null", "data.std=null", "teacher.epochs=0",
            "student.epochs=1", "control=false", "bench.enabled=false", f"device={device}",
            *extra])
    history = result.metrics["models"]["student"]["history"]
    return {"seconds": history[0]["seconds"], "images": result.metrics["dataset"]["train_size"]}


def child(args: argparse.Namespace) -> None:
    teacher, student = args.pair.split(":")
    if args.side == "reference":
        out = reference_epoch(args.data, teacher, student, args.workers, args.device)
    else:
        out = kdistill_epoch(args.data, teacher, student, args.kdistill, args.device)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure(args: argparse.Namespace, data: Path, pair: str, side: str) -> dict:
    command = [sys.executable, __file__, "--child", side, "--pair", pair, "--data", str(data),
               "--workers", str(args.workers), "--device", args.device,
               "--kdistill", *args.kdistill]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{side} {pair} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    rate = statistics.median(r["images"] / r["seconds"] for r in runs)
    return {"images_per_s": rate, "seconds_per_epoch": FULL / rate,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs}


def table(results: dict, command: str, device: str = "cpu") -> str:
    import torch

    from kdistill.pipeline import environment

    env = environment(torch.device(device))
    where = env["cpu"] if device == "cpu" else f"{env['device']}, {env['cpu']}"
    lines = [f"`{command}` ({where}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}). Median of the rounds; epoch and protocol times "
             "are projected from the measured images/s (240 + 240 + 240 epochs at the "
             "distillation rate: a lower bound for the teacher's epochs).", "",
             "| pair | side | images/s | s / 50k epoch | protocol (h, projected) | peak RSS (MB) "
             "| kdistill ÷ reference |", "|---|---|---:|---:|---:|---:|---:|"]
    for pair, sides in results.items():
        ratio = sides["kdistill"]["images_per_s"] / sides["reference"]["images_per_s"]
        for side, s in sides.items():
            lines.append(f"| {pair} | {side} | {s['images_per_s']:.0f} | "
                         f"{s['seconds_per_epoch']:.0f} | "
                         f"{3 * EPOCHS * s['seconds_per_epoch'] / 3600:.1f} | "
                         f"{s['peak_rss_mb']:.0f} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--pairs", default="resnet56:resnet20,resnet32x4:resnet8x4")
    parser.add_argument("--kdistill", nargs="*", default=[], metavar="key=value")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["reference", "kdistill"], dest="side")
    parser.add_argument("--pair")
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.side:
        return child(args)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cifar-shaped.npz"
        synthetic(data, args.images)
        for pair in args.pairs.split(","):
            runs: dict = {"reference": [], "kdistill": []}
            for k in range(args.rounds):  # alternating order, each epoch its own process
                for side in (("reference", "kdistill") if k % 2 == 0 else ("kdistill", "reference")):
                    runs[side].append(measure(args, data, pair, side))
                    print(f"{pair} {side}: {runs[side][-1]}", flush=True)
            teacher, student = pair.split(":")
            results[f"{student} ← {teacher}"] = {s: summarise(r) for s, r in runs.items()}
    command = "python benchmarks/cifar_speed.py " + " ".join(sys.argv[1:])
    write_results(args.out, {"command": command, **results}, table(results, command, args.device))


if __name__ == "__main__":
    main()
