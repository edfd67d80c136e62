"""EWA projection of 3D Gaussians into pinhole cameras, with gsplat 1.5.3's exact rules (spec gsplat.md §3, 1-6).

Everything here is per (camera, Gaussian) and differentiable through autograd; only the integer radii and the
culling decisions are not. Culled entries keep finite values (their inputs are replaced by safe ones before any
division), so gradients are exactly zero there and never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0   # a Gaussian contributes to a pixel only where alpha >= 1/255
MAX_EXTEND = 3.33               # upper bound on the box half-size, in standard deviations
FOV_MARGIN = 0.3                # the Jacobian clamps x/z, y/z to the image plus 30% of the half field of view


@dataclass
class Projection:
    """Per (camera, Gaussian) screen-space quantities; C cameras, N Gaussians."""

    means2d: Tensor               # [C, N, 2] projected means in pixels (x right, y down, pixel centres at +0.5)
    conics: Tensor                # [C, N, 3] (a, b, c): inverse of the blurred 2D covariance [[a, b], [b, c]]
    depths: Tensor                # [C, N] camera-space z of the means
    radii: Tensor                 # [C, N, 2] int32 box half-sizes in pixels (x, y); (0, 0) = culled
    opacities: Tensor             # [C, N] opacity used for compositing (x compensation when antialiased)
    compensations: Tensor | None  # [C, N] sqrt(det Sigma2d / det(Sigma2d + eps2d I)); None unless antialiased


def quat_to_rotation(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] in (w, x, y, z) order, normalised here."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def covariance_from_quat_scale(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances [..., 3, 3] = R S S^T R^T from quaternions [..., 4] (wxyz) and standard deviations [..., 3]."""
    rotation_scale = quat_to_rotation(quats) * scales[..., None, :]  # R diag(s): column j scaled by s_j
    return rotation_scale @ rotation_scale.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    world_to_camera: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> Projection:
    """Project N Gaussians into C pinhole cameras.

    Args:
        means: [N, 3] world positions. quats: [N, 4] (w, x, y, z), any norm. scales: [N, 3] standard deviations.
        opacities: [N] in (0, 1). world_to_camera: [C, 4, 4] OpenCV. Ks: [C, 3, 3] pixel intrinsics.
        width, height: image size in pixels. near_plane, far_plane: depth culling range (camera z).
        eps2d: screen-space blur added to the 2D covariance diagonal (pixels^2).
        antialiased: multiply opacities by the blur compensation (gsplat's rasterize_mode="antialiased").
    """
    rotation = world_to_camera[:, None, :3, :3]                                 # [C, 1, 3, 3]
    translation = world_to_camera[:, None, :3, 3]                               # [C, 1, 3]
    means_cam = (rotation @ means[None, :, :, None])[..., 0] + translation      # [C, N, 3]
    covars_cam = rotation @ covariance_from_quat_scale(quats, scales)[None] @ rotation.transpose(-1, -2)  # [C,N,3,3]

    x, y, z = means_cam.unbind(-1)                                              # [C, N] each
    in_depth_range = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth_range, z, torch.ones_like(z))                      # culled: any finite z will do

    fx, fy, cx, cy = (Ks[:, None, 0, 0], Ks[:, None, 1, 1], Ks[:, None, 0, 2], Ks[:, None, 1, 2])  # [C, 1] each
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)           # [C, N, 2]

    # Jacobian of the projection at the mean; x/z and y/z are clamped to the image plus a margin (gsplat's
    # persp_proj), so Gaussians far outside the view do not get absurdly stretched footprints.
    half_tan_fov_x, half_tan_fov_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FOV_MARGIN * half_tan_fov_x
    lim_x_neg = cx / fx + FOV_MARGIN * half_tan_fov_x
    lim_y_pos = (height - cy) / fy + FOV_MARGIN * half_tan_fov_y
    lim_y_neg = cy / fy + FOV_MARGIN * half_tan_fov_y
    tx = z * torch.clamp(x / z, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y / z, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(z)
    jacobian = torch.stack([fx / z, zeros, -fx * tx / (z * z),
                            zeros, fy / z, -fy * ty / (z * z)], dim=-1).unflatten(-1, (2, 3))  # [C, N, 2, 3]
    covars2d = jacobian @ covars_cam @ jacobian.transpose(-1, -2)              # [C, N, 2, 2]

    c00, c01, c10, c11 = covars2d.flatten(-2).unbind(-1)                       # [C, N] each
    det_unblurred = c00 * c11 - c01 * c10
    c00, c11 = c00 + eps2d, c11 + eps2d
    det = c00 * c11 - c01 * c10
    positive_det = det > 0
    det = torch.where(positive_det, det, torch.ones_like(det))
    conics = torch.stack([c11 / det, -c01 / det, c00 / det], dim=-1)           # [C, N, 3]

    opacities = opacities[None].expand_as(z)                                   # [C, N]
    compensations = None
    if antialiased:
        ratio = det_unblurred / det
        positive = ratio > 0
        compensations = torch.where(positive, torch.where(positive, ratio, torch.ones_like(ratio)).sqrt(),
                                    torch.zeros_like(ratio))
        opacities = opacities * compensations

    radii = _radii(means2d.detach(), c00.detach(), c11.detach(), opacities.detach(), width, height,
                   in_depth_range & positive_det)
    return Projection(means2d=means2d, conics=conics, depths=means_cam[..., 2], radii=radii,
                      opacities=opacities, compensations=compensations)


@torch.no_grad()
def _radii(means2d: Tensor, var_x: Tensor, var_y: Tensor, opacities: Tensor, width: int, height: int,
           valid: Tensor) -> Tensor:
    """Opacity-aware box half-sizes [C, N, 2] int32; zero for culled entries (spec §3.6).

    var_x, var_y: [C, N] blurred 2D variances; opacities: [C, N] effective opacities; valid: [C, N] bool, the
    entries that survived depth and determinant culling.
    """
    visible = valid & (opacities >= ALPHA_THRESHOLD)
    # extend = min(3.33, sqrt(2 ln(o / (1/255)))): the box holds exactly the ellipse where alpha >= 1/255.
    log_ratio = torch.log(torch.where(visible, opacities, torch.ones_like(opacities)) / ALPHA_THRESHOLD)
    extend = torch.sqrt(2.0 * log_ratio).clamp(max=MAX_EXTEND)
    radius_x = torch.ceil(extend * torch.sqrt(var_x.clamp(min=0)))
    radius_y = torch.ceil(extend * torch.sqrt(var_y.clamp(min=0)))
    mean_x, mean_y = means2d.unbind(-1)
    visible &= (radius_x > 0) | (radius_y > 0)                                 # gsplat's radius_clip = 0
    visible &= (mean_x + radius_x > 0) & (mean_x - radius_x < width)
    visible &= (mean_y + radius_y > 0) & (mean_y - radius_y < height)
    radii = torch.stack([radius_x, radius_y], dim=-1) * visible[..., None]
    return radii.to(torch.int32)


def camera_centers(world_to_camera: Tensor) -> Tensor:
    """Camera centres in world coordinates [C, 3] from world-to-camera matrices [C, 4, 4] (as gsplat: the inverse's
    translation column, so non-rigid matrices behave the same)."""
    return torch.linalg.inv(world_to_camera)[:, :3, 3]


__all__ = ["ALPHA_THRESHOLD", "Projection", "camera_centers", "covariance_from_quat_scale", "project_gaussians",
           "quat_to_rotation"]
