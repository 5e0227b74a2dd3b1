"""The networks: the spec's teacher CNN and student MLP, and an MLP builder."""
from __future__ import annotations

import math

import torch
from torch import nn


class TeacherNet(nn.Module):
    """The spec's teacher: conv 32@5x5 -> ReLU -> max-pool 5 -> fc 128 -> ReLU -> fc 10.

    67,786 parameters, about 528k multiply-adds per 28x28 image as the spec wrote it.

    The forward pass computes the spec's function, cheaper: the stride-5 pool reads only the
    first 20 of the 24 conv rows and columns, so the conv runs on the 24x24 crop that feeds them;
    ReLU (monotonic) is applied after the max instead of before, so it touches only the pooled
    values; and the conv runs channels-last, oneDNN's fast layout. Outputs equal the spec's up to
    float rounding.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 image_size: int | tuple[int, int] = 28) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        pooled = ((h - 4) // 5, (w - 4) // 5)  # 28 -> conv 24 -> pool 4
        self.crop = (5 * pooled[0] + 4, 5 * pooled[1] + 4)  # the input rows the pool reads
        # channels-last weights, so their gradients keep the layout (DDP buckets expect it)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5).to(memory_format=torch.channels_last)
        self.pool = nn.MaxPool2d(5)
        self.fc1 = nn.Linear(32 * pooled[0] * pooled[1], 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.crop
        x = self.conv1(x[:, :, :h, :w].contiguous(memory_format=torch.channels_last))
        x = torch.relu(self.pool(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    """A ReLU multilayer perceptron over flattened images, e.g. sizes (784, 128, 10).

    ``dropout`` applies after each hidden layer, ``input_dropout`` to the pixels (Hinton et al.
    used 0.5 and 0.2 for their big MLP teacher). Layers are named ``fc1``, ``fc2``, ...
    """

    def __init__(self, sizes: list[int] | tuple[int, ...], dropout: float = 0.0,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"an MLP needs at least two positive layer sizes, got {list(sizes)}")
        self.sizes = [int(s) for s in sizes]
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout else None
        self.dropout = nn.Dropout(dropout) if dropout else None
        for i, (n_in, n_out) in enumerate(zip(self.sizes, self.sizes[1:]), start=1):
            self.add_module(f"fc{i}", nn.Linear(n_in, n_out))
        # A plain tuple (not registered again) for the forward pass: no lookup by name and no
        # no-op modules to call, which matter at batch-1 latency for nets this small.
        self._layers = tuple(getattr(self, f"fc{i}") for i in range(1, len(self.sizes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.input_dropout is not None:
            x = self.input_dropout(x)
        *hidden, last = self._layers
        for layer in hidden:
            x = torch.relu(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return last(x)


class StudentNet(MLP):
    """The spec's student: 784 -> 128 -> ReLU -> 10. 101,770 parameters, ~102k multiply-adds."""

    def __init__(self, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__((in_features, 128, num_classes))


class ConvNet(nn.Module):
    """A stronger CNN teacher: two blocks of (3x3 conv, BatchNorm, ReLU) x2 + 2x2 max-pool, then
    fc 256 with dropout. ``width`` sets the first block's channels (the second has twice as many).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 dropout: float = 0.3, image_size: int | tuple[int, int] = 28) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]

        w = width
        self.features = nn.Sequential(*block(in_channels, w), *block(w, w), nn.MaxPool2d(2),
                                      *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2))
        h, w_ = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.fc1 = nn.Linear(2 * w * (h // 4) * (w_ // 4), 256)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(256, num_classes)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.contiguous(memory_format=torch.channels_last))
        return self.fc2(self.dropout(torch.relu(self.fc1(x.flatten(1)))))


class Ensemble(nn.Module):
    """Several teachers whose soft targets are averaged (Hinton et al. 2015, section 2).

    The output is ``T * log(mean_i softmax(z_i / T))``: logits whose softmax at temperature ``T``
    is exactly the members' average soft target (at T = 1 the average of their probabilities),
    so any logit objective can distil from the ensemble unchanged.
    """

    def __init__(self, members: list[nn.Module], temperature: float = 1.0) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_probs = torch.stack([torch.log_softmax(m(x) / t, dim=1) for m in self.members])
        return t * (torch.logsumexp(log_probs, 0) - math.log(len(self.members)))
