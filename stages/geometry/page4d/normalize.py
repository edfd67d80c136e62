"""Ground-truth normalisation of a training sample (spec ``page4d.md`` §12.2, as in VGGT and PAGE-4D).

Per sequence b:
- the frame-0 camera becomes the world: E'_i = E_i E_0^-1 (so E'_0 = I);
- world points move into the frame-0 camera: X' = R_0 X + t_0;
- s = sum_valid ||X'|| / (N_valid + 1e-3), clamped to [1e-6, 1e6], is the mean distance of the valid points from
  the frame-0 camera;
- translations, depths and points are divided by s, so that this mean distance is 1.

The network predicts in this normalised frame, so predictions and normalised targets compare directly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

SCALE_EPS = 1e-3
SCALE_MIN, SCALE_MAX = 1e-6, 1e6


class NormalizedTargets(NamedTuple):
    world_to_camera: Tensor  # (B, S, 4, 4) OpenCV, frame 0 = identity, translations in normalised units
    world_points: Tensor     # (B, S, H, W, 3) in the frame-0 camera, normalised units
    depth: Tensor            # (B, S, H, W) z-depth, normalised units
    scale: Tensor            # (B,) the divisor s of each sequence (metres, or the scene's units, per unit)


def invert_rigid(world_to_camera: Tensor) -> Tensor:
    """Closed-form inverse of rigid 4x4 transforms (..., 4, 4): [R | t]^-1 = [R^T | -R^T t]."""
    R = world_to_camera[..., :3, :3]
    t = world_to_camera[..., :3, 3:]
    out = torch.zeros_like(world_to_camera)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def normalize_targets(world_to_camera: Tensor, world_points: Tensor, depth: Tensor, valid: Tensor) -> NormalizedTargets:
    """Normalise one batch of ground truth.

    world_to_camera: (B, S, 4, 4) OpenCV world-to-camera; world_points: (B, S, H, W, 3) in the same world;
    depth: (B, S, H, W) z-depth (0 where invalid); valid: (B, S, H, W) bool.
    Invalid entries are transformed like the others; only ``valid`` pixels enter the scale.
    """
    first = world_to_camera[:, 0]                                             # (B, 4, 4)
    new_w2c = world_to_camera @ invert_rigid(first)[:, None]                  # (B, S, 4, 4)
    R0, t0 = first[:, :3, :3], first[:, :3, 3]
    points = torch.einsum("bij,bshwj->bshwi", R0, world_points) + t0[:, None, None, None]
    weights = valid.to(points.dtype)
    distance_sum = (points.norm(dim=-1) * weights).flatten(1).sum(1)          # (B,)
    scale = (distance_sum / (weights.flatten(1).sum(1) + SCALE_EPS)).clamp(SCALE_MIN, SCALE_MAX)
    new_w2c = new_w2c.clone()
    new_w2c[:, :, :3, 3] = new_w2c[:, :, :3, 3] / scale[:, None, None]
    return NormalizedTargets(new_w2c, points / scale.view(-1, 1, 1, 1, 1), depth / scale.view(-1, 1, 1, 1), scale)
