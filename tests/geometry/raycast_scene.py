"""A ray-cast dynamic scene with exact ground truth, for the geometry tests.

A camera orbits inside a box room ([-4, 4]^3) looking at the centre while a sphere crosses the room. Every pixel's
z-depth, colour and moving/static label come from analytic ray intersections, so masks and depth are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cameras import look_at_w2c
from pipeline.scene import Scene
from pipeline.scene.model import Camera, Frame

ROOM_HALF_SIZE = 4.0


def render(frames: int = 12, width: int = 64, height: int = 48, radius: float = 0.45,
           start=(-1.6, 0.2, -0.2), end=(1.6, -0.3, 0.3), focal: float = 45.0):
    """Returns depth (S, H, W) float32, K (S, 3, 3), world_to_camera (S, 4, 4), moving (S, H, W) bool,
    rgb (S, H, W, 3) float32."""
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    v, u = np.mgrid[0:height, 0:width] + 0.5
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1
    depths, moving, w2cs, colours = [], [], [], []
    for f in range(frames):
        s = f / max(1, frames - 1)
        theta = -0.5 + s
        eye = np.array([3.0 * np.sin(theta), -3.0 * np.cos(theta), 0.6])
        w2c = look_at_w2c(eye, np.zeros(3))
        d = rays_cam @ w2c[:3, :3]                                   # world ray directions with camera z = 1
        with np.errstate(divide="ignore", invalid="ignore"):
            t_axes = (np.sign(d) * ROOM_HALF_SIZE - eye) / d
        t_axes[~np.isfinite(t_axes) | (t_axes <= 0)] = np.inf
        wall = t_axes.min(-1)
        centre = np.asarray(start) + s * (np.asarray(end) - np.asarray(start))
        oc = eye - centre
        a, b, c = (d * d).sum(-1), (d * oc).sum(-1), (oc * oc).sum() - radius ** 2
        disc = b * b - a * c
        t_sphere = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
        t_sphere[t_sphere <= 0] = np.inf
        hit = t_sphere < wall
        depth = np.where(hit, t_sphere, wall)
        points = eye + depth[..., None] * d
        checker = (np.floor(points * 2.0).sum(-1) % 2)[..., None]
        wall_rgb = 0.35 + 0.4 * checker * np.array([0.9, 0.8, 0.6]) + 0.1 * (points / ROOM_HALF_SIZE)
        rgb = np.where(hit[..., None], np.array([0.9, 0.15, 0.1]), wall_rgb)
        depths.append(depth)
        moving.append(hit)
        w2cs.append(w2c)
        colours.append(np.clip(rgb, 0, 1))
    return (np.asarray(depths, np.float32), np.repeat(K[None], frames, 0), np.asarray(w2cs), np.asarray(moving),
            np.asarray(colours, np.float32))


def make_scene(frames: int = 12, width: int = 64, height: int = 48, test_every: int = 4) -> Scene:
    depth, K, w2c, moving, rgb = render(frames, width, height)
    items = []
    for i in range(frames):
        split = "test" if test_every and i % test_every == test_every // 2 else "train"
        items.append(Frame(
            name=f"r_{i:03d}", index=i, time=i / max(1, frames - 1), split=split, width=width, height=height,
            load_image=lambda i=i: rgb[i], camera=Camera(K[i], w2c[i], width, height), time_index=i,
            load_depth=lambda i=i: depth[i], load_dynamic_mask=lambda i=i: moving[i]))
    return Scene(name="raycast-room", format="synthetic", source=Path("raycast-room"), frames=items)
