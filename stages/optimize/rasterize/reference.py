"""A slow, obviously-correct rasterizer for tests: every Gaussian at every pixel, front to back, in float64.

It shares no code with the fast path: its own projection (explicit matrices, no box or tile culling) and a plain
loop over Gaussians in depth order applying spec gsplat.md §3.8 to whole images. Differentiable through autograd.
Use only for small scenes (cost: N full-image passes per camera).
"""

from __future__ import annotations

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_STOP = 1e-4


def reference_project(means: Tensor, quats: Tensor, scales: Tensor, world_to_camera: Tensor, K: Tensor,
                      width: int, height: int, near_plane: float, far_plane: float, eps2d: float):
    """One camera. Returns means2d [N, 2], conics [N, 3], depths [N], det_ratio [N] (det before / after blur) and
    visible [N] bool (inside the depth range with a positive blurred determinant)."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rotation = torch.stack([
        torch.stack([1 - 2 * (y ** 2 + z ** 2), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x ** 2 + z ** 2), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x ** 2 + y ** 2)], -1),
    ], -2)                                                                              # [N, 3, 3]
    covariance = rotation @ torch.diag_embed(scales ** 2) @ rotation.transpose(-1, -2)  # [N, 3, 3]
    cam_rotation, cam_translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
    p = means @ cam_rotation.T + cam_translation                                       # [N, 3]
    covariance_cam = cam_rotation @ covariance @ cam_rotation.T

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    visible = (p[:, 2] >= near_plane) & (p[:, 2] <= far_plane)
    pz = torch.where(visible, p[:, 2], torch.ones_like(p[:, 2]))
    means2d = torch.stack([fx * p[:, 0] / pz + cx, fy * p[:, 1] / pz + cy], -1)
    # Jacobian with the view direction clamped to the image plus 0.3 x the half field of view on each side.
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    u = torch.clamp(p[:, 0] / pz, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
    v = torch.clamp(p[:, 1] / pz, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
    zero = torch.zeros_like(pz)
    jacobian = torch.stack([torch.stack([fx / pz, zero, -fx * u / pz], -1),
                            torch.stack([zero, fy / pz, -fy * v / pz], -1)], -2)       # [N, 2, 3]
    cov2d = jacobian @ covariance_cam @ jacobian.transpose(-1, -2)                      # [N, 2, 2]
    det_before = torch.linalg.det(cov2d)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype)
    det = torch.linalg.det(cov2d)
    visible = visible & (det > 0)
    inverse = torch.linalg.inv(torch.where(visible[:, None, None], cov2d, torch.eye(2, dtype=cov2d.dtype)))
    conics = torch.stack([inverse[:, 0, 0], inverse[:, 0, 1], inverse[:, 1, 1]], -1)
    det_ratio = det_before / torch.where(visible, det, torch.ones_like(det))
    return means2d, conics, p[:, 2], det_ratio, visible


def reference_composite(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, depths: Tensor,
                        visible: Tensor, width: int, height: int, background: Tensor | None = None,
                        return_stopped: bool = False):
    """One camera, every Gaussian at every pixel. means2d [N, 2], conics [N, 3], colors [N, D], opacities [N],
    depths [N], visible [N] bool, background [D] or None -> (image [H, W, D], alpha [H, W, 1]) and, with
    return_stopped, the pixels [H, W] bool that met the transmittance stop."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=means2d.dtype), torch.arange(width, dtype=means2d.dtype),
                                indexing="ij")
    pixel_x, pixel_y = cols + 0.5, rows + 0.5                                          # pixel centres
    transmittance = torch.ones(height, width, dtype=means2d.dtype)
    image = torch.zeros(height, width, colors.shape[-1], dtype=means2d.dtype)
    finished = torch.zeros(height, width, dtype=torch.bool)
    for k in torch.sort(depths.detach(), stable=True).indices.tolist():
        if not visible[k]:
            continue
        a, b, c = conics[k]
        dx, dy = means2d[k, 0] - pixel_x, means2d[k, 1] - pixel_y
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opacities[k] * torch.exp(-sigma), max=MAX_ALPHA)
        candidate = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~finished
        next_transmittance = transmittance * (1 - alpha)
        stops = candidate & (next_transmittance <= TRANSMITTANCE_STOP)   # this Gaussian is not composited
        finished = finished | stops
        composited = candidate & ~stops
        image = image + torch.where(composited, alpha * transmittance, 0.0)[..., None] * colors[k]
        transmittance = torch.where(composited, next_transmittance, transmittance)
    if background is not None:
        image = image + transmittance[..., None] * background
    if return_stopped:
        return image, (1 - transmittance)[..., None], finished
    return image, (1 - transmittance)[..., None]


def reference_rasterization(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                            viewmats: Tensor, Ks: Tensor, width: int, height: int, near_plane: float = 0.01,
                            far_plane: float = 1e10, eps2d: float = 0.3, backgrounds: Tensor | None = None,
                            antialiased: bool = False, depth_channel: bool = False, return_stopped: bool = False):
    """colors: post-activation [N, D] or [C, N, D]. Returns (images [C, H, W, D (+1)], alphas [C, H, W, 1]) and,
    with return_stopped, the pixels [C, H, W] that met the transmittance stop; with depth_channel the camera z is
    composited as a last channel (gsplat's "RGB+D", background 0 for it)."""
    images, alphas, stopped = [], [], []
    for cam in range(len(viewmats)):
        means2d, conics, depths, det_ratio, visible = reference_project(
            means, quats, scales, viewmats[cam], Ks[cam], width, height, near_plane, far_plane, eps2d)
        effective_opacities = opacities
        if antialiased:
            effective_opacities = opacities * torch.sqrt(torch.clamp(det_ratio, min=1e-300))
        cam_colors = colors if colors.dim() == 2 else colors[cam]
        background = None if backgrounds is None else backgrounds[cam]
        if depth_channel:
            cam_colors = torch.cat([cam_colors, depths[:, None]], -1)
            background = None if background is None else torch.cat([background, background.new_zeros(1)])
        image, alpha, cam_stopped = reference_composite(means2d, conics, cam_colors, effective_opacities, depths,
                                                        visible, width, height, background, return_stopped=True)
        images.append(image)
        alphas.append(alpha)
        stopped.append(cam_stopped)
    if return_stopped:
        return torch.stack(images), torch.stack(alphas), torch.stack(stopped)
    return torch.stack(images), torch.stack(alphas)
