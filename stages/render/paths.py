"""Camera paths for videos: each is a list of :class:`PathView` (world-to-camera, K, width, height, time).

All cameras are OpenCV world-to-camera in the world of ``geometry/cameras.json``; times are in [0, 1].

* ``input``       - the input trajectory replayed (every frame, or resampled to n views by interpolating poses);
* ``spiral``      - around the scene at a frozen time: an orbit around the focus point when the input cameras
                    surround the scene (360-degree captures), else an LLFF-style spiral around the mean input pose;
* ``bullet``      - bullet time: the input camera at the frozen time swings back and forth around the focus point
                    (about the world's up axis) while time stands still;
* ``sweep``       - a fixed camera (the input camera nearest the middle of the sequence) while time runs 0 -> 1;
* ``spiral-time`` - the spiral path while time runs 0 -> 1.

The **focus point** is where the cameras look: the median over frames of (camera centre + median depth x viewing
direction) when depth maps are given, else the least-squares point closest to all optical axes. The **up** direction
is the mean of the cameras' up axes (-y in OpenCV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from pipeline.cameras import look_at_w2c

PATH_NAMES = ("input", "spiral", "bullet", "sweep", "spiral-time")


class PathView(NamedTuple):
    """One view of a camera path."""

    world_to_camera: np.ndarray   # (4, 4) float64, OpenCV
    K: np.ndarray                 # (3, 3) float64, pixels of (width, height)
    width: int
    height: int
    time: float                   # in [0, 1]


@dataclass(frozen=True)
class InputCamera:
    """What a path needs of an input frame (a subset of a ``cameras.json`` entry)."""

    world_to_camera: np.ndarray   # (4, 4)
    K: np.ndarray                 # (3, 3)
    width: int
    height: int
    time: float

    @property
    def center(self) -> np.ndarray:
        R, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -R.T @ t

    @property
    def forward(self) -> np.ndarray:
        """Viewing direction (camera +z) in world coordinates."""
        return self.world_to_camera[2, :3]


@dataclass(frozen=True)
class SceneLayout:
    focus: np.ndarray        # (3,) point the input cameras look at
    up: np.ndarray           # (3,) unit world up
    surrounding: bool        # the input cameras surround the focus point (azimuth gaps all < 180 degrees)


# ----------------------------------------------------------------------------------------------------------------
# Scene layout


def focus_point(cameras: Sequence[InputCamera], median_depths: Optional[Sequence[float]] = None) -> np.ndarray:
    """(3,) focus point: from depths if given (median of centre + depth * forward), else the axes' nearest point."""
    centers = np.stack([c.center for c in cameras])          # (N, 3)
    forwards = np.stack([c.forward for c in cameras])        # (N, 3)
    if median_depths is not None:
        depths = np.asarray(median_depths, dtype=np.float64)
        ok = np.isfinite(depths) & (depths > 0)
        if ok.any():
            return np.median(centers[ok] + depths[ok, None] * forwards[ok], axis=0)
    # Least squares: sum_i (I - f_i f_i^T) (p - c_i) = 0.
    projectors = np.eye(3)[None] - forwards[:, :, None] * forwards[:, None, :]   # (N, 3, 3)
    A, b = projectors.sum(0), np.einsum("nij,nj->i", projectors, centers)
    eigenvalues = np.linalg.eigvalsh(A)
    if eigenvalues[0] > 1e-3 * eigenvalues[-1]:
        p = np.linalg.solve(A, b)
        if np.mean(np.einsum("ni,ni->n", p - centers, forwards) > 0) > 0.5:
            return p
    # Near-parallel axes (a forward-facing video without depth): one scene unit in front of the mean camera.
    mean_forward = forwards.mean(0)
    return centers.mean(0) + mean_forward / max(np.linalg.norm(mean_forward), 1e-12)


def scene_layout(cameras: Sequence[InputCamera], median_depths: Optional[Sequence[float]] = None) -> SceneLayout:
    focus = focus_point(cameras, median_depths)
    up = -np.stack([c.world_to_camera[1, :3] for c in cameras]).mean(0)
    up = up / max(np.linalg.norm(up), 1e-12)
    offsets = np.stack([c.center for c in cameras]) - focus
    e1, e2 = _plane_basis(up)
    azimuths = np.sort(np.arctan2(offsets @ e2, offsets @ e1))
    gaps = np.diff(np.concatenate([azimuths, azimuths[:1] + 2 * math.pi]))
    return SceneLayout(focus=focus, up=up, surrounding=bool(len(cameras) >= 3 and gaps.max() < math.pi))


def _plane_basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the plane perpendicular to ``normal``."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(normal, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


def _axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    return Rotation.from_rotvec(angle * axis / np.linalg.norm(axis)).as_matrix()


# ----------------------------------------------------------------------------------------------------------------
# Paths


def _reference(cameras: Sequence[InputCamera], time: float) -> InputCamera:
    """The input camera whose time is nearest ``time`` (the first such in input order)."""
    return min(cameras, key=lambda c: abs(c.time - time))


def _times(n: int, time: Optional[float]) -> np.ndarray:
    """n times: all equal to ``time``, or 0 -> 1 inclusive when ``time`` is None."""
    return np.full(n, float(time)) if time is not None else np.linspace(0.0, 1.0, n)


def input_path(cameras: Sequence[InputCamera], n_views: Optional[int] = None) -> list[PathView]:
    """The input trajectory in time order; resampled to ``n_views`` by slerp / lerp when given."""
    ordered = sorted(cameras, key=lambda c: c.time)
    if n_views is None or n_views == len(ordered) or len(ordered) < 2:
        return [PathView(c.world_to_camera.copy(), c.K.copy(), c.width, c.height, c.time) for c in ordered]
    key = np.arange(len(ordered), dtype=np.float64)
    rotations = Rotation.from_matrix(np.stack([c.world_to_camera[:3, :3] for c in ordered]))
    slerp = Slerp(key, rotations)
    centers = np.stack([c.center for c in ordered])
    samples = np.linspace(0.0, len(ordered) - 1, n_views)
    views = []
    for u in samples:
        i = min(int(math.floor(u)), len(ordered) - 2)
        w = u - i
        R = slerp([u]).as_matrix()[0]
        center = (1 - w) * centers[i] + w * centers[i + 1]
        w2c = np.eye(4)
        w2c[:3, :3] = R
        w2c[:3, 3] = -R @ center
        near = ordered[i] if w < 0.5 else ordered[i + 1]
        K = (1 - w) * ordered[i].K + w * ordered[i + 1].K
        views.append(PathView(w2c, K, near.width, near.height, (1 - w) * ordered[i].time + w * ordered[i + 1].time))
    return views


def spiral_path(cameras: Sequence[InputCamera], layout: SceneLayout, n_views: int,
                time: Optional[float]) -> list[PathView]:
    """Orbit (surrounding cameras) or LLFF-style spiral (forward-facing), looking at the focus point.

    Orbit: radius and height of the median input camera, one turn starting at the first camera's azimuth, height
    wobbling by 10 % of the radius. Spiral: around the mean input centre, in the mean camera's axes, radii = 90th
    percentile of the input centres' offsets (at least 5 % (x, y) and 2 % (z) of the focus distance)."""
    times = _times(n_views, time)
    ref = _reference(cameras, 0.5 if time is None else time)
    centers = np.stack([c.center for c in cameras])
    focus, up = layout.focus, layout.up
    angles = 2 * math.pi * np.arange(n_views) / n_views
    views = []
    if layout.surrounding:
        e1, e2 = _plane_basis(up)
        offsets = centers - focus
        heights = offsets @ up
        radius = float(np.median(np.linalg.norm(offsets - heights[:, None] * up, axis=1)))
        height = float(np.median(heights))
        start = math.atan2(float(offsets[0] @ e2), float(offsets[0] @ e1))
        for angle, t in zip(angles, times):
            phi = start + angle
            eye = focus + radius * (math.cos(phi) * e1 + math.sin(phi) * e2) + (height + 0.1 * radius *
                                                                                 math.sin(2 * angle)) * up
            views.append(PathView(look_at_w2c(eye, focus, up), ref.K.copy(), ref.width, ref.height, float(t)))
        return views
    mean_center = centers.mean(0)
    mean_pose = look_at_w2c(mean_center, focus, up)
    distance = float(np.linalg.norm(focus - mean_center))
    local = (centers - mean_center) @ mean_pose[:3, :3].T      # (N, 3) offsets in the mean camera's axes
    radii = np.percentile(np.abs(local), 90, axis=0)
    radii = np.maximum(radii, np.array([0.05, 0.05, 0.02]) * distance)
    for angle, t in zip(angles, times):
        offset = radii * np.array([math.cos(angle), math.sin(angle), math.sin(2 * angle)])
        eye = mean_center + mean_pose[:3, :3].T @ offset
        views.append(PathView(look_at_w2c(eye, focus, up), ref.K.copy(), ref.width, ref.height, float(t)))
    return views


def bullet_path(cameras: Sequence[InputCamera], layout: SceneLayout, n_views: int, time: float,
                arc_deg: float) -> list[PathView]:
    """The input camera nearest ``time`` rotated about the up axis through the focus point by
    (arc / 2) sin(2 pi k / n), at the frozen ``time``: a smooth back-and-forth swing that loops."""
    ref = _reference(cameras, time)
    R_ref, center = ref.world_to_camera[:3, :3], ref.center
    views = []
    for k in range(n_views):
        angle = math.radians(arc_deg) / 2 * math.sin(2 * math.pi * k / n_views)
        swing = _axis_rotation(layout.up, angle)                # world rotation about the focus point
        w2c = np.eye(4)
        w2c[:3, :3] = R_ref @ swing.T
        w2c[:3, 3] = -w2c[:3, :3] @ (layout.focus + swing @ (center - layout.focus))
        views.append(PathView(w2c, ref.K.copy(), ref.width, ref.height, float(time)))
    return views


def sweep_path(cameras: Sequence[InputCamera], n_views: int) -> list[PathView]:
    """The input camera nearest the middle of the sequence, fixed, while time runs 0 -> 1."""
    ref = _reference(cameras, 0.5)
    return [PathView(ref.world_to_camera.copy(), ref.K.copy(), ref.width, ref.height, float(t))
            for t in _times(n_views, None)]


def camera_path(name: str, cameras: Sequence[InputCamera], layout: SceneLayout, n_views: Optional[int],
                frozen_time: float, bullet_arc_deg: float, default_views: int) -> list[PathView]:
    """The named path. n_views None = the default (the input path: every input frame)."""
    n = default_views if n_views is None else n_views
    if name == "input":
        return input_path(cameras, n_views)
    if name == "spiral":
        return spiral_path(cameras, layout, n, frozen_time)
    if name == "spiral-time":
        return spiral_path(cameras, layout, n, None)
    if name == "bullet":
        return bullet_path(cameras, layout, n, frozen_time, bullet_arc_deg)
    if name == "sweep":
        return sweep_path(cameras, n)
    raise ValueError(f"unknown camera path '{name}' (choose from {', '.join(PATH_NAMES)})")


def resized(view: PathView, max_size: int) -> PathView:
    """The view with its longer side capped at ``max_size`` (0 = keep) and both sides even (H.264 with 4:2:0
    chroma needs even sizes); K is rescaled with pixel centres kept consistent."""
    scale = min(1.0, max_size / max(view.width, view.height)) if max_size > 0 else 1.0
    width = max(2, int(round(view.width * scale)) // 2 * 2)
    height = max(2, int(round(view.height * scale)) // 2 * 2)
    K = view.K.copy()
    K[0, :] *= width / view.width
    K[1, :] *= height / view.height
    return PathView(view.world_to_camera, K, width, height, view.time)
