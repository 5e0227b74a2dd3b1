"""The seed spec's experiment written the plain way, as its notebook does it: per-sample
ToTensor/Normalize in a Dataset, a DataLoader, the teacher re-run on every student batch, and
the spec's networks exactly as written (ReLU before the pool, the full 24x24 conv).

Used by ``pipeline.py`` as the baseline kdistill is timed against. torchvision does not import
beside this torch, so ``PerSample`` repeats what ``torchvision.datasets.MNIST`` with
``Compose([ToTensor(), Normalize((0.5,), (0.5,))])`` does for each image: a PIL image from the
uint8 array, ``ToTensor``'s copy, view, permute and division, ``Normalize``'s checks and
in-place arithmetic, as torchvision's source does them: 52–74 µs an image here, where the
shortcut of commit 3a55687 and earlier (the same arithmetic, none of those steps) took 13–16 µs
(the timing command is in the README's Speed section).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset


class SpecTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5)
        self.pool = nn.MaxPool2d(5)
        self.fc1 = nn.Linear(512, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class SpecStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class PerSample(Dataset):
    """torchvision's MNIST with ToTensor() and Normalize((0.5,), (0.5,)), one image at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img, target = self.images[i], int(self.labels[i])
        img = Image.fromarray(img.numpy(), mode="L")                        # MNIST.__getitem__
        x = torch.from_numpy(np.array(img, np.uint8, copy=True))           # ToTensor
        x = x.view(img.size[1], img.size[0], 1).permute((2, 0, 1)).contiguous()
        x = x.to(dtype=torch.get_default_dtype()).div(255)
        mean = torch.as_tensor((0.5,), dtype=x.dtype, device=x.device)    # Normalize
        std = torch.as_tensor((0.5,), dtype=x.dtype, device=x.device)
        if (std == 0).any():
            raise ValueError("std evaluated to zero")
        return x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1)), target


def kd_loss(student_logits, teacher_logits):
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.softmax(teacher_logits, dim=1),
                    reduction="batchmean")


def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def run(train_images, train_labels, test_images, test_labels, epochs: int = 5) -> dict:
    """Teacher (CE) then student (spec KL), each evaluated after every epoch; phase times."""
    torch.manual_seed(0)
    train = DataLoader(PerSample(train_images, train_labels), batch_size=64, shuffle=True)
    test = DataLoader(PerSample(test_images, test_labels), batch_size=64)
    times: dict[str, float] = {"train_teacher": 0.0, "train_student": 0.0, "evaluate": 0.0}
    teacher, student = SpecTeacher(), SpecStudent()
    history: dict[str, list[float]] = {"teacher": [], "student": []}
    for role, model in (("teacher", teacher), ("student", student)):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            model.train()
            start = time.perf_counter()
            for x, y in train:
                out = model(x)
                if role == "teacher":
                    loss = F.cross_entropy(out, y)
                else:
                    teacher.eval()
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                    loss = kd_loss(out, teacher_logits)
                opt.zero_grad()
                loss.backward()
                opt.step()
            times[f"train_{role}"] += time.perf_counter() - start
            start = time.perf_counter()
            history[role].append(accuracy(model, test))
            times["evaluate"] += time.perf_counter() - start
    return {"times": times, "history": history}
