"""Image arrays in kdistill's one layout: uint8 [N, C, H, W] with C = 1 or 3, labels int64 [N].

Every source (IDX, CIFAR archives, image folders, npz files, your own arrays) ends here: its
arrays are put in that layout, checked, and converted to the channels and size a run asks for.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

CHANNELS = (1, 3)
_RESIZE_CHUNK = 2048  # images resized at a time: bounds the float copy's memory
MEMORY_FRACTION = 0.5  # the default in-memory limit: this share of the available RAM


def as_nchw(images: np.ndarray, what: str) -> np.ndarray:
    """``images`` as uint8 [N, C, H, W]. [N, H, W] is one channel; for 4-D arrays the channel
    axis is axis 1 when that is 1 or 3 (NCHW), else the last axis when that is 1 or 3 (NHWC)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"{what} must be uint8 pixels 0-255, got {images.dtype}",
                        "convert them, e.g. (x * 255).round().astype('uint8') for floats in [0, 1]")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] in CHANNELS:
        return images
    if images.ndim == 4 and images.shape[3] in CHANNELS:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise DataError(f"{what} have shape {list(images.shape)}",
                    "give images as [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3")


def as_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """``labels`` as int64 [N]; refuses anything but non-negative integers."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DataError(f"{what} must be a 1-D array of integer class indices, got "
                        f"{labels.dtype} {list(labels.shape)}", "give one integer label per image")
    if labels.size and labels.min() < 0:
        raise DataError(f"{what} hold a negative label ({labels.min()})", "labels are 0..classes-1")
    return labels.astype(np.int64)


def check_split(name: str, split: str, images: np.ndarray, labels: np.ndarray,
                classes: int, shape: tuple[int, ...] | None) -> None:
    """One split's images and labels belong together, fit the class list and the image shape."""
    if len(images) != len(labels):
        raise DataError(f"{name} {split} has {len(images)} images but {len(labels)} labels",
                        "the images and labels do not belong together")
    if len(labels) and labels.max() >= classes:
        raise DataError(f"{name} {split} has label {labels.max()} but only {classes} classes",
                        "labels must be 0..classes-1")
    if shape is not None and tuple(images.shape[1:]) != shape:
        raise DataError(f"{name} {split} images are {list(images.shape[1:])} but train images are "
                        f"{list(shape)}", "every split needs images of one shape")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] with ``channels`` channels: grey repeated to RGB, or RGB to grey with
    the ITU-R 601-2 luma weights in Pillow's integer arithmetic (as ``convert("L")``)."""
    if channels not in CHANNELS:
        raise DataError(f"data.channels must be 1 or 3, got {channels}", "use 1 (grey) or 3 (RGB)")
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    r, g, b = images.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(1)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [N, C, H, W] resized to ``size`` (H, W) by antialiased bilinear interpolation."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = [F.interpolate(part.float(), size=size, mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
           for part in images.split(_RESIZE_CHUNK)]
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], *size))


def parse_size(value: int | list[int] | tuple[int, ...] | None) -> tuple[int, int] | None:
    """``data.image_size`` as (H, W): one number is a square."""
    if value is None:
        return None
    sizes = [value] * 2 if isinstance(value, int) else list(value)
    if len(sizes) != 2 or any(int(s) < 1 for s in sizes):
        raise DataError(f"data.image_size must be N or [H, W] of positive sizes, got {value}",
                        "e.g. data.image_size=32")
    return int(sizes[0]), int(sizes[1])


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 [N, C, H, W] pixels on the [0, 1] scale (float64
    sums in chunks, so a large dataset costs no float copy of itself)."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for part in images.split(4096):
        x = part.to(torch.float64).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        squares += (x * x).sum(1)
    count = max(1, images.numel() // c)
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.full_like(std, 255.0))  # a constant channel: scale 1
    return tuple(round(v / 255, 4) for v in mean.tolist()), tuple(round(v / 255, 4) for v in std.tolist())


# ------------------------------------------------------------------------ memory limit
def available_memory_bytes() -> int | None:
    """RAM this process can still use: ``MemAvailable`` (capped by a cgroup v2 limit), else the
    physical memory from ``sysconf``; ``None`` where neither can be read."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:  # a container's own limit, when it is tighter than the host's free memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def default_max_bytes() -> int | None:
    """The default in-memory limit: :data:`MEMORY_FRACTION` of the available RAM (``None``: no
    limit, where the available RAM cannot be read)."""
    available = available_memory_bytes()
    return None if available is None else int(available * MEMORY_FRACTION)


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def check_memory(need: int, max_bytes: int | None, what: str, hint: str) -> None:
    """Refuse (one DataError line) when ``need`` bytes exceed ``max_bytes`` (``None``: the
    default limit)."""
    limit = default_max_bytes() if max_bytes is None else max_bytes
    if limit is None or need <= limit:
        return
    how = (f"{MEMORY_FRACTION:.0%} of the available RAM" if max_bytes is None
           else "max_bytes")
    raise DataError(f"{what} needs {format_bytes(need)} in memory, over the in-memory limit of "
                    f"{format_bytes(limit)} ({how})", hint)
