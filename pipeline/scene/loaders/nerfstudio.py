"""nerfstudio ``transforms.json`` (as written by ``ns-process-data`` and by ``page4dgs export --format nerfstudio``).

Intrinsics ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` (pixels, pixel centres at +0.5) and ``camera_model`` sit at
the top level (shared) or in each frame (a frame's value wins). ``fl_y`` defaults to ``fl_x``, ``cx``/``cy`` to the
image centre, ``w``/``h`` to the image file's size; where the image file's size differs from ``w``x``h``, K is scaled
to the file. Pinhole-family models only (PINHOLE, SIMPLE_PINHOLE, OPENCV, SIMPLE_RADIAL, RADIAL; OPENCV when
absent, as in nerfstudio); their distortion ``k1 k2 k3 k4 p1 p2`` is not modelled and a note says so when non-zero.

``frames[].transform_matrix`` is camera-to-world in OpenGL axes (x right, y up, z back), converted to OpenCV
world-to-camera. The file's world is kept as it is: no auto-orientation, centring or rescaling as nerfstudio's
parser does (``applied_transform``/``applied_scale`` describe how the file's world was made and are not reapplied).

Frames are ordered by ``file_path`` (natural order, as nerfstudio sorts by file name). Time: a per-frame ``time``
(normalised to [0, 1] when it exceeds 1) where every frame has one, else the frame order (i / (n - 1)). Split:
``train_filenames`` / ``val_filenames`` / ``test_filenames`` when present (unlisted frames are dropped), else every
``scene.test_every``-th frame is a test frame (:func:`pipeline.scene.loaders.common.holdout_split`).
``mask_path``, ``depth_file_path`` and ``ply_file_path`` are not read (a note says so). ``scene.resolution``:
'auto' = '1x'; 'Nx' downscales by N (K scaled); ``scene.max_size`` caps the longer side.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.cameras import opengl_c2w_to_opencv_w2c
from pipeline.errors import UserError
from pipeline.io import read_json
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import image_size, natural_key, scaled_size
from pipeline.scene.loaders.common import (MISSING, aspect_ratios_differ, background_rgb, check_frame_count,
                                           finish_frames, holdout_split, image_loader, is_rigid_c2w, json_array,
                                           json_number, json_object, json_strings, normalise_times, resolution_factor,
                                           split_counts)
from pipeline.scene.model import Camera, Frame, Scene

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV", "SIMPLE_RADIAL", "RADIAL")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
SPLIT_KEYS = {"train_filenames": "train", "val_filenames": "val", "test_filenames": "test"}


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "transforms.json").is_file()


def _relative(file_path: str) -> str:
    """Canonical relative POSIX path ('./images/a.png' -> 'images/a.png') for matching split lists."""
    return PurePosixPath(*[p for p in PurePosixPath(file_path.replace("\\", "/")).parts if p != "."]).as_posix()


def _image_path(root: Path, file_path: str, json_path: Path) -> Path:
    candidate = root / file_path
    for c in ([candidate] if candidate.suffix else [candidate, candidate.with_name(candidate.name + ".png")]):
        if c.is_file():
            return c
    raise UserError(f"image '{file_path}' listed there does not exist", json_path)


def frame_camera(meta: dict, entry: dict, image_wh: tuple[int, int], json_path: Path, where: str
                 ) -> tuple[Camera, bool]:
    """The OpenCV camera of one ``frames[]`` entry at the stored image size, and whether it has distortion."""

    def value(key: str, default=MISSING) -> float:
        source = entry if key in entry else meta
        if key not in source and default is MISSING:
            raise UserError(f"missing key '{key}' (neither at the top level nor in {where})", json_path)
        return json_number(source, key, json_path, default)

    model = entry.get("camera_model", meta.get("camera_model", "OPENCV"))
    if model not in PINHOLE_MODELS:
        raise UserError(f"camera_model '{model}' is not supported (pinhole-family models only: "
                        f"{', '.join(PINHOLE_MODELS)})", json_path)
    width, height = value("w", image_wh[0]), value("h", image_wh[1])
    fx = value("fl_x")
    fy = value("fl_y", fx)
    cx, cy = value("cx", width / 2.0), value("cy", height / 2.0)
    if not (fx > 0 and fy > 0 and width > 0 and height > 0):
        raise UserError(f"focal lengths and image size must be positive in {where}", json_path)
    distorted = any(value(k, 0.0) != 0 for k in DISTORTION_KEYS)

    c2w = json_array(entry, "transform_matrix", None, json_path, where=where)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
    if not is_rigid_c2w(c2w):
        raise UserError(f"transform_matrix of {where} is not a 4x4 rigid camera-to-world matrix", json_path)
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    camera = Camera(K, opengl_c2w_to_opencv_w2c(c2w), int(round(width)), int(round(height)))
    if (camera.width, camera.height) != image_wh:
        if aspect_ratios_differ(image_wh, (width, height)):
            raise UserError(f"the image of {where} is {image_wh[0]}x{image_wh[1]} but 'w' and 'h' say "
                            f"{width:g}x{height:g} (aspect ratios differ)", json_path)
        camera = camera.scaled(*image_wh)
    return camera, distorted


def _split_lists(meta: dict, json_path: Path) -> dict[str, str]:
    """{relative file path: split} from the ``*_filenames`` lists, or {} when the file has none."""
    splits: dict[str, str] = {}
    for key, split in SPLIT_KEYS.items():
        for name in json_strings(meta, key, json_path, default=[]):
            rel = _relative(name)
            if splits.get(rel, split) != split:
                raise UserError(f"'{name}' is listed in two splits", json_path)
            splits[rel] = split
    return splits


def load(path: Path, config: SceneConfig) -> Scene:
    json_path = path / "transforms.json"
    meta = json_object(read_json(json_path), json_path)
    entries = meta.get("frames")
    if not isinstance(entries, list):
        raise UserError("missing list 'frames'", json_path)
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("file_path"), str):
            raise UserError(f"frames[{k}] has no 'file_path' string", json_path)
        if "transform_matrix" not in entry:
            raise UserError(f"missing key 'transform_matrix' in frames[{k}]", json_path)
    entries = sorted(entries, key=lambda e: natural_key(Path(e["file_path"])))
    explicit = _split_lists(meta, json_path)
    if explicit:
        known = {_relative(e["file_path"]) for e in entries}
        unknown = sorted(set(explicit) - known)
        if unknown:
            raise UserError(f"split list names '{unknown[0]}', which is not a frame's file_path", json_path)
    has_time = [("time" in e) for e in entries]
    if any(has_time) and not all(has_time):
        raise UserError(f"'time' is given for {sum(has_time)} of {len(entries)} frames (all or none)", json_path)
    times = (normalise_times([json_number(e, "time", json_path) for e in entries]) if entries and all(has_time)
             else [i / max(len(entries) - 1, 1) for i in range(len(entries))])
    distinct_times = sorted(set(times))

    factor = resolution_factor(config.resolution, 1.0)
    frames: list[Frame] = []
    n_distorted = n_masks = n_depths = 0
    for i, (entry, time) in enumerate(zip(entries, times)):
        rel = _relative(entry["file_path"])
        split = explicit.get(rel) if explicit else holdout_split(i, config.test_every)
        if split is None:
            continue
        image = _image_path(path, entry["file_path"], json_path)
        stored_wh = image_size(image)
        camera, distorted = frame_camera(meta, entry, stored_wh, json_path, f"frames[{i}] ('{entry['file_path']}')")
        width, height = scaled_size(*stored_wh, factor, config.max_size)
        resize = (width, height) if (width, height) != stored_wh else None
        if resize:
            camera = camera.scaled(width, height)
        n_distorted += distorted
        n_masks += "mask_path" in entry
        n_depths += "depth_file_path" in entry
        frames.append(Frame(name=image.stem, index=0, time=time, split=split, width=width, height=height,
                            load_image=image_loader(image, resize), camera=camera,
                            time_index=distinct_times.index(time), source_path=image))
    check_frame_count([f for f in frames if f.split == "train"], json_path, "training frames")
    finish_frames(frames)

    notes = [f"nerfstudio: {split_counts(frames)} frames ("
             + ("train/val/test_filenames" if explicit else f"every {config.test_every}th frame is a test frame")
             + f"), {frames[0].width}x{frames[0].height}; time from "
             + ("'time'" if all(has_time) else "frame order") + "; world kept as in the file (no auto-orient/scale)"]
    if explicit and len(frames) < len(entries):
        notes.append(f"{len(entries) - len(frames)} frames in no split list are unused")
    if n_distorted:
        notes.append(f"{n_distorted} frames have non-zero lens distortion: ignored (pinhole model)")
    if n_masks or n_depths:
        notes.append(f"mask_path ({n_masks} frames) and depth_file_path ({n_depths} frames) are not read")
    if "ply_file_path" in meta:
        notes.append("ply_file_path is not read (the geometry stage makes its own points)")
    return Scene(name=path.name, format="nerfstudio", source=path, frames=frames,
                 background=background_rgb(config.background), notes=notes)
