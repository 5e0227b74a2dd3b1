"""Augmentations as batched tensor ops on uint8 images (no per-sample Python)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_translate(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of a uint8 batch [B, H, W] by its own random offset in [-pixels, pixels]
    along both axes, filling with zeros (Hinton et al.'s jitter of up to 2 pixels)."""
    if pixels == 0:
        return images
    b, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pixels, pixels, pixels, pixels))
    # offsets come from the (CPU) generator whatever the device, so runs reproduce everywhere
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, b, 1), generator=generator).to(images.device)
    rows = (dy + torch.arange(h, device=images.device)).unsqueeze(2)  # [B, H, 1]
    cols = (dx + torch.arange(w, device=images.device)).unsqueeze(1)  # [B, 1, W]
    return padded[torch.arange(b, device=images.device).view(b, 1, 1), rows, cols]


def random_affine(images: torch.Tensor, degrees: float, scale: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Rotate each image of a batch [B, H, W] about its centre by its own random angle in
    [-degrees, degrees] and zoom it by a factor in [1 - scale, 1 + scale] (bilinear, zero fill).
    Returns float pixels on the input's 0-255 scale."""
    b, h, w = images.shape
    u = torch.rand(2, b, generator=generator, dtype=torch.float64).float().to(images.device) * 2 - 1
    angle, zoom = u[0] * math.radians(degrees), 1 + u[1] * scale
    cos, sin, zero = torch.cos(angle) / zoom, torch.sin(angle) / zoom, torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    return F.grid_sample(images.unsqueeze(1).float(), grid, align_corners=False).squeeze(1)


def augment(images: torch.Tensor, generator: torch.Generator, translate: int = 0,
            rotate: float = 0.0, scale: float = 0.0) -> torch.Tensor:
    """The training augmentations in order: integer shifts, then rotation and zoom."""
    if translate:
        images = random_translate(images, translate, generator)
    if rotate or scale:
        images = random_affine(images, rotate, scale, generator)
    return images
