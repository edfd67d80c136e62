"""Exports for viewers and other tools: per-timestamp 3DGS PLY, nerfstudio ``transforms.json``, COLMAP text model.

**3DGS PLY** (``../shared/spec/gsplat.md`` §7, Inria ``save_ply`` layout, read by common splat viewers): one
``vertex`` element, binary little-endian, all ``float``, in the order ``x y z nx ny nz f_dc_0..2 f_rest_0..
opacity scale_0..2 rot_0..3``. Values are pre-activation: opacity = logit(o), scale_k = log(sigma_k), rot = unit
quaternion (w, x, y, z), normals 0, ``f_dc`` = SH DC, ``f_rest`` channel-major (all R coefficients, then G, then B).
There is no standard 4D format, so each exported time gets its own PLY with the deformation baked in. Rows with a
non-finite value are dropped (one bad row must not make a viewer drop the file); opacities are clipped to
[1e-6, 1 - 1e-6] and scales to >= 1e-12 before logit / log.

**nerfstudio** (spec ``metrics-and-data.md`` §9.6): per-frame ``fl_x fl_y cx cy w h``, ``camera_model`` PINHOLE,
``transform_matrix`` = camera-to-world in OpenGL axes, ``time``, explicit ``train/val/test_filenames``,
``ply_file_path`` = the fused point cloud.

**COLMAP** text model (§9.7): ``cameras.txt`` (PINHOLE fx fy cx cy, one camera per distinct intrinsics and size),
``images.txt`` (quaternion w x y z and translation of world-to-camera, OpenCV axes, no 2-D points),
``points3D.txt`` (the fused point cloud, error 0, empty tracks). COLMAP has no notion of time; ``images.txt`` lists
the frames in time order and the nerfstudio export keeps the times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from pipeline.cameras import opencv_w2c_to_opengl_c2w
from pipeline.io import atomic_path, with_default_mode

OPACITY_EPS = 1e-6
MIN_SCALE = 1e-12


def ply_property_names(sh_degree: int) -> list[str]:
    """Vertex property names of the 3DGS layout for SH degree ``sh_degree``."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def gaussians_to_ply_rows(gaussians: dict) -> tuple[np.ndarray, int]:
    """Post-activation Gaussians (``GaussianModel4D.gaussians_at``: means (N, 3), quats (N, 4) w x y z, scales
    (N, 3), opacities (N,), sh (N, K, 3)) -> (structured float32 rows in the 3DGS layout, number of rows dropped)."""
    def array(key: str) -> np.ndarray:
        value = gaussians[key]
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return value.astype(np.float64)

    means, quats, scales, opacities, sh = (array(k) for k in ("means", "quats", "scales", "opacities", "sh"))
    n, n_coeffs = means.shape[0], sh.shape[1]
    sh_degree = int(round(np.sqrt(n_coeffs))) - 1
    if (sh_degree + 1) ** 2 != n_coeffs:
        raise ValueError(f"sh has {n_coeffs} coefficients per channel, not a square")
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    opacity = np.clip(opacities.reshape(n), OPACITY_EPS, 1 - OPACITY_EPS)
    columns = np.concatenate([
        means,                                                          # x y z
        np.zeros((n, 3)),                                               # nx ny nz
        sh[:, 0, :],                                                    # f_dc_0..2
        sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (n_coeffs - 1)),  # (N, K-1, 3) -> (N, 3, K-1) -> f_rest
        np.log(opacity / (1 - opacity))[:, None],                       # opacity (logit)
        np.log(np.maximum(scales, MIN_SCALE)),                          # scale_0..2 (log)
        quats,                                                          # rot_0..3 (w x y z)
    ], axis=1)
    finite = np.isfinite(columns).all(axis=1)
    names = ply_property_names(sh_degree)
    rows = np.empty(int(finite.sum()), dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        rows[name] = columns[finite, i]
    return rows, int(n - finite.sum())


def write_gaussian_ply(path: str | Path, gaussians: dict) -> int:
    """Write one 3DGS PLY atomically; returns the number of rows dropped as non-finite."""
    from plyfile import PlyData, PlyElement

    rows, dropped = gaussians_to_ply_rows(gaussians)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(rows, "vertex")], byte_order="<").write(str(tmp))
    return dropped


def read_points_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The fused point cloud (``geometry/points.ply``): xyz (N, 3) float64, rgb (N, 3) uint8."""
    from plyfile import PlyData, PlyParseError

    from pipeline.errors import UserError

    try:
        vertex = PlyData.read(str(path))["vertex"]
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    except (PlyParseError, OSError, ValueError, KeyError, IndexError) as err:
        raise UserError(f"not a readable point cloud PLY with x, y, z ({type(err).__name__})", path) from None
    names = vertex.data.dtype.names
    if all(c in names for c in ("red", "green", "blue")):
        rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    return xyz, rgb


# ----------------------------------------------------------------------------------------------------------------
# Cameras


def nerfstudio_transforms(frames: Sequence, image_paths: Sequence[str], ply_path: str | None) -> dict:
    """``transforms.json`` content for frames with ``name, split, time, width, height, K, world_to_camera``;
    ``image_paths`` are the frames' images relative to the file."""
    entries = []
    for frame, image in zip(frames, image_paths, strict=True):
        K = np.asarray(frame.K, dtype=np.float64)
        entries.append({
            "file_path": image,
            "transform_matrix": opencv_w2c_to_opengl_c2w(frame.world_to_camera).tolist(),
            "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "w": int(frame.width), "h": int(frame.height),
            "time": float(frame.time),
        })
    out: dict = {"camera_model": "PINHOLE", "frames": entries}
    for split in ("train", "val", "test"):
        names = [image for frame, image in zip(frames, image_paths) if frame.split == split]
        if names:
            out[f"{split}_filenames"] = names
    if ply_path is not None:
        out["ply_file_path"] = ply_path
    return out


def write_nerfstudio(path: str | Path, frames: Sequence, image_paths: Sequence[str], ply_path: str | None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(nerfstudio_transforms(frames, image_paths, ply_path), indent=2) + "\n")


def _numbers(*values: float) -> str:
    """Space-separated shortest round-trip decimal forms (full float64 precision)."""
    return " ".join(repr(float(v)) for v in values)


def colmap_text_model(frames: Sequence, image_names: Sequence[str], points: np.ndarray | None = None,
                      colors: np.ndarray | None = None) -> dict[str, str]:
    """{"cameras.txt", "images.txt", "points3D.txt"} contents of a COLMAP text model of the frames."""
    camera_ids: dict[tuple, int] = {}
    camera_lines, image_lines = [], []
    for frame in frames:
        K = np.asarray(frame.K, dtype=np.float64)
        key = (int(frame.width), int(frame.height), *np.round([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], 9).tolist())
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            camera_lines.append(f"{camera_ids[key]} PINHOLE {frame.width} {frame.height} "
                                + _numbers(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    for image_id, (frame, name) in enumerate(zip(frames, image_names, strict=True), start=1):
        K = np.asarray(frame.K, dtype=np.float64)
        key = (int(frame.width), int(frame.height), *np.round([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], 9).tolist())
        w2c = np.asarray(frame.world_to_camera, dtype=np.float64)
        qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()     # scipy is scalar-last
        if qw < 0:                                                      # COLMAP's convention: qw >= 0
            qw, qx, qy, qz = -qw, -qx, -qy, -qz
        tx, ty, tz = w2c[:3, 3]
        image_lines += [f"{image_id} {_numbers(qw, qx, qy, qz, tx, ty, tz)} {camera_ids[key]} {name}", ""]
    point_lines = []
    if points is not None:
        rgb = np.full((len(points), 3), 128, np.uint8) if colors is None else np.asarray(colors, np.uint8)
        for point_id, (p, c) in enumerate(zip(np.asarray(points, np.float64), rgb), start=1):
            point_lines.append(f"{point_id} {_numbers(*p)} {c[0]} {c[1]} {c[2]} 0.0")
    header = "# written by page4dgs export\n"
    return {
        "cameras.txt": header + f"# Number of cameras: {len(camera_lines)}\n# CAMERA_ID, MODEL, WIDTH, HEIGHT, "
                                "PARAMS[]\n" + "".join(line + "\n" for line in camera_lines),
        "images.txt": header + f"# Number of images: {len(frames)}\n# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, "
                               "CAMERA_ID, NAME\n# POINTS2D[] as (X, Y, POINT3D_ID)\n"
                      + "".join(line + "\n" for line in image_lines),
        "points3D.txt": header + f"# Number of points: {len(point_lines)}\n# POINT3D_ID, X, Y, Z, R, G, B, ERROR, "
                                 "TRACK[] as (IMAGE_ID, POINT2D_IDX)\n" + "".join(line + "\n" for line in point_lines),
    }


# ----------------------------------------------------------------------------------------------------------------
# A finished run -> export/<format>/


def export_times(cameras: Sequence, count: int) -> list[float]:
    """The distinct input times, or ``count`` of them evenly spaced (count <= 0: all)."""
    times = sorted({float(c.time) for c in cameras})
    if 0 < count < len(times):
        picks = np.round(np.linspace(0, len(times) - 1, count)).astype(int)
        times = [times[i] for i in sorted(set(picks.tolist()))]
    return times


def export_run(run_dir: Path, fmt: str, config, device: str = "cpu") -> Path:
    """Write ``run_dir/export/<fmt>/`` (``ply``, ``nerfstudio`` or ``colmap``) from a finished run; the folder is
    replaced as a whole once complete. ``config`` is the run's :class:`pipeline.config.Config`."""
    import shutil
    import tempfile

    from pipeline.errors import UserError
    from pipeline.io import write_json, write_png, write_text
    from pipeline.log import progress
    from stages.initialize.geometry_io import read_cameras
    from stages.render.video import replace_tree

    cameras_path = run_dir / "geometry" / "cameras.json"
    if not cameras_path.is_file():
        raise UserError("missing 'geometry/cameras.json': the run has not finished its geometry stage", run_dir)
    cameras, _ = read_cameras(cameras_path)
    cameras = sorted(cameras, key=lambda c: (c.time, c.index))
    points_path = run_dir / "geometry" / "points.ply"
    export_dir = run_dir / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    tmp = with_default_mode(Path(tempfile.mkdtemp(prefix=f".{fmt}.", suffix=".tmp", dir=export_dir)))
    try:
        if fmt == "ply":
            from stages.render.stage import load_run_model

            model = load_run_model(run_dir, device)
            index = []
            with torch.no_grad():
                for k, t in enumerate(progress(export_times(cameras, config.render.export_timestamps),
                                               desc="ply export", unit="time")):
                    name = f"t{k:04d}.ply"
                    dropped = write_gaussian_ply(tmp / name, model.gaussians_at(t))
                    frames = [c.name for c in cameras if float(c.time) == t]
                    index.append({"file": name, "time": t, "frames": frames, "dropped_non_finite": dropped})
            # rasterize_mode: how this model was trained and renders; 3DGS viewers draw the PLYs 'classic'.
            write_json(tmp / "index.json", {"format": "3dgs-ply", "sh_degree": model.sh_degree,
                                            "rasterize_mode": model.rasterize_mode, "files": index})
            if points_path.is_file():
                shutil.copyfile(points_path, tmp / "points.ply")
        elif fmt in ("nerfstudio", "colmap"):
            from pipeline.scene import load_scene

            scene = load_scene(config.scene)
            image_names = []
            for cam in progress(cameras, desc=f"{fmt} images", unit="image"):
                try:
                    frame = scene.frame(cam.name)
                except KeyError:
                    raise UserError(f"frame '{cam.name}' of geometry/cameras.json is not in the scene "
                                    f"'{config.scene.source}'", run_dir) from None
                write_png(tmp / "images" / f"{cam.name}.png", scene.rgb(frame))
                image_names.append(f"{cam.name}.png")
            if fmt == "nerfstudio":
                ply = None
                if points_path.is_file():
                    shutil.copyfile(points_path, tmp / "points.ply")
                    ply = "points.ply"
                write_nerfstudio(tmp / "transforms.json", cameras, [f"images/{n}" for n in image_names], ply)
            else:
                points, colors = read_points_ply(points_path) if points_path.is_file() else (None, None)
                for file_name, text in colmap_text_model(cameras, image_names, points, colors).items():
                    write_text(tmp / "sparse" / "0" / file_name, text)
        else:
            raise UserError(f"unknown export format '{fmt}' (ply, nerfstudio, colmap)")
        target = export_dir / fmt
        replace_tree(tmp, target)
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
