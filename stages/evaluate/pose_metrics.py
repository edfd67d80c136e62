"""Camera pose metrics: ATE after Sim(3) Umeyama alignment, RPE translation and rotation (evo's settings).

``../shared/spec/metrics-and-data.md`` §6. Trajectories are given as OpenCV world-to-camera matrices (N, 4, 4) in
the same frame order; everything is computed in float64.

* Alignment: Umeyama Sim(3) (:func:`pipeline.cameras.umeyama_sim3`) of the estimated camera centres onto the
  reference centres, x -> s R x + t.
* ATE: RMSE of the centre residuals after alignment, in reference units.
* RPE (consecutive pairs, delta = 1 frame): with camera-to-world poses P_i (reference) and Q_i (aligned estimate:
  rotation R R_i, centre s R c_i + t), E_i = (P_i^-1 P_{i+1})^-1 (Q_i^-1 Q_{i+1}); RPE_trans = sqrt(mean
  |trans(E_i)|^2), RPE_rot = sqrt(mean angle(E_i)^2) in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.cameras import Sim3, umeyama_sim3


@dataclass
class PoseErrors:
    ate: float              # RMSE of aligned camera centres, reference units
    rpe_trans: float        # RMSE of relative translation errors, reference units
    rpe_rot_deg: float      # RMSE of relative rotation errors, degrees
    alignment: Sim3         # estimated world -> reference world
    num_frames: int


def rotation_angle_rad(rotation: np.ndarray) -> np.ndarray:
    """Angle of rotation matrices (..., 3, 3) in radians, via atan2(|sin|, cos): accurate also near 0 and pi."""
    R = np.asarray(rotation, dtype=np.float64)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    axis = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = np.linalg.norm(axis, axis=-1) / 2.0
    return np.arctan2(sin, cos)


def camera_to_world(world_to_camera: np.ndarray) -> np.ndarray:
    """(N, 4, 4) world-to-camera -> (N, 4, 4) camera-to-world (rigid inverse, float64)."""
    w2c = np.asarray(world_to_camera, dtype=np.float64)
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    c2w = np.zeros_like(w2c)
    c2w[:, :3, :3] = np.transpose(R, (0, 2, 1))
    c2w[:, :3, 3] = -np.einsum("nji,nj->ni", R, t)  # centre = -R^T t
    c2w[:, 3, 3] = 1.0
    return c2w


def align_trajectory(estimated_c2w: np.ndarray, sim3: Sim3) -> np.ndarray:
    """Apply x -> s R x + t to camera-to-world poses (N, 4, 4): rotation R R_i, centre s R c_i + t."""
    out = np.array(estimated_c2w, dtype=np.float64, copy=True)
    out[:, :3, :3] = sim3.rotation @ out[:, :3, :3]
    out[:, :3, 3] = sim3.apply(out[:, :3, 3])
    return out


def relative_pose_errors(reference_c2w: np.ndarray, estimated_c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per consecutive pair: translation error norm (N-1,) and rotation error angle in radians (N-1,)."""
    P, Q = np.asarray(reference_c2w, np.float64), np.asarray(estimated_c2w, np.float64)
    delta_ref = np.linalg.inv(P[:-1]) @ P[1:]       # (N-1, 4, 4) motion i -> i+1 in the reference
    delta_est = np.linalg.inv(Q[:-1]) @ Q[1:]       # (N-1, 4, 4) the same in the estimate
    error = np.linalg.inv(delta_ref) @ delta_est
    return np.linalg.norm(error[:, :3, 3], axis=-1), rotation_angle_rad(error[:, :3, :3])


def pose_errors(estimated_w2c: np.ndarray, reference_w2c: np.ndarray) -> PoseErrors:
    """ATE / RPE of an estimated trajectory against a reference (both (N, 4, 4) world-to-camera, same order)."""
    est = camera_to_world(estimated_w2c)
    ref = camera_to_world(reference_w2c)
    if est.shape != ref.shape or len(est) < 3:
        raise ValueError(f"pose metrics need two trajectories of the same length >= 3, got {est.shape}, {ref.shape}")
    sim3 = umeyama_sim3(est[:, :3, 3], ref[:, :3, 3])
    aligned = align_trajectory(est, sim3)
    residual = aligned[:, :3, 3] - ref[:, :3, 3]
    ate = math.sqrt(float(np.mean(np.sum(residual**2, axis=-1))))
    trans, rot = relative_pose_errors(ref, aligned)
    return PoseErrors(ate=ate, rpe_trans=math.sqrt(float(np.mean(trans**2))),
                      rpe_rot_deg=math.degrees(math.sqrt(float(np.mean(rot**2)))), alignment=sim3,
                      num_frames=len(est))
