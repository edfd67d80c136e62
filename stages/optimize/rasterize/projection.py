"""EWA projection of 3D Gaussians into pinhole cameras, with gsplat 1.5.3's exact rules (spec gsplat.md §3, 1-6).

Everything here is per (camera, Gaussian) and differentiable through autograd; only the integer radii and the
culling decisions are not. Culled entries keep finite values (their inputs are replaced by safe ones before any
division), so gradients are exactly zero there and never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .fast_math import approx_divide, approx_log2, approx_reciprocal, approx_sqrt

ALPHA_THRESHOLD = 1.0 / 255.0   # a Gaussian contributes to a pixel only where alpha >= 1/255
MAX_EXTEND = 3.33               # upper bound on the box half-size, in standard deviations
FOV_MARGIN = 0.3                # the Jacobian clamps x/z, y/z to the image plus 30% of the half field of view
LN2 = 0.6931471805599453


@dataclass
class Projection:
    """Per (camera, Gaussian) screen-space quantities; C cameras, N Gaussians."""

    means2d: Tensor               # [C, N, 2] projected means in pixels (x right, y down, pixel centres at +0.5)
    conics: Tensor                # [C, N, 3] (a, b, c): inverse of the blurred 2D covariance [[a, b], [b, c]]
    depths: Tensor                # [C, N] camera-space z of the means
    radii: Tensor                 # [C, N, 2] int32 box half-sizes in pixels (x, y); (0, 0) = culled
    opacities: Tensor             # [C, N] opacity used for compositing (x compensation when antialiased)
    compensations: Tensor | None  # [C, N] sqrt(det Sigma2d / det(Sigma2d + eps2d I)); None unless antialiased


def fused_multiply_add(a: Tensor, b: Tensor, c: Tensor, exact: bool = True) -> Tensor:
    """a * b + c (broadcast). exact: with one rounding, as the FMA instructions of gsplat's CUDA code (float32
    inputs are combined in float64 and rounded once); else torch.addcmul in the inputs' dtype (cheaper)."""
    if not exact or a.dtype == torch.float64:
        return torch.addcmul(c, a, b)
    return torch.addcmul(c.double(), a.double(), b.double()).to(a.dtype)


def matmul_fma(a: Tensor, b: Tensor, exact: bool = True) -> Tensor:
    """a @ b for [..., R, 3] @ [..., 3, K]. exact: each entry summed as gsplat's compiled glm code does,
    fma(a2, b2, fma(a0, b0, a1 * b1)) (:func:`fused_multiply_add`); else torch's matrix product."""
    if not exact:
        return a @ b

    def term(k: int) -> tuple[Tensor, Tensor]:
        return a[..., :, k:k + 1], b[..., k:k + 1, :]                          # [..., R, 1], [..., 1, K]

    (a0, b0), (a1, b1), (a2, b2) = term(0), term(1), term(2)
    return fused_multiply_add(a2, b2, fused_multiply_add(a0, b0, a1 * b1))   # [..., R, K]


def quat_to_rotation(quats: Tensor, exact: bool = True) -> Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] in (w, x, y, z) order, normalised here (by
    rsqrt(x^2 + y^2 + z^2 + w^2), in gsplat's order of operations; exact: as :func:`fused_multiply_add`)."""
    def fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return fused_multiply_add(a, b, c, exact)

    w, x, y, z = quats.unbind(-1)
    inv_norm = torch.rsqrt(fma(w, w, fma(z, z, fma(x, x, y * y))))
    w, x, y, z = w * inv_norm, x * inv_norm, y * inv_norm, z * inv_norm
    rows = (
        1 - 2 * fma(y, y, z * z), 2 * fma(x, y, -(w * z)), 2 * fma(x, z, w * y),
        2 * fma(x, y, w * z), 1 - 2 * fma(x, x, z * z), 2 * fma(y, z, -(w * x)),
        2 * fma(x, z, -(w * y)), 2 * fma(y, z, w * x), 1 - 2 * fma(x, x, y * y),
    )
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def covariance_from_quat_scale(quats: Tensor, scales: Tensor, exact: bool = True) -> Tensor:
    """3D covariances [..., 3, 3] = R S S^T R^T from quaternions [..., 4] (wxyz) and standard deviations [..., 3];
    exact: in gsplat's order of operations (:func:`matmul_fma`)."""
    rotation_scale = quat_to_rotation(quats, exact) * scales[..., None, :]  # R diag(s): column j scaled by s_j
    return matmul_fma(rotation_scale, rotation_scale.transpose(-1, -2), exact)


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
    gsplat_order: bool | None = None,
) -> Projection:
    """Project N Gaussians into C pinhole cameras.

    Args:
        means: [N, 3] world positions. quats: [N, 4] (w, x, y, z), any norm. scales: [N, 3] standard deviations.
        opacities: [N] in (0, 1). world_to_camera: [C, 4, 4] OpenCV. Ks: [C, 3, 3] pixel intrinsics.
        width, height: image size in pixels. near_plane, far_plane: depth culling range (camera z).
        eps2d: screen-space blur added to the 2D covariance diagonal (pixels^2).
        antialiased: multiply opacities by the blur compensation (gsplat's rasterize_mode="antialiased").
        gsplat_order: float32 products and sums in gsplat's order, FMAs emulated, and on CUDA its approximate
            reciprocals, quotients and square roots (:mod:`.fast_math`); None: on CUDA in float32.
    """
    # On CUDA (where gsplat runs) every float32 product and sum follows gsplat's kernel, FMAs included. Compositing
    # decides per pixel whether a Gaussian passes alpha >= 1/255 and the transmittance stop, so a last-bit
    # difference in a conic or a mean can add or drop a Gaussian there: with matrix products such decisions
    # differed from gsplat's at a few pixels of the parity scenes (docs/rasterizer.md). Elsewhere the same
    # formulas with plain products and addcmul: several times cheaper on a CPU, where there is no gsplat to match.
    # gsplat's fast-math build also takes every reciprocal, quotient and square root from the special-function
    # unit (fast_math.py); on CUDA the same instructions run here, elsewhere their exact counterparts.
    exact = (means.device.type == "cuda" and means.dtype == torch.float32) if gsplat_order is None else gsplat_order
    reciprocal = approx_reciprocal if exact else (lambda t: 1.0 / t)
    sqrt = approx_sqrt if exact else torch.sqrt

    def divide(numerator: Tensor | float, denominator: Tensor) -> Tensor:
        return approx_divide(numerator, denominator) if exact else numerator / denominator

    def fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return fused_multiply_add(a, b, c, exact)

    def matmul(a: Tensor, b: Tensor) -> Tensor:
        return matmul_fma(a, b, exact)

    rotation = world_to_camera[:, None, :3, :3]                                 # [C, 1, 3, 3]
    translation = world_to_camera[:, None, :3, 3]                               # [C, 1, 3]
    means_cam = matmul(rotation, means[None, :, :, None])[..., 0] + translation   # [C, N, 3]
    covars_world = covariance_from_quat_scale(quats, scales, exact)[None]     # [1, N, 3, 3]
    covars_cam = matmul(matmul(rotation, covars_world), rotation.transpose(-1, -2))   # [C, N, 3, 3]

    x, y, z = means_cam.unbind(-1)                                              # [C, N] each
    in_depth_range = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth_range, z, torch.ones_like(z))                      # culled: any finite z will do

    fx, fy, cx, cy = (Ks[:, None, 0, 0], Ks[:, None, 1, 1], Ks[:, None, 0, 2], Ks[:, None, 1, 2])  # [C, 1] each
    inv_z = reciprocal(z)
    means2d = torch.stack([fma(fx * x, inv_z, cx), fma(fy * y, inv_z, cy)], dim=-1)   # [C, N, 2]

    # Jacobian of the projection at the mean; x/z and y/z are clamped to the image plus a margin (gsplat's
    # persp_proj), so Gaussians far outside the view do not get absurdly stretched footprints.
    half_tan_fov_x, half_tan_fov_y = divide(0.5 * width, fx), divide(0.5 * height, fy)
    margin = torch.full_like(fx, FOV_MARGIN)
    lim_x_pos = fma(margin, half_tan_fov_x, divide(width - cx, fx))
    lim_x_neg = fma(margin, half_tan_fov_x, divide(cx, fx))
    lim_y_pos = fma(margin, half_tan_fov_y, divide(height - cy, fy))
    lim_y_neg = fma(margin, half_tan_fov_y, divide(cy, fy))
    tx = z * torch.clamp(x * inv_z, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y * inv_z, min=-lim_y_neg, max=lim_y_pos)
    inv_z2 = inv_z * inv_z
    zeros = torch.zeros_like(z)
    jacobian = torch.stack([fx * inv_z, zeros, -fx * tx * inv_z2,
                            zeros, fy * inv_z, -fy * ty * inv_z2], dim=-1).unflatten(-1, (2, 3))  # [C, N, 2, 3]
    covars2d = matmul(matmul(jacobian, covars_cam), jacobian.transpose(-1, -2))   # [C, N, 2, 2]

    c00, c01, c10, c11 = covars2d.flatten(-2).unbind(-1)                       # [C, N] each
    det_unblurred = fma(c00, c11, -(c01 * c10))
    c00, c11 = c00 + eps2d, c11 + eps2d
    det = fma(c00, c11, -(c01 * c10))
    positive_det = det > 0
    det = torch.where(positive_det, det, torch.ones_like(det))                 # culled: no division by det <= 0
    inv_det = reciprocal(det)
    conics = torch.stack([c11 * inv_det, -c10 * inv_det, c00 * inv_det], dim=-1)   # [C, N, 3]

    opacities = opacities[None].expand_as(z)                                   # [C, N]
    compensations = None
    if antialiased:
        ratio = det_unblurred * inv_det if exact else det_unblurred / det   # gsplat: det_orig * (1 / det)
        positive = ratio > 0
        compensations = torch.where(positive, sqrt(torch.where(positive, ratio, torch.ones_like(ratio))),
                                    torch.zeros_like(ratio))
        opacities = opacities * compensations

    radii = _radii(means2d.detach(), c00.detach(), c11.detach(), opacities.detach(), width, height,
                   in_depth_range & positive_det, exact)
    return Projection(means2d=means2d, conics=conics, depths=means_cam[..., 2], radii=radii,
                      opacities=opacities, compensations=compensations)


@torch.no_grad()
def _radii(means2d: Tensor, var_x: Tensor, var_y: Tensor, opacities: Tensor, width: int, height: int,
           valid: Tensor, gsplat_order: bool = False) -> Tensor:
    """Opacity-aware box half-sizes [C, N, 2] int32; zero for culled entries (spec §3.6).

    var_x, var_y: [C, N] blurred 2D variances; opacities: [C, N] effective opacities; valid: [C, N] bool, the
    entries that survived depth and determinant culling. gsplat_order: as gsplat's fast-math build evaluates
    2 ln(o / (1/255)): lg2(o * (1 / (1/255))) * ln 2 doubled by an FMA, approximate square roots (on CUDA).
    """
    visible = valid & (opacities >= ALPHA_THRESHOLD)
    # extend = min(3.33, sqrt(2 ln(o / (1/255)))): the box holds exactly the ellipse where alpha >= 1/255.
    safe_opacities = torch.where(visible, opacities, torch.ones_like(opacities))
    if gsplat_order:
        inv_threshold = torch.tensor(ALPHA_THRESHOLD, dtype=opacities.dtype).reciprocal().item()
        ln2 = torch.tensor(LN2, dtype=opacities.dtype).item()
        log2_ratio = approx_log2(safe_opacities * inv_threshold)
        extend = approx_sqrt(fused_multiply_add(log2_ratio, torch.full_like(log2_ratio, ln2), log2_ratio * ln2))
        sqrt = approx_sqrt
    else:
        extend = torch.sqrt(2.0 * torch.log(safe_opacities / ALPHA_THRESHOLD))
        sqrt = torch.sqrt
    extend = extend.clamp(max=MAX_EXTEND)
    radius_x = torch.ceil(extend * sqrt(var_x.clamp(min=0)))
    radius_y = torch.ceil(extend * sqrt(var_y.clamp(min=0)))
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


__all__ = ["ALPHA_THRESHOLD", "Projection", "camera_centers", "covariance_from_quat_scale", "fused_multiply_add",
           "matmul_fma", "project_gaussians", "quat_to_rotation"]
