"""Camera conventions and similarity alignment.

Inside page4dgs every camera is OpenCV (x right, y down, z forward) with a 4x4 world-to-camera extrinsic. Loaders
convert other conventions with the functions here, at the border.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_c2w_to_opencv_w2c(camera_to_world_gl: np.ndarray) -> np.ndarray:
    """Blender/OpenGL camera-to-world (x right, y up, z back) -> OpenCV world-to-camera (4, 4)."""
    c2w = np.asarray(camera_to_world_gl, dtype=np.float64).reshape(4, 4) @ OPENGL_TO_OPENCV
    return np.linalg.inv(c2w)


def opencv_w2c_to_opengl_c2w(world_to_camera: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opengl_c2w_to_opencv_w2c`."""
    return np.linalg.inv(np.asarray(world_to_camera, dtype=np.float64)) @ OPENGL_TO_OPENCV


def llff_c2w_to_opencv_w2c(camera_to_world_llff: np.ndarray) -> np.ndarray:
    """LLFF camera-to-world (3, 4) or (4, 4), columns [down, right, back | centre] (``poses_bounds.npy``) ->
    OpenCV world-to-camera (4, 4). In OpenGL axes the same camera is [c1, -c0, c2 | t]."""
    llff = np.asarray(camera_to_world_llff, dtype=np.float64)[:3, :4]
    c2w_gl = np.eye(4)
    c2w_gl[:3, :4] = np.stack([llff[:, 1], -llff[:, 0], llff[:, 2], llff[:, 3]], axis=1)  # (3, 4): right, up, back, t
    return opengl_c2w_to_opencv_w2c(c2w_gl)


def intrinsics_from_fov(fov_x: float, width: int, height: int, fov_y: float | None = None) -> np.ndarray:
    """K (3, 3) for horizontal field of view ``fov_x`` (radians); principal point at the image centre."""
    fx = 0.5 * width / np.tan(0.5 * fov_x)
    fy = fx if fov_y is None else 0.5 * height / np.tan(0.5 * fov_y)
    return np.array([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])


def look_at_w2c(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV world-to-camera (4, 4) of a camera at ``eye`` looking at ``target``; ``up`` is the world's up."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking along `up`: pick any perpendicular
        right = np.cross(forward, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle (degrees) of a rotation matrix, computed stably in float64."""
    cos = (np.trace(np.asarray(R, dtype=np.float64)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


@dataclass
class Sim3:
    """x -> scale * R x + t."""

    scale: float
    rotation: np.ndarray     # (3, 3)
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform (..., 3) points."""
        return self.scale * np.asarray(points) @ self.rotation.T + self.translation

    def matrix(self) -> np.ndarray:
        M = np.eye(4)
        M[:3, :3] = self.scale * self.rotation
        M[:3, 3] = self.translation
        return M

    def inverse(self) -> "Sim3":
        Rinv = self.rotation.T
        return Sim3(1.0 / self.scale, Rinv, -(Rinv @ self.translation) / self.scale)

    def transform_w2c(self, world_to_camera: np.ndarray) -> np.ndarray:
        """The world-to-camera of the same camera in the transformed world (translation scaled by ``scale``).

        If x' = s R x + t, a camera with x_c = R_c x + t_c satisfies x_c * s = R_c R^T (x' - t) + s t_c, so
        R_c' = R_c R^T and t_c' = s t_c - R_c' t (camera-frame units scale by s).
        """
        w2c = np.asarray(world_to_camera, dtype=np.float64)
        out = np.eye(4)
        Rc = w2c[:3, :3] @ self.rotation.T
        out[:3, :3] = Rc
        out[:3, 3] = self.scale * w2c[:3, 3] - Rc @ self.translation
        return out


def umeyama_sim3(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares Sim(3) (Umeyama 1991) mapping ``source`` (N, 3) points onto ``target`` (N, 3) points."""
    q = np.asarray(source, dtype=np.float64)
    p = np.asarray(target, dtype=np.float64)
    if q.shape != p.shape or q.ndim != 2 or q.shape[1] != 3 or len(q) < 3:
        raise ValueError("umeyama_sim3 needs two (N, 3) arrays with N >= 3")
    mu_q, mu_p = q.mean(0), p.mean(0)
    qc, pc = q - mu_q, p - mu_p
    cov = pc.T @ qc / len(q)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var_q = (qc**2).sum() / len(q)
    scale = float(np.trace(np.diag(D) @ S) / var_q) if with_scale and var_q > 0 else 1.0
    t = mu_p - scale * R @ mu_q
    return Sim3(scale, R, t)


def camera_centres(world_to_camera: np.ndarray) -> np.ndarray:
    """(N, 3) camera centres -R^T t of (N, 4, 4) world-to-camera matrices."""
    w2c = np.asarray(world_to_camera, dtype=np.float64)
    return -np.einsum("nji,nj->ni", w2c[:, :3, :3], w2c[:, :3, 3])


def align_cameras_sim3(source_w2c: np.ndarray, target_w2c: np.ndarray, scale: float | None = None) -> Sim3:
    """Sim(3) taking the world of ``source_w2c`` (N, 4, 4) to the world of ``target_w2c`` (N, 4, 4).

    Scale and translation come from the camera centres (Umeyama). The rotation is the chordal mean of the per-camera
    rotation offsets, which also works when the centres are (nearly) collinear or few, and is refined jointly with
    the centres by re-solving scale and translation for that rotation.

    The least-squares scale for that rotation is the ratio of the centres' spreads times their correlation, so it
    shrinks towards 0 (and turns negative) when the source trajectory disagrees with the target's, e.g. a network's
    poses for a camera that barely moves. Where the correlation is below 0.5 the ratio of spreads (RMS distances
    from the mean centre) is used instead: a depth scale from it is right when the trajectories differ in shape but
    not in extent, where the least-squares one would shrink the geometry towards a point.

    scale: use this scale (found some other way, e.g. from depth) instead; the translation then matches the mean
    centres for it.
    """
    src = np.asarray(source_w2c, dtype=np.float64)
    tgt = np.asarray(target_w2c, dtype=np.float64)
    # Rotation: world_t = R world_s  =>  R_c,t = R_c,s R^T  =>  R = R_c,t^T R_c,s  (one estimate per camera).
    M = np.einsum("nji,njk->ik", tgt[:, :3, :3], src[:, :3, :3])
    U, _, Vt = np.linalg.svd(M)
    S = np.eye(3)
    if np.linalg.det(U @ Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    c_src, c_tgt = camera_centres(src), camera_centres(tgt)
    if scale is None:
        rc_src = (c_src - c_src.mean(0)) @ R.T
        ct = c_tgt - c_tgt.mean(0)
        spread_src, spread_tgt = float(np.sqrt((rc_src**2).sum())), float(np.sqrt((ct**2).sum()))
        scale = 1.0                               # fewer than 3 cameras, or one of the two sets does not move
        if len(src) >= 3 and spread_src > 1e-9 and spread_tgt > 1e-9:
            correlation = float((rc_src * ct).sum()) / (spread_src * spread_tgt)
            scale = spread_tgt / spread_src * (correlation if correlation >= 0.5 else 1.0)
    t = c_tgt.mean(0) - scale * R @ c_src.mean(0)
    return Sim3(scale, R, t)
