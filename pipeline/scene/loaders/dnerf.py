"""D-NeRF synthetic / Blender format with time: ``transforms_{train,val,test}.json`` and RGBA PNGs.

``camera_angle_x`` is the horizontal field of view; ``transform_matrix`` is camera-to-world in OpenGL/Blender axes
(converted to OpenCV world-to-camera here); ``time`` is in [0, 1].

Scenes written by ``page4dgs make-scene`` also hold ``ground_truth/depth/<split>/<stem>.npy`` (float32 z-depth, 0 =
background) and ``ground_truth/dynamic_mask/<split>/<stem>.png`` (255 = moving); where present they are attached as
``Frame.load_depth`` and ``Frame.load_dynamic_mask`` (when the frames are resized, depth is resampled to the
nearest pixel, masks area-averaged and thresholded at 0.5). Both are checked from their headers when the scene
loads and must have their image's size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.cameras import intrinsics_from_fov, opengl_c2w_to_opencv_w2c
from pipeline.errors import UserError
from pipeline.io import read_json, read_npy_map, read_npy_map_size
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import image_size, resize_array, scaled_size
from pipeline.scene.loaders.common import (check_frame_count, image_loader, is_rigid_c2w, mask_loader,
                                           normalise_times, resolution_factor, unique_names)
from pipeline.scene.model import Camera, Frame, Scene

SPLITS = ("train", "val", "test")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "transforms_train.json").is_file()


def _image_path(root: Path, file_path: str, json_path: Path) -> Path:
    rel = Path(file_path)
    candidates = [root / rel] if rel.suffix else [root / rel.with_suffix(".png"), root / (str(rel) + ".png")]
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(f"image '{file_path}' listed there does not exist", json_path)


def _ground_truth(root: Path, image: Path, stored: tuple[int, int], size: tuple[int, int] | None):
    """Loaders of the ground-truth depth and dynamic mask of ``image`` (None where absent); ``stored`` = (W, H) of
    the image file, which the depth map must have; ``size`` = (W, H) to resample to, or None."""
    try:
        relative = image.relative_to(root).with_suffix("")             # e.g. train/r_000
    except ValueError:                                                  # an image outside the scene folder
        return None, None
    depth_path = root / "ground_truth" / "depth" / relative.parent / f"{relative.name}.npy"
    mask_path = root / "ground_truth" / "dynamic_mask" / relative.parent / f"{relative.name}.png"

    def check_size(depth_size: tuple[int, int] | None) -> None:
        if depth_size is not None and depth_size != tuple(stored):
            raise UserError(f"depth map is {depth_size[0]}x{depth_size[1]} but its image is "
                            f"{stored[0]}x{stored[1]}", depth_path)

    def load_depth() -> np.ndarray:
        depth = read_npy_map(depth_path, "depth map")
        check_size((depth.shape[1], depth.shape[0]))
        return resize_array(depth, size, nearest=True) if size is not None else depth

    has_depth = depth_path.is_file()
    if has_depth:                                  # now, from the header: not after the stages that come before
        check_size(read_npy_map_size(depth_path, "depth map"))
    load_mask = (mask_loader(mask_path, size, stored, "dynamic mask", "image", same_size=True)
                 if mask_path.is_file() else None)
    return (load_depth if has_depth else None), load_mask


def _get(mapping: dict, key: str, where: Path, context: str = ""):
    if key not in mapping:
        raise UserError(f"missing key '{key}'{context}", where)
    return mapping[key]


def _number(value, what: str, where: Path) -> float:
    """A finite float from a JSON value, or a one-line error naming the field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}", where) from None
    if not np.isfinite(number):
        raise UserError(f"{what} must be finite, got {value!r}", where)
    return number


def load(path: Path, config: SceneConfig) -> Scene:
    factor = resolution_factor(config.resolution, 1.0)
    raw: list[tuple[str, dict, Path, float]] = []  # (split, frame json, image path, fov_x)
    for split in SPLITS:
        json_path = path / f"transforms_{split}.json"
        if not json_path.exists():
            continue
        meta = read_json(json_path)
        if not isinstance(meta, dict):
            raise UserError("expected a JSON object", json_path)
        fov_x = _number(_get(meta, "camera_angle_x", json_path), "camera_angle_x", json_path)
        if not 0.0 < fov_x < np.pi:
            raise UserError(f"camera_angle_x must be a field of view in radians in (0, pi), got {fov_x}", json_path)
        entries = _get(meta, "frames", json_path)
        if not isinstance(entries, list):
            raise UserError("'frames' must be a list", json_path)
        for k, entry in enumerate(entries):
            ctx = f" in frames[{k}]"
            if not isinstance(entry, dict):
                raise UserError(f"frames[{k}] must be a JSON object, got {json.dumps(entry)[:80]}", json_path)
            _get(entry, "transform_matrix", json_path, ctx)
            image = _image_path(path, str(_get(entry, "file_path", json_path, ctx)), json_path)
            raw.append((split, entry, image, fov_x))
    check_frame_count([r for r in raw if r[0] == "train"], path, "training frames")

    has_time = all("time" in r[1] for r in raw)
    timeless = [r for r in raw if "time" not in r[1]]
    if not has_time and len(timeless) < len(raw):       # some frames timed, others not: damaged, not static
        split, entry = timeless[0][0], timeless[0][1]
        raise UserError(f"missing key 'time' in the frame '{entry.get('file_path')}' (other frames have one)",
                        path / f"transforms_{split}.json")
    times = (normalise_times([_number(r[1]["time"], f"time of '{r[1].get('file_path')}'", path) for r in raw])
             if has_time else None)
    has_ground_truth = (path / "ground_truth").is_dir()
    frames: list[Frame] = []
    for k, (split, entry, image, fov_x) in enumerate(raw):
        w0, h0 = image_size(image)
        width, height = scaled_size(w0, h0, factor, config.max_size)
        try:
            c2w = np.asarray(entry["transform_matrix"], dtype=np.float64)
            assert c2w.shape == (4, 4)
        except (ValueError, TypeError, AssertionError):
            raise UserError(f"transform_matrix of '{entry['file_path']}' is not a 4x4 matrix",
                            path / f"transforms_{split}.json") from None
        if not np.isfinite(c2w).all():
            raise UserError(f"transform_matrix of '{entry['file_path']}' has non-finite values",
                            path / f"transforms_{split}.json")
        if not is_rigid_c2w(c2w):
            raise UserError(f"transform_matrix of '{entry['file_path']}' is not a rigid camera-to-world matrix "
                            "(rotation, translation, last row 0 0 0 1)", path / f"transforms_{split}.json")
        camera = Camera(intrinsics_from_fov(fov_x, w0, h0), opengl_c2w_to_opencv_w2c(c2w), w0, h0)
        if (width, height) != (w0, h0):
            camera = camera.scaled(width, height)
        time = times[k] if times is not None else 0.0
        resize = (width, height) if (width, height) != (w0, h0) else None
        load_depth, load_mask = _ground_truth(path, image, (w0, h0), resize) if has_ground_truth else (None, None)
        frames.append(Frame(name=image.stem, index=0, time=time, split=split, width=width, height=height,
                            load_image=image_loader(image, resize), camera=camera, source_path=image,
                            load_depth=load_depth, load_dynamic_mask=load_mask))
    # Order frames by time (then split) so that `index` is temporal, as for videos.
    frames.sort(key=lambda f: (f.time, SPLITS.index(f.split), f.name))
    distinct = sorted({f.time for f in frames})
    for i, f in enumerate(frames):
        f.index = i
        f.time_index = distinct.index(f.time)
    unique_names(frames)
    counts = {s: sum(f.split == s for f in frames) for s in SPLITS}
    notes = [f"D-NeRF: {counts['train']} train / {counts['val']} val / {counts['test']} test frames, "
             f"{frames[0].width}x{frames[0].height}" + ("" if has_time else " (no 'time' key: static scene)")]
    if has_ground_truth:
        notes.append(f"ground truth: depth for {sum(f.load_depth is not None for f in frames)} frames, dynamic "
                     f"masks for {sum(f.load_dynamic_mask is not None for f in frames)}")
    bg = (1.0, 1.0, 1.0) if config.background == "white" else (0.0, 0.0, 0.0)
    return Scene(name=path.name, format="dnerf", source=path, frames=frames, background=bg, notes=notes)
