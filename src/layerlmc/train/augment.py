"""Image augmentation on a batch of tensors, driven by an explicit generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import AugmentConfig


def augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding and a random horizontal flip, per example.

    ``images`` is ``[B, C, H, W]``; the output has the same shape. Only ``generator`` draws
    random numbers, so a resumed epoch augments exactly as the uninterrupted one did.
    """
    if images.ndim != 4 or (config.crop_padding == 0 and not config.flip):
        return images
    batch, _, height, width = images.shape
    out = images
    if config.crop_padding:
        pad = config.crop_padding
        # torchvision pads black before normalising; after it, black is each channel's lowest value
        black = images.amin(dim=(0, 2, 3), keepdim=True)
        padded = F.pad(images - black, (pad, pad, pad, pad)) + black
        dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
        index = torch.arange(batch, device=images.device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        out = padded[index, channels, rows, cols]
    if config.flip:
        flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out
