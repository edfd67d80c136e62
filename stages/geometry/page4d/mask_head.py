"""PAGE-4D spatial mask head and its alpha schedule.

The head reads the (detached) patch tokens after one frame block and predicts a score m in (-0.5, 0.5) per patch.
In the biased global blocks, the camera and register queries of every frame get ``alpha * m_j`` added to their
attention logit for every patch key j (see :class:`stages.geometry.page4d.layers.SpecialQueryBias`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def mask_alpha_factor(step: float, hold_start: float, hold_end: float) -> float:
    """Schedule a(step) in [0, 1]: 1 before ``hold_start``, 0 from ``hold_end``, a half cosine in between."""
    if step < hold_start:
        return 1.0
    if step >= hold_end:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - hold_start) / (hold_end - hold_start)))


class SpatialMaskHead(nn.Module):
    """Per-image standardised tokens -> depthwise 3x3 -> GELU -> 1x1 (C -> hidden) -> GELU -> 1x1 (hidden -> 1).

    score = sigmoid(logit + stopgrad(channel mean of the standardised tokens)) - 0.5.
    """

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.head0 = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, patch_tokens: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """patch_tokens: (B*S, h*w, C) -> score (B*S, h, w) in (-0.5, 0.5)."""
        BS, _, C = patch_tokens.shape
        x = patch_tokens.transpose(1, 2).reshape(BS, C, grid_h, grid_w)      # (B*S, C, h, w)
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True).clamp(min=1e-6)                 # unbiased, per image and channel
        z = (x - mean) / std
        logit = self.head0(z) + z.mean(dim=1, keepdim=True).detach()        # (B*S, 1, h, w)
        return (torch.sigmoid(logit) - 0.5)[:, 0]
