"""Pose encoding ``absT_quaR_FoV`` <-> OpenCV world-to-camera extrinsics and pinhole intrinsics.

encoding (..., 9) = [t (3): translation of world-to-camera, q (4): quaternion xyzw of its rotation,
fov_h, fov_w (radians)]. Intrinsics: fx = (W/2) / tan(fov_w/2), fy = (H/2) / tan(fov_h/2), principal point at the
image centre (W/2, H/2), in pixels of the network input.
"""

from __future__ import annotations

import torch
from torch import Tensor


def quat_to_mat(quaternions: Tensor) -> Tensor:
    """(..., 4) xyzw, not necessarily unit (the 2/|q|^2 form) -> (..., 3, 3) rotation."""
    x, y, z, w = quaternions.unbind(-1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    rows = (
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(quaternions.shape[:-1] + (3, 3))


def mat_to_quat(matrix: Tensor) -> Tensor:
    """(..., 3, 3) rotation -> (..., 4) unit quaternion xyzw with w >= 0.

    Of the four algebraically equivalent formulas (divide by 4w, 4x, 4y or 4z), each entry uses the one with the
    largest divisor, which is always >= 1/2 and so well conditioned.
    """
    m = matrix.reshape(matrix.shape[:-2] + (9,))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    # 4 * (w^2, x^2, y^2, z^2)
    four_sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    # Candidate k is (w, x, y, z) * 4 * (component k); rows: k = w, x, y, z.
    candidates = torch.stack([
        torch.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]], -1),
    ], dim=-2)                                                                  # (..., 4, 4) wxyz
    best = four_sq.argmax(-1)                                                   # (...,)
    chosen = torch.gather(candidates, -2, best[..., None, None].expand(best.shape + (1, 4)))[..., 0, :]
    wxyz = chosen / (2.0 * four_sq.gather(-1, best[..., None]).clamp(min=1e-12).sqrt())
    xyzw = torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)
    return torch.where(xyzw[..., 3:] < 0, -xyzw, xyzw)


def pose_encoding_to_extri_intri(pose_enc: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """pose_enc (B, S, 9) -> (extrinsics (B, S, 3, 4) world-to-camera OpenCV, intrinsics (B, S, 3, 3))."""
    H, W = image_hw
    translation, quaternion = pose_enc[..., :3], pose_enc[..., 3:7]
    fov_h, fov_w = pose_enc[..., 7], pose_enc[..., 8]
    extrinsics = torch.cat([quat_to_mat(quaternion), translation[..., None]], dim=-1)
    intrinsics = torch.zeros(pose_enc.shape[:-1] + (3, 3), dtype=pose_enc.dtype, device=pose_enc.device)
    intrinsics[..., 0, 0] = (W / 2.0) / torch.tan(fov_w / 2.0)
    intrinsics[..., 1, 1] = (H / 2.0) / torch.tan(fov_h / 2.0)
    intrinsics[..., 0, 2] = W / 2.0
    intrinsics[..., 1, 2] = H / 2.0
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def extri_intri_to_pose_encoding(extrinsics: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`pose_encoding_to_extri_intri` (the principal point is not encoded)."""
    H, W = image_hw
    fov_h = 2 * torch.atan((H / 2.0) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2.0) / intrinsics[..., 0, 0])
    return torch.cat([extrinsics[..., :3, 3], mat_to_quat(extrinsics[..., :3, :3]),
                      fov_h[..., None], fov_w[..., None]], dim=-1)
