"""CPU seconds per training epoch of the CIFAR zoo's resnet8x4 and resnet32x4 (RepDistiller's
main pair) on 50,000 CIFAR-shaped synthetic images, and the projected hours of its protocol.

    python benchmarks/cifar_epoch.py [--steps 20] [--warmup 3] [--repeats 2] [--threads N]
        [--out benchmarks/results/cifar-epoch] [--only teacher,distill,control]
        [--variants fp32,bf16,fp32-cl,bf16-cl]

Roles, each trained by `kdistill.fit` (SGD, nesterov momentum 0.9, lr 0.05, weight decay 5e-4,
batch 64, pad-4 random crop + flip, CIFAR-100 mean/std, 100 random classes):
- teacher: resnet32x4 alone, cross-entropy;
- distill: resnet8x4 against a frozen resnet32x4 run live on every batch (hinton, T=4, α=0.9);
- control: resnet8x4 alone, cross-entropy;
- views: resnet32x4 in eval mode as a run computes its logits (BatchNorm folded when
  channels-last), in a run's evaluation batches (64 on a CPU): the pass that computes its
  logits on every view of the training set (162 passes for pad-4 crops and flips);
- table: resnet8x4 distilled from such a table of logits (looked up per image and view).
Variants: fp32 or bf16 autocast of the forward (fit's `precision`), with the models in NCHW or
in channels_last (`-cl`: the models are converted with `.to(memory_format=channels_last)`;
the inputs stay NCHW-contiguous: conv picks the channels_last layout from its weights, and every
activation after the first conv then stays channels_last).

How it times: a whole epoch of resnet32x4 on 2 cores takes an hour or more, so each
measurement is one untimed `fit` of --warmup steps, then a timed `fit` of --steps steps of the
same model, each on its own slice of the 50,000 images that gives exactly those steps. Seconds
per step is the timed fit's `seconds` / steps (all roles and variants run in one process, in
rotation, --repeats times; the table shows medians). Images/s and s/step are measured; seconds
per 50,000-image epoch (782 steps) and the protocol's hours (240 epochs each of teacher,
distillation and control) are PROJECTED from them, never measured. bf16 on a CPU without
AVX512-BF16 or AMX is emulated and usually slower than fp32: the table's header says which of
the two this CPU has.
Writes results.json (every repeat's time) and table.md into --out and prints the table.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import kdistill
from kdistill.data.augment import Augment
from kdistill.engine import Distiller, Images, fit, predict_logits
from kdistill.evaluation import eval_batch_size
from kdistill.models.fold import inference_teacher
from kdistill.pipeline import environment
from results_files import write_results

N_IMAGES, BATCH, CLASSES, EPOCHS = 50_000, 64, 100, 240
STEPS_PER_EPOCH = math.ceil(N_IMAGES / BATCH)  # 782: the last batch holds 16 images
CIFAR100 = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
ROLES = {"teacher": ("resnet32x4", None), "distill": ("resnet8x4", "resnet32x4"),
         "control": ("resnet8x4", None), "views": ("resnet32x4", None),
         "table": ("resnet8x4", "resnet32x4")}
VIEWS = 162  # (2 * 4 + 1)^2 crops x 2 flips: the teacher table's passes over the data
VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False),
            "fp32-cl": ("fp32", True), "bf16-cl": ("bf16", True)}


def cpu_flags() -> dict[str, bool]:
    """Whether the CPU has native bf16 arithmetic (AVX512-BF16 and/or AMX-BF16)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def synthetic_cifar(seed: int = 0) -> Images:
    """50,000 random uint8 images 3x32x32 with random labels of 100 classes, CIFAR-100 mean/std."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (N_IMAGES, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (N_IMAGES,), generator=g)
    return Images(images, labels, *CIFAR100)


def build(role: str, channels_last: bool, images: int) -> Distiller:
    """The role's Distiller; ``table`` reads random logits for every view of ``images`` images
    (the lookup costs the same whatever the values)."""
    torch.manual_seed(0)
    student_name, teacher_name = ROLES[role]
    models = [kdistill.create_model(name, num_classes=CLASSES)
              for name in (student_name, teacher_name) if name]
    if channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    if len(models) == 1:
        return Distiller(models[0])
    teacher = torch.randn(VIEWS, images, CLASSES) if role == "table" else models[1]
    return Distiller(models[0], teacher, "hinton", temperature=4.0, alpha=0.9)


def view_seconds(variant: str, data: Images, warmup: int, steps: int) -> float:
    """Seconds per 64 images of the teacher's table pass: resnet32x4 as a run runs it, in the
    batches a run computes its logits on every view with (``eval_batch_size``'s default)."""
    precision, channels_last = VARIANTS[variant]
    model = build("teacher", channels_last, 0).student
    teacher = inference_teacher(model.eval())
    if warmup:
        predict_logits(teacher, data.subset(slice(0, warmup * BATCH)), None, precision)
    timed = data.subset(slice(warmup * BATCH, (warmup + steps) * BATCH))
    start = time.perf_counter()
    predict_logits(teacher, timed, None, precision)
    return (time.perf_counter() - start) / steps


def step_seconds(role: str, variant: str, data: Images, warmup: int, steps: int) -> float:
    """Seconds per training step: an untimed fit of ``warmup`` steps, then a timed fit of
    ``steps`` steps on the next images, both of the same model. The timed fit builds its own
    optimizer (fit always does), so its first step also allocates the momentum buffers: a memset
    of the parameters, negligible against a step; the weights, oneDNN's primitive caches and the
    allocator are warm. (Timing the difference of two fits would double the noise instead.)"""
    if role == "views":
        return view_seconds(variant, data, warmup, steps)
    precision, channels_last = VARIANTS[variant]
    distiller = build(role, channels_last, max(warmup, steps) * BATCH)
    common = dict(epochs=1, batch_size=BATCH, lr=0.05, seed=0, optimizer="sgd",
                  weight_decay=5e-4, augment=Augment(translate=4, hflip=True),
                  precision=precision, progress=False)
    if warmup:
        fit(distiller, data.subset(slice(0, warmup * BATCH)), **common)
    timed = data.subset(slice(warmup * BATCH, (warmup + steps) * BATCH))
    return fit(distiller, timed, **common)[0]["seconds"] / steps


def measure(args: argparse.Namespace, data: Images) -> dict[tuple[str, str], list[float]]:
    """Every (role, variant) ``--repeats`` times, in rotation so machine drift falls on all."""
    cells = [(r, v) for r in args.only for v in args.variants]
    times: dict[tuple[str, str], list[float]] = {cell: [] for cell in cells}
    for repeat in range(args.repeats):
        for role, variant in cells:
            spent = step_seconds(role, variant, data, args.warmup, args.steps)
            times[role, variant].append(spent)
            print(f"repeat {repeat + 1}/{args.repeats} {role} {variant}: {spent:.3f} s/step",
                  file=sys.stderr, flush=True)
    return times


def summarise(times: dict[tuple[str, str], list[float]]) -> tuple[list[dict], list[dict]]:
    """Per-cell medians and projections; the protocol's projected hours per variant."""
    rows = []
    for (role, variant), spent in times.items():
        step = statistics.median(spent)
        rows.append({"role": role, "student": ROLES[role][0], "teacher": ROLES[role][1],
                     "variant": variant, "seconds_per_step": step, "images_per_s": BATCH / step,
                     "projected_seconds_per_epoch": step * STEPS_PER_EPOCH,
                     "all_seconds_per_step": spent})
    epoch = {(r["role"], r["variant"]): r["projected_seconds_per_epoch"] for r in rows}
    plans = []
    for name, roles in PLANS.items():
        variants = [v for v in VARIANTS if all((r, v) in epoch for r in roles)]
        for v in variants:
            plans.append({"plan": f"{name}, {v}", "variants": {r: v for r in roles},
                          "projected_hours": sum(EPOCHS_OF.get(r, EPOCHS) * epoch[r, v]
                                                 for r in roles) / 3600})
    return rows, plans


# the protocol's roles with a live teacher, and with a table of its logits on every view
PLANS = {"live teacher": ("teacher", "distill", "control"),
         "teacher table": ("teacher", "views", "table", "control")}
EPOCHS_OF = {"views": VIEWS}  # the table: one teacher pass over the data per view


def markdown(meta: dict, rows: list[dict], plans: list[dict]) -> str:
    flags, m = meta["cpu_flags"], meta["machine"]
    native = [k for k, v in flags.items() if v]
    bf16_note = (f"bf16 arithmetic: native ({', '.join(native)})." if native else
                 "bf16 arithmetic: **emulated** (no avx512_bf16 nor amx_bf16 in /proc/cpuinfo): "
                 "bf16 rows are usually slower than fp32 here.")
    lines = [
        "# resnet32x4 / resnet8x4 training on CPU: seconds per epoch (CIFAR-shaped, synthetic)", "",
        f"`{meta['command']}`", "",
        f"{m['cpu']}, {m['threads']} torch threads, torch {m['torch']}, {meta['date']}. "
        f"{bf16_note}", "",
        f"Measured: {meta['steps']} timed steps of batch {BATCH} after {meta['warmup']} untimed, "
        f"median of {meta['repeats']} repeat(s) in rotation. **Projected** (not measured): "
        f"× {STEPS_PER_EPOCH} steps per {N_IMAGES:,}-image epoch, × {EPOCHS} epochs per role.",
        "",
        "| role | model | variant | s/step (measured) | images/s (measured) "
        "| s/epoch (projected) | min/epoch (projected) |",
        "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        model = r["student"] + (f" ← {r['teacher']} ({'table' if r['role'] == 'table' else 'live'})"
                                if r["teacher"] else "")
        if r["role"] == "views":
            batch = eval_batch_size(torch.device("cpu"))
            model += f" inference, batch {batch} (per 64 images)"
        lines.append(f"| {r['role']} | {model} | {r['variant']} | {r['seconds_per_step']:.3f} | "
                     f"{r['images_per_s']:.0f} | {r['projected_seconds_per_epoch']:.0f} | "
                     f"{r['projected_seconds_per_epoch'] / 60:.1f} |")
    if plans:
        fastest = min(plans, key=lambda p: p["projected_hours"])
        lines += ["", f"Protocol, **projected**: {EPOCHS} epochs each of teacher, distillation "
                  "and control (RepDistiller), one after another on this machine; with a "
                  f"teacher table, {VIEWS} teacher passes (one per crop/flip view) replace the "
                  "live teacher's 240.", "",
                  "| plan | roles | hours (projected) |", "|---|---|---:|"]
        for p in plans:
            mark = " (fastest)" if p is fastest else ""
            lines.append(f"| {p['plan']}{mark} | {' + '.join(p['variants'])} | "
                         f"{p['projected_hours']:.1f} |")
    lines += ["", "GPU rows: not measured here (this benchmark times the CPU; the GPU measurement "
              "is a separate device script)."]
    return "\n".join(lines) + "\n"


def choices(text: str, allowed, what: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    bad = [s for s in names if s not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{what}: choose from {','.join(allowed)}, got {text!r}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all cells (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    parser.add_argument("--out", default="benchmarks/results/cifar-epoch", help="output folder")
    parser.add_argument("--only", default=",".join(ROLES),
                        type=lambda s: choices(s, ROLES, "--only"), help="roles to time")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        type=lambda s: choices(s, VARIANTS, "--variants"), help="variants to time")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1, --warmup at least 0")
    if (args.warmup + args.steps) * BATCH > N_IMAGES:
        parser.error(f"--warmup + --steps must be at most {N_IMAGES // BATCH}")
    if args.threads:
        torch.set_num_threads(args.threads)
    times = measure(args, synthetic_cifar())
    rows, plans = summarise(times)
    meta = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": environment(), "cpu_flags": cpu_flags(), "steps": args.steps,
            "warmup": args.warmup, "repeats": args.repeats, "batch_size": BATCH,
            "steps_per_epoch": STEPS_PER_EPOCH, "epochs_per_role": EPOCHS}
    write_results(Path(args.out), {**meta, "rows": rows, "protocol": plans},
                  markdown(meta, rows, plans))


if __name__ == "__main__":
    main()
