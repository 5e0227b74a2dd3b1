"""Augmentations as batched tensor ops on uint8 images (no per-sample Python)."""
from __future__ import annotations

import torch


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
