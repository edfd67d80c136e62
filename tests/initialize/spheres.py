"""A tiny dynamic scene with exact geometry, ray-cast in float64: textured spheres, one of them moving.

It writes what the tests of the initialize and optimize stages need, without the geometry stage:
* a D-NeRF folder (``transforms_{train,test}.json``, RGBA PNGs on a transparent background), loaded by the real
  loader;
* the geometry stage's artifacts for the oracle case (``geometry/cameras.json``, ``depth/``, ``confidence/``,
  ``dynamic_mask/``), exactly as ``docs/artifacts.md`` specifies them.

Monocular like D-NeRF: one training view per time instant at a random viewpoint on the upper hemisphere; test views
at other viewpoints and times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cameras import intrinsics_from_fov, look_at_w2c, opencv_w2c_to_opengl_c2w
from pipeline.io import write_json, write_npy, write_png

FOV_X = 0.7  # radians


@dataclass
class Sphere:
    center: np.ndarray        # (3,) at t = 0
    radius: float
    velocity: np.ndarray      # (3,) world units per unit time (the sphere translates and spins about z)
    spin: float               # radians per unit time
    colors: tuple             # two RGB colours of the stripe texture
    dynamic: bool

    def center_at(self, t: float) -> np.ndarray:
        return self.center + self.velocity * t


SPHERES = (
    Sphere(np.array([0.0, 0.0, 0.0]), 0.55, np.zeros(3), 0.0, ((0.9, 0.3, 0.2), (0.95, 0.85, 0.3)), False),
    Sphere(np.array([-0.5, 0.75, 0.25]), 0.3, np.array([1.0, -0.3, 0.2]), 3.0, ((0.2, 0.4, 0.9), (0.3, 0.9, 0.5)),
           True),
)


def texture(sphere: Sphere, points: np.ndarray, t: float) -> np.ndarray:
    """(P, 3) colours of surface points (world, at time t): stripes in the sphere's spinning longitude/latitude."""
    local = points - sphere.center_at(t)
    lon = np.arctan2(local[:, 1], local[:, 0]) - sphere.spin * t
    lat = np.arcsin(np.clip(local[:, 2] / sphere.radius, -1, 1))
    stripe = (np.sin(4 * lon) * np.sin(5 * lat) > 0)[:, None]
    c0, c1 = (np.asarray(c, dtype=np.float64) for c in sphere.colors)
    shade = 0.75 + 0.25 * local[:, 2:3] / sphere.radius
    return np.clip(np.where(stripe, c0, c1) * shade, 0, 1)


def render(world_to_camera: np.ndarray, K: np.ndarray, width: int, height: int, t: float,
           samples: int = 2) -> dict[str, np.ndarray]:
    """Ray-cast the spheres. Colour and alpha are averaged over samples x samples sub-pixel rays; depth (z) and the
    dynamic mask are those of the pixel-centre ray (0 / False on the background)."""
    c2w = np.linalg.inv(world_to_camera)
    origin = c2w[:3, 3]
    Kinv = np.linalg.inv(K)

    def cast(u: np.ndarray, v: np.ndarray):
        dirs_cam = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ Kinv.T      # (P, 3), z = 1
        dirs = dirs_cam @ c2w[:3, :3].T
        best = np.full(len(dirs), np.inf)
        rgb = np.zeros((len(dirs), 3))
        dynamic = np.zeros(len(dirs), bool)
        for sphere in SPHERES:
            oc = origin - sphere.center_at(t)
            a = (dirs**2).sum(-1)
            b = 2 * dirs @ oc
            c = oc @ oc - sphere.radius**2
            disc = b * b - 4 * a * c
            hit = disc > 0
            s = np.where(hit, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)   # ray parameter = z (z-dir 1)
            closer = hit & (s > 0) & (s < best)
            if closer.any():
                best[closer] = s[closer]
                rgb[closer] = texture(sphere, origin + s[closer, None] * dirs[closer], t)
                dynamic[closer] = sphere.dynamic
        return best, rgb, dynamic

    jj, ii = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    depth, _, dynamic = cast(jj + 0.5, ii + 0.5)
    rgb_sum, alpha_sum = np.zeros((height * width, 3)), np.zeros(height * width)
    for sy in range(samples):
        for sx in range(samples):
            d, rgb, _ = cast(jj + (sx + 0.5) / samples, ii + (sy + 0.5) / samples)
            hit = np.isfinite(d)
            rgb_sum += rgb * hit[:, None]
            alpha_sum += hit
    alpha = alpha_sum / samples**2
    color = rgb_sum / np.maximum(alpha_sum, 1)[:, None]
    return {"rgb": color.reshape(height, width, 3), "alpha": alpha.reshape(height, width),
            "depth": np.where(np.isfinite(depth), depth, 0.0).reshape(height, width),
            "dynamic": dynamic.reshape(height, width)}


def hemisphere_camera(rng: np.random.Generator, radius: float = 3.2) -> np.ndarray:
    azimuth = rng.uniform(0, 2 * np.pi)
    elevation = rng.uniform(0.15, 0.9)
    eye = radius * np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                             np.sin(elevation)])
    return look_at_w2c(eye, np.zeros(3))


def surface_distance(points: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Distance (P,) of world points (P, 3) seen at times t (P,) to the nearest sphere surface at that time."""
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), (len(points),))
    out = np.full(len(points), np.inf)
    for sphere in SPHERES:
        centers = sphere.center + t[:, None] * sphere.velocity
        out = np.minimum(out, np.abs(np.linalg.norm(points - centers, axis=1) - sphere.radius))
    return out


@dataclass
class SceneFiles:
    root: Path           # the D-NeRF folder
    geometry: Path       # a folder holding geometry/ artifacts (the run folder)


def make_scene(root: Path, run_dir: Path, n_train: int = 12, n_test: int = 4, size: int = 32, seed: int = 0,
               samples: int = 2, views_per_time: int = 1, test_between: bool = False) -> SceneFiles:
    """Write the D-NeRF folder ``root`` and the oracle geometry artifacts into ``run_dir``/geometry.

    ``n_train`` training times evenly over [0, 1], each seen by ``views_per_time`` random cameras (1: monocular);
    test views at random times in [0.05, 0.95], or with ``test_between`` halfway between training times (where only
    motion, not a copy fitted at that time, can place the moving sphere)."""
    rng = np.random.default_rng(seed)
    K = intrinsics_from_fov(FOV_X, size, size)
    times = np.linspace(0, 1, n_train)
    train_times = np.repeat(times, views_per_time)
    if test_between:
        halfway = (times[:-1] + times[1:]) / 2
        test_times = halfway[np.arange(n_test) % len(halfway)]
    else:
        test_times = rng.uniform(0.05, 0.95, n_test)
    frames = []   # (split, name, time, w2c)
    for split, times in (("train", train_times), ("test", test_times)):
        for i, t in enumerate(times):
            frames.append((split, f"r_{i:03d}", float(t), hemisphere_camera(rng)))
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        entries = []
        for s, name, t, w2c in frames:
            if s != split:
                continue
            out = render(w2c, K, size, size, t, samples)
            rgba = np.concatenate([out["rgb"] * (out["alpha"][..., None] > 0), out["alpha"][..., None]], -1)
            write_png(root / split / f"{name}.png", rgba)
            entries.append({"file_path": f"./{split}/{name}", "time": t,
                            "transform_matrix": opencv_w2c_to_opengl_c2w(w2c).tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": FOV_X, "frames": entries}))
    write_oracle_geometry(root, run_dir, samples)
    return SceneFiles(root, run_dir)


def write_oracle_geometry(root: Path, run_dir: Path, samples: int = 2) -> None:
    """geometry/ artifacts with the exact cameras, depth and dynamic masks of every frame (as named by the loader)."""
    from pipeline.scene import SceneConfig, load_scene

    scene = load_scene(SceneConfig(source=str(root)))
    geometry = run_dir / "geometry"
    entries = []
    for f in scene.frames:
        cam = f.camera
        out = render(cam.world_to_camera, cam.K, cam.width, cam.height, f.time, samples)
        write_npy(geometry / "depth" / f"{f.name}.npy", out["depth"].astype(np.float32))
        write_npy(geometry / "confidence" / f"{f.name}.npy", np.ones_like(out["depth"], dtype=np.float32))
        write_png(geometry / "dynamic_mask" / f"{f.name}.png", (out["dynamic"] * 255).astype(np.uint8))
        entries.append({"name": f.name, "index": f.index, "time": f.time, "time_index": f.time_index,
                        "split": f.split, "width": cam.width, "height": cam.height, "K": cam.K.tolist(),
                        "world_to_camera": cam.world_to_camera.tolist()})
    write_json(geometry / "cameras.json", {"convention": "opencv", "source": "dataset", "frames": entries})
