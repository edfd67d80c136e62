"""Cameras of the synthetic scenes, batched in torch: look-at poses, intrinsics from a field of view, a smooth
handheld path (dolly, pan, shake, roll) and viewpoints on a sphere.

Conventions as everywhere in page4dgs: OpenCV camera axes (x right, y down, z forward), 4x4 world-to-camera
extrinsics, intrinsics in pixels with pixel (row i, column j) centred at (j + 0.5, i + 0.5). The synthetic worlds are
z-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _normalise(v: Tensor) -> Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def look_at(eye: Tensor, target: Tensor, roll: Tensor | None = None) -> Tensor:
    """World-to-camera (..., 4, 4) of cameras at ``eye`` (..., 3) looking at ``target`` (..., 3), world z up,
    rotated by ``roll`` (...) radians about the viewing direction (the camera's x axis turns towards its y axis)."""
    up = torch.zeros_like(eye)
    up[..., 2] = 1.0
    forward = _normalise(target - eye)
    right = _normalise(torch.cross(forward, up, dim=-1))
    down = torch.cross(forward, right, dim=-1)
    if roll is not None:
        c, s = torch.cos(roll)[..., None], torch.sin(roll)[..., None]
        right, down = c * right + s * down, c * down - s * right
    rotation = torch.stack([right, down, forward], dim=-2)             # rows: camera axes in world coordinates
    w2c = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    w2c[..., :3, :3] = rotation
    w2c[..., :3, 3] = -(rotation * eye[..., None, :]).sum(-1)
    w2c[..., 3, 3] = 1.0
    return w2c


def fov_x_from_longer_side(fov: Tensor, width: int, height: int) -> Tensor:
    """Horizontal field of view (radians) of an image whose longer side spans ``fov`` radians."""
    if width >= height:
        return fov
    return 2.0 * torch.atan(torch.tan(0.5 * fov) * (width / height))


def intrinsics(fov_x: Tensor, width: int, height: int) -> Tensor:
    """K (..., 3, 3) with square pixels and the principal point at the image centre, for horizontal field of view
    ``fov_x`` (...) radians: fx = fy = W / (2 tan(fov_x / 2)), the D-NeRF ``camera_angle_x`` convention."""
    focal = 0.5 * width / torch.tan(0.5 * fov_x)
    K = torch.zeros(*fov_x.shape, 3, 3, dtype=fov_x.dtype, device=fov_x.device)
    K[..., 0, 0] = focal
    K[..., 1, 1] = focal
    K[..., 0, 2] = width / 2.0
    K[..., 1, 2] = height / 2.0
    K[..., 2, 2] = 1.0
    return K


def _waves(amplitude: Tensor, frequency: Tensor, phase: Tensor, times: Tensor) -> Tensor:
    """Sum of sinusoids: amplitude (B, K, 3), frequency (B, K) cycles per unit time, phase (B, K, 3), times (B, S)
    -> (B, S, 3)."""
    angle = 2 * math.pi * frequency[:, None, :, None] * times[:, :, None, None] + phase[:, None]
    return (amplitude[:, None] * torch.sin(angle)).sum(dim=2)


@dataclass
class HandheldPath:
    """A casual forward-facing handheld camera path, per batch element (all tensors (B, ...)).

    The eye moves from ``eye`` by ``dolly`` along a smoothstep in time; the camera looks at ``target`` plus a slow
    horizontal ``pan`` sinusoid; the hand adds ``shake`` (a few faster sinusoids, centimetres) to both eye and target
    and a small ``roll``.
    """

    eye: Tensor              # (B, 3) metres
    dolly: Tensor            # (B, 3) metres, total displacement over t in [0, 1]
    target: Tensor           # (B, 3)
    pan_amplitude: Tensor    # (B, 3) metres at the target
    pan_frequency: Tensor    # (B, 1) cycles per unit time
    pan_phase: Tensor        # (B, 1, 3)
    shake_amplitude: Tensor  # (B, K, 3) metres
    shake_frequency: Tensor  # (B, K)
    shake_phase: Tensor      # (B, K, 3)
    roll_amplitude: Tensor   # (B,) radians
    roll_frequency: Tensor   # (B,)
    roll_phase: Tensor       # (B,)

    def world_to_camera(self, times: Tensor) -> Tensor:
        """(B, S, 4, 4) world-to-camera at ``times`` (B, S) in [0, 1]."""
        ease = times * times * (3.0 - 2.0 * times)
        eye = self.eye[:, None] + ease[..., None] * self.dolly[:, None]
        shake = _waves(self.shake_amplitude, self.shake_frequency, self.shake_phase, times)
        pan = _waves(self.pan_amplitude[:, None], self.pan_frequency, self.pan_phase, times)
        target = self.target[:, None] + pan + 3.0 * shake
        roll = self.roll_amplitude[:, None] * torch.sin(
            2 * math.pi * self.roll_frequency[:, None] * times + self.roll_phase[:, None])
        return look_at(eye + shake, target, roll)


def sphere_viewpoints(generator: torch.Generator, count: int, radius: float, elevation_deg: tuple[float, float],
                      target: tuple[float, float, float] = (0.0, 0.0, 0.0), dtype=torch.float32) -> Tensor:
    """World-to-camera (count, 4, 4) of cameras at random azimuths and elevations on a sphere, looking at
    ``target``."""
    device = generator.device
    azimuth = 2 * math.pi * torch.rand(count, generator=generator, device=device, dtype=dtype)
    lo, hi = (math.radians(e) for e in elevation_deg)
    # Uniform in area between the two elevations: sin(elevation) uniform.
    s = math.sin(lo) + (math.sin(hi) - math.sin(lo)) * torch.rand(count, generator=generator, device=device,
                                                                   dtype=dtype)
    elevation = torch.asin(s)
    centre = torch.tensor(target, dtype=dtype, device=device)
    eye = centre + radius * torch.stack([torch.cos(elevation) * torch.cos(azimuth),
                                         torch.cos(elevation) * torch.sin(azimuth), torch.sin(elevation)], -1)
    return look_at(eye, centre.expand_as(eye))
