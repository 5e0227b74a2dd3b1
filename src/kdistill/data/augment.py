"""Augmentations as batched tensor ops on uint8 images (no per-sample Python).

Every op takes a batch [B, C, H, W] (or [B, H, W], treated as one channel) and returns the same
shape, drawing each image's randomness from a seeded CPU generator so runs reproduce on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ELASTIC_SIGMA = 4.0  # px: the smoothing of Simard et al.'s (2003) elastic displacement fields


def draw_offsets(n: int, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image offsets [2, n, 1] (dy, dx) in [0, 2 * pixels] (``pixels`` means no shift),
    drawn from the (CPU) generator whatever the device, so runs reproduce everywhere."""
    return torch.randint(0, 2 * pixels + 1, (2, n, 1), generator=generator)


def shift(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shift each image of [B, C, H, W] by its offsets dy, dx [B, 1] from :func:`draw_offsets`
    (zero fill): the same as padding by ``pixels`` and cropping the original size at (dy, dx)."""
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    padded = F.pad(images.reshape(b, -1, h, w), (pixels, pixels, pixels, pixels))
    c, hp, wp, k = padded.shape[1], h + 2 * pixels, w + 2 * pixels, 2 * pixels + 1
    # every image's k x k windows as a view [B, k, k, C, H, W]; picking one per image copies
    # whole rows (about 3x faster than indexing each pixel)
    windows = padded.as_strided((b, k, k, c, h, w), (c * hp * wp, wp, 1, hp * wp, wp, 1))
    picked = windows[torch.arange(b, device=images.device), dy.view(-1), dx.view(-1)]
    return picked.reshape(images.shape)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of [B, C, H, W] with a separable Gaussian of ``sigma`` px (zero padded)."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    b, c, h, w = x.shape
    x = x.reshape(b * c, 1, h, w)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, radius))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return x.reshape(b, c, h, w)


def random_warp(images: torch.Tensor, degrees: float, scale: float, generator: torch.Generator,
                elastic: float = 0.0) -> torch.Tensor:
    """Rotate each image of a batch [B, C, H, W] about its centre by its own random angle in
    [-degrees, degrees], zoom it by a factor in [1 - scale, 1 + scale] and, with ``elastic`` = α,
    displace its pixels by a random field smoothed by a Gaussian of σ = 4 px and scaled by α
    (Simard et al., 2003, used α = 34). One bilinear resampling, zero fill; returns float pixels
    on the input's 0-255 scale."""
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    u = torch.rand(2, b, generator=generator, dtype=torch.float64).float().to(images.device) * 2 - 1
    angle, zoom = u[0] * math.radians(degrees), 1 + u[1] * scale
    cos, sin, zero = torch.cos(angle) / zoom, torch.sin(angle) / zoom, torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    if elastic:
        field = torch.rand(b, 2, h, w, generator=generator).to(images.device) * 2 - 1
        field = gaussian_blur(field, ELASTIC_SIGMA) * elastic  # pixels, (dx, dy)
        to_grid = torch.tensor([2 / w, 2 / h], device=images.device)  # grid units span 2 / side
        grid = grid + field.permute(0, 2, 3, 1) * to_grid
    planes = images.reshape(b, -1, h, w).float()
    return F.grid_sample(planes, grid, align_corners=False).reshape(images.shape)


def random_erase(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square at a uniformly random centre in each image of
    [B, C, H, W], all channels alike (cutout, DeVries & Taylor 2017: a square near the border is
    clipped by it)."""
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    centre = torch.rand(2, b, 1, 1, generator=generator, dtype=torch.float64).to(images.device)
    top = (centre[0] * h).long() - size // 2
    left = (centre[1] * w).long() - size // 2
    rows = torch.arange(h, device=images.device).view(1, h, 1) - top
    cols = torch.arange(w, device=images.device).view(1, 1, w) - left
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    return images.masked_fill(inside.view(b, *[1] * (images.dim() - 3), h, w), 0)


@dataclass(frozen=True)
class Augment:
    """The training augmentations, drawn per image from a seeded generator: integer shifts of up
    to ``translate`` px (pad-and-random-crop with zero padding ``translate``: the same op), a
    horizontal flip with probability 1/2 (``hflip``), then one resampling for rotation
    (``rotate`` degrees), zoom (``scale``) and elastic distortion (``elastic`` = α), then a
    zeroed ``erase`` x ``erase`` square. All zero: no augmentation (falsy)."""

    translate: int = 0
    rotate: float = 0.0
    scale: float = 0.0
    elastic: float = 0.0
    erase: int = 0
    hflip: bool = False

    def __bool__(self) -> bool:
        return bool(self.translate or self.hflip or self._continuous)

    @property
    def _continuous(self) -> bool:
        """Whether anything beyond shifts and flips is drawn (rotation, zoom, elastic, erasing)."""
        return bool(self.rotate or self.scale or self.elastic or self.erase)

    @property
    def views(self) -> int | None:
        """How many distinct images one image can become: (2 * translate + 1)^2 shifts, times 2
        with flips; None when the augmentation is continuous or absent."""
        if self._continuous or not (self.translate or self.hflip):
            return None
        return (2 * self.translate + 1) ** 2 * (2 if self.hflip else 1)

    def view(self, images: torch.Tensor, view: int) -> torch.Tensor:
        """Every image of [N, C, H, W] as view number ``view`` (0 <= view < ``views``)."""
        side = 2 * self.translate + 1
        code = [view % side ** 2 // side, view % side] + ([view // side ** 2] if self.hflip else [])
        offsets = torch.tensor(code, device=images.device).view(-1, 1, 1).expand(-1, len(images), 1)
        return self.apply_shifts(images, offsets)[0]

    def draw_shifts(self, sizes: list[int], generator: torch.Generator,
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Offsets [2, b, 1] (dy, dx), or [3, b, 1] with each image's flip bit, for consecutive
        batches of ``sizes`` (for :meth:`apply_shifts`), drawn in one call and moved to
        ``device`` in one copy: the shifts are the very values that drawing each batch's
        :func:`draw_offsets` in turn gives."""
        n = sum(sizes)
        shifts = draw_offsets(n, self.translate, generator).view(-1)
        flips = torch.randint(0, 2, (n,), generator=generator) if self.hflip else shifts[:0]
        shifts, flips = torch.cat([shifts, flips]).to(device).split([2 * n, len(flips)])
        batches = [part.view(2, -1, 1) for part in shifts.split([2 * b for b in sizes])]
        if not self.hflip:
            return batches
        return [torch.cat([s, f.view(1, -1, 1)]) for s, f in zip(batches, flips.split(sizes))]

    def apply_shifts(self, images: torch.Tensor, offsets: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch shifted (and flipped) by ``offsets`` from :meth:`draw_shifts` and each
        image's view number (no random draws here, so a CUDA graph can record it)."""
        offsets = offsets.to(images.device)
        side = 2 * self.translate + 1
        dy, dx = offsets[0], offsets[1]
        view = (dy * side + dx).view(-1)
        if self.translate:
            images = shift(images, dy, dx, self.translate)
        if self.hflip:
            flip = offsets[2].view(-1, *[1] * (images.dim() - 1)).bool()
            images = torch.where(flip, images.flip(-1), images)
            view = view + offsets[2].view(-1) * side ** 2
        return images, view

    def __call__(self, images: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The augmented batch and, for shifts and flips alone, each image's view number."""
        view = None
        if self.translate or self.hflip:
            images, view = self.apply_shifts(images, self.draw_shifts([len(images)], generator)[0])
        if not self._continuous:
            return images, view
        if self.rotate or self.scale or self.elastic:
            images = random_warp(images, self.rotate, self.scale, generator, self.elastic)
        if self.erase:
            images = random_erase(images, self.erase, generator)
        return images, None
