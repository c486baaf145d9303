"""Create ML's six augmentations as random transforms of a training batch.

Each image in the batch gets its own random draw. Batches are float tensors
(N, 3, H, W) in 0..1; the output has the same shape and range.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .parameters import Augmentation


def augment_batch(x: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    if not aug.enabled:
        return x
    n = x.shape[0]
    if aug.flip or aug.rotation or aug.crop:
        x = _affine(x, aug)
    if aug.blur:
        x = _blur(x, torch.rand(n) * aug.blur)
    if aug.exposure:
        gain = 1 + (torch.rand(n, 1, 1, 1) * 2 - 1) * aug.exposure
        x = x * gain
    if aug.noise:
        x = x + torch.randn_like(x) * (torch.rand(n, 1, 1, 1) * aug.noise)
    return x.clamp_(0, 1)


def _affine(x: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    """Flip, rotate and zoom-crop in one resampling, with reflected borders."""
    n = x.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(aug.rotation)
    zoom = 1 - torch.rand(n) * aug.crop  # fraction of the side that stays visible
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if aug.flip else torch.ones(n)
    # A crop may sit anywhere that keeps it inside the image.
    shift = (torch.rand(n, 2) * 2 - 1) * (1 - zoom).unsqueeze(1)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([
        torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
        torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (0 leaves the image as it is)."""
    n, c, h, w = x.shape
    # Reflect padding needs the radius below the image side.
    radius = min(max(1, math.ceil(3 * float(sigma.max()))), h - 1, w - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp(min=1e-3).to(x.dtype).view(-1, 1)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * s**2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, K)
    k = kernel.repeat_interleave(c, dim=0)  # one kernel per (image, channel), grouped conv
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"),
                    k.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"),
                    k.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)
