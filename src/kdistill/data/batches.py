"""From whole uint8 tensors in memory to normalised batches, with tensor ops only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .. import distributed
from ..errors import DataError


def rows(tensor: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
    """``tensor[index]`` along the first dimension. A 1-D integer index goes through
    ``index_select``, which copies whole rows (about 3x faster than advanced indexing)."""
    if isinstance(index, torch.Tensor) and index.dim() == 1 and index.dtype in (torch.int64,
                                                                                torch.int32):
        return tensor.index_select(0, index)
    return tensor[index]


def per_channel(values: float | Sequence[float]) -> tuple[float, ...]:
    """One normalisation value or one per channel, as a tuple."""
    return (float(values),) if isinstance(values, (int, float)) else tuple(map(float, values))


def normalize(images: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float [B, C, H, W], as ToTensor() then Normalize(mean, std) with
    one value for every channel or one per channel. ([B, H, W] is taken as one channel.)"""
    x = (images.unsqueeze(1) if images.dim() == 3 else images).to(dtype)
    mean, std = per_channel(mean), per_channel(std)
    if len(set(mean)) == 1 and len(set(std)) == 1:  # scalars: the MNIST tutorial's exact arithmetic
        return (x * (1.0 / (255.0 * std[0]))).sub_(mean[0] / std[0])
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"{len(mean)} means and {len(std)} stds for {x.shape[1]} channels")
    shape = (1, -1, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=dtype, device=x.device)
    offset = torch.tensor([m / s for m, s in zip(mean, std)], dtype=dtype, device=x.device)
    return (x * scale.view(shape)).sub_(offset.view(shape))


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  shuffle: bool = True, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Index batches over ``n`` examples: a seeded permutation, last batch kept (like DataLoader).
    The permutation is drawn on the CPU and moved to ``device`` once, not once per batch (a
    per-batch host-to-GPU copy would wait for the GPU every step)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.to(device).split(batch_size)


@dataclass
class Images:
    """A labelled split in memory (uint8 [N, C, H, W], labels int64 [N]) plus the per-channel
    normalisation that turns it into model inputs. [N, H, W] images are taken as one channel."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: float | Sequence[float] = 0.5
    std: float | Sequence[float] = 0.5

    def __post_init__(self) -> None:
        if self.images.dim() == 3:
            self.images = self.images.unsqueeze(1)

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: torch.Tensor | slice) -> torch.Tensor:
        return normalize(rows(self.images, index), self.mean, self.std)

    def rank_slice(self) -> slice:
        """This process's contiguous share of the examples (all of them outside torchrun)."""
        world, rank = distributed.world_size(), distributed.rank()
        return slice(rank * len(self) // world, (rank + 1) * len(self) // world)

    def subset(self, index: torch.Tensor | slice) -> "Images":
        return Images(rows(self.images, index), rows(self.labels, index), self.mean, self.std)

    def to(self, device: torch.device | str) -> "Images":
        """The same split held on ``device`` (moved once; batches are then cut there)."""
        return Images(self.images.to(device), self.labels.to(device), self.mean, self.std)

    @property
    def device(self) -> torch.device:
        return self.images.device


def check_channels(section: str, norm: dict, channels: int) -> None:
    """One value, or one per channel, for each of ``norm``'s ``mean`` / ``std`` (None: unset);
    else one line naming ``section.key``."""
    for key, values in norm.items():
        count = 1 if values is None else len(per_channel(values))
        if count not in (1, channels):
            raise DataError(f"config key '{section}.{key}': {count} values for {channels}-channel "
                            "images", "give one value or one per channel")


def split(dataset, val_size: int = 0, mean: float | Sequence[float] | None = None,
          std: float | Sequence[float] | None = None) -> tuple[Images, Images, Images]:
    """Train / validation / test of a :class:`~kdistill.data.Dataset`, normalised lazily by
    ``mean`` / ``std`` (default the dataset's own). Validation is the data's own val split when
    it has one, else the last ``val_size`` training images (never trained on)."""
    norm = {"mean": dataset.mean if mean is None else mean,
            "std": dataset.std if std is None else std}
    check_channels("data", norm, dataset.shape[0])
    test = Images(dataset.test_images, dataset.test_labels, **norm)
    if dataset.val_images is not None:
        return (Images(dataset.train_images, dataset.train_labels, **norm),
                Images(dataset.val_images, dataset.val_labels, **norm), test)
    n_train = len(dataset.train_labels) - val_size
    if n_train < 1:
        raise DataError(f"config key 'data.val_size': {val_size} leaves no training data",
                        "use a smaller validation split")
    return (Images(dataset.train_images[:n_train], dataset.train_labels[:n_train], **norm),
            Images(dataset.train_images[n_train:], dataset.train_labels[n_train:], **norm), test)


def renormalize(source: tuple, target: tuple) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The map from inputs normalised by ``source`` (mean, std) to the same pixels normalised by
    ``target``: per channel ``x * s_std / t_std + (s_mean - t_mean) / t_std``, equal to
    normalising the uint8 batch the target's way up to float rounding. None when they agree."""
    (s_mean, s_std), (t_mean, t_std) = ((per_channel(m), per_channel(s)) for m, s in (source, target))
    if (s_mean, s_std) == (t_mean, t_std):
        return None
    c = max(len(s_mean), len(s_std), len(t_mean), len(t_std))
    full = [v * c if len(v) == 1 else v for v in (s_mean, s_std, t_mean, t_std)]
    scale = [ss / ts for ss, ts in zip(full[1], full[3])]
    shift = [(sm - tm) / ts for sm, tm, ts in zip(full[0], full[2], full[3])]

    def to_target(x: torch.Tensor) -> torch.Tensor:
        a = torch.tensor(scale, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        b = torch.tensor(shift, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x * a + b
    return to_target
