"""D-NeRF synthetic / Blender format with time: ``transforms_{train,val,test}.json`` and RGBA PNGs.

``camera_angle_x`` is the horizontal field of view; ``transform_matrix`` is camera-to-world in OpenGL/Blender axes
(converted to OpenCV world-to-camera here); ``time`` is in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cameras import intrinsics_from_fov, opengl_c2w_to_opencv_w2c
from pipeline.errors import UserError
from pipeline.io import read_json
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import image_size, scaled_size
from pipeline.scene.loaders.common import check_frame_count, image_loader, normalise_times, unique_names
from pipeline.scene.model import Camera, Frame, Scene

SPLITS = ("train", "val", "test")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "transforms_train.json").is_file()


def _resolution_factor(config: SceneConfig) -> float:
    if config.resolution in ("auto", "1x"):
        return 1.0
    try:
        return float(config.resolution.rstrip("x"))
    except ValueError:
        raise UserError(f"scene.resolution must be 'auto' or like '2x', got {config.resolution!r}") from None


def _image_path(root: Path, file_path: str, json_path: Path) -> Path:
    rel = Path(file_path)
    candidates = [root / rel] if rel.suffix else [root / rel.with_suffix(".png"), root / (str(rel) + ".png")]
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(f"image '{file_path}' listed there does not exist", json_path)


def _get(mapping: dict, key: str, where: Path, context: str = ""):
    if key not in mapping:
        raise UserError(f"missing key '{key}'{context}", where)
    return mapping[key]


def load(path: Path, config: SceneConfig) -> Scene:
    factor = _resolution_factor(config)
    raw: list[tuple[str, dict, Path, float]] = []  # (split, frame json, image path, fov_x)
    for split in SPLITS:
        json_path = path / f"transforms_{split}.json"
        if not json_path.exists():
            continue
        meta = read_json(json_path)
        if not isinstance(meta, dict):
            raise UserError("expected a JSON object", json_path)
        fov_x = float(_get(meta, "camera_angle_x", json_path))
        entries = _get(meta, "frames", json_path)
        if not isinstance(entries, list):
            raise UserError("'frames' must be a list", json_path)
        for k, entry in enumerate(entries):
            ctx = f" in frames[{k}]"
            _get(entry, "transform_matrix", json_path, ctx)
            image = _image_path(path, str(_get(entry, "file_path", json_path, ctx)), json_path)
            raw.append((split, entry, image, fov_x))
    check_frame_count([r for r in raw if r[0] == "train"], path, "training frames")

    has_time = all("time" in r[1] for r in raw)
    times = normalise_times([float(r[1]["time"]) for r in raw]) if has_time else None
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
        camera = Camera(intrinsics_from_fov(fov_x, w0, h0), opengl_c2w_to_opencv_w2c(c2w), w0, h0)
        if (width, height) != (w0, h0):
            camera = camera.scaled(width, height)
        time = times[k] if times is not None else 0.0
        frames.append(Frame(name=image.stem, index=0, time=time, split=split, width=width, height=height,
                            load_image=image_loader(image, (width, height) if (width, height) != (w0, h0) else None),
                            camera=camera, source_path=image))
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
    bg = (1.0, 1.0, 1.0) if config.background == "white" else (0.0, 0.0, 0.0)
    return Scene(name=path.name, format="dnerf", source=path, frames=frames, background=bg, notes=notes)
