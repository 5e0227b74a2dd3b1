"""Distill your own teacher into your own student, on your own tensors.

The models are plain ``nn.Module``s and the data is a plain ``TensorDataset``: kdistill's training
loop (``fit``) and ``evaluate`` take any split with ``len()``, ``.labels`` and ``.inputs(index)``,
which ``TensorSplit`` below provides. The task: three interleaved 2-D spirals, easy for a wide
teacher and harder for a 32-unit student. The student is distilled (Hinton's loss by default) and
compared with a control, the same student trained on labels only from the same initial weights:
whether distillation helps is measured, not assumed.

    python examples/distill_your_own_model.py                       # about 10 s on a CPU
    python examples/distill_your_own_model.py --quick               # seconds (the tests run this)
    python examples/distill_your_own_model.py --loss kl --temperature 1 --alpha 1
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdistill import Distiller, evaluate, fit


class TensorSplit:
    """A ``TensorDataset`` of (features, labels) in the form kdistill's engine trains on."""

    def __init__(self, dataset: TensorDataset) -> None:
        self.features, self.labels = dataset.tensors

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.features[index]


def spirals(n: int, classes: int = 3, noise: float = 0.15, seed: int = 0) -> TensorDataset:
    """``n`` points on ``classes`` interleaved spiral arms, with Gaussian noise on the angle."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    radius = torch.rand(n, generator=g)
    angle = (labels * (2 * math.pi / classes) + 4.0 * radius
             + noise * torch.randn(n, generator=g))
    features = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return TensorDataset(features, labels)


class Teacher(nn.Module):
    """A wide MLP: your own architecture, anything that maps inputs to class logits."""

    def __init__(self, inputs: int = 2, width: int = 256, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_student(inputs: int = 2, width: int = 32, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, classes))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short schedule on fewer points")
    parser.add_argument("--loss", default="hinton", help="distillation objective (kdistill losses)")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher term")
    args = parser.parse_args(argv)
    # Models this small run fastest on one thread: more threads only add synchronisation, and
    # thrash badly when another process competes for the cores.
    torch.set_num_threads(1)
    n_train, epochs = (5_000, 10) if args.quick else (10_000, 20)
    train, test = TensorSplit(spirals(n_train, seed=1)), TensorSplit(spirals(2_000, seed=2))
    schedule = dict(epochs=epochs, batch_size=64, lr=3e-3, seed=0)

    torch.manual_seed(0)
    teacher = Teacher()
    fit(Distiller(teacher), train, **schedule)

    torch.manual_seed(0)
    student = make_student()
    torch.manual_seed(0)
    control = make_student()  # the same initial weights as the student
    # A module teacher runs frozen, in eval mode, under no_grad at every step.
    fit(Distiller(student, teacher, args.loss, temperature=args.temperature, alpha=args.alpha),
        train, **schedule)
    fit(Distiller(control), train, **schedule)

    accuracy = {name: evaluate(model, test)["accuracy"] for name, model in
                [("teacher", teacher), ("distilled student", student), ("control", control)]}
    for name, value in accuracy.items():
        print(f"{name:18s} {value:7.2%}")
    print(f"distillation gain over the control: "
          f"{100 * (accuracy['distilled student'] - accuracy['control']):+.2f} points")
    return accuracy


if __name__ == "__main__":
    main()
