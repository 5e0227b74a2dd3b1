"""The seed spec's experiment written the plain way, as its notebook does it: per-sample
ToTensor/Normalize in a Dataset, a DataLoader, the teacher re-run on every student batch, and
the spec's networks exactly as written (ReLU before the pool, the full 24x24 conv).

Used by ``pipeline.py`` as the baseline kdistill is timed against. torchvision is not
available here, so ToTensor/Normalize are emulated per sample with the same arithmetic.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
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
    """transforms.Compose([ToTensor(), Normalize((0.5,), (0.5,))]) applied one image at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.numpy(), labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0)  # ToTensor
        return (x - 0.5) / 0.5, int(self.labels[i])                          # Normalize


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
