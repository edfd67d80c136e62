"""Nerfies / HyperNeRF captures: ``dataset.json``, ``metadata.json``, ``scene.json``, ``camera/<id>.json`` and
``rgb/{1x,2x,4x,8x,16x}/<id>.png``.

Cameras. A camera JSON holds ``orientation`` (3x3 world-to-camera rotation, rows = camera axes, OpenCV),
``position`` (camera centre in world units), ``focal_length``, ``principal_point`` [cx, cy], ``pixel_aspect_ratio``,
``skew``, ``radial_distortion`` [k1, k2, k3], ``tangential_distortion`` [p1, p2] (older files: ``tangential``) and
``image_size`` [W, H], all at 1x. Its projection is x_c = orientation (X - position),
u = f x_c/z_c + skew y_c/z_c + cx, v = f pixel_aspect y_c/z_c + cy (plus distortion), with pixel centres at +0.5 like
ours. So world_to_camera = [orientation | -orientation position] and K = [[f, 0, cx], [0, f pixel_aspect, cy]].
At factor n (``rgb/<n>x``) K is divided by n, exactly as Nerfies' ``Camera.scale(1/n)`` does.

Not modelled: lens distortion and skew. Images are used as stored with the pinhole part of the camera (as 4DGaussians
does); a note says so whenever a camera has non-zero distortion or skew.

World. ``scene.json`` {center, scale} normalises the world as Nerfies/HyperNeRF/DyCheck do:
X' = (X - center) scale. Camera centres are normalised that way (rotations and K are unchanged), so the scene's
world is the normalised one. Without ``scene.json`` the file's world is kept.

Splits. With a non-empty ``val_ids`` (HyperNeRF "vrig" captures) ``train_ids`` train and ``val_ids`` are test.
Otherwise ("interp" captures) the 4DGaussians protocol over ``ids``: indices 0, 4, 8, ... train, indices 2, 6, ...
test (one fewer than train), the others unused.

Time. ``metadata.json`` {id: {warp_id, camera_id, appearance_id}}: time = warp_id / max(warp_id) over all ``ids``,
``time_index`` = warp_id, ``camera_id`` = camera_id.

Resolution. ``scene.resolution``: 'auto' = the 2x folder (4DGaussians' protocol), or '1x', '2x', ... to pick a
folder; ``scene.max_size`` further downscales (K rescaled).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.io import read_json, read_npy_map, read_npy_map_size
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import image_size, resize_array, scaled_size
from pipeline.scene.loaders.common import (aspect_ratios_differ, background_rgb, check_frame_count, finish_frames,
                                           image_loader, json_array, json_int, json_number, json_object, json_strings,
                                           mask_loader, resolution_factor, split_counts)
from pipeline.scene.model import Camera, Frame, Scene

AUTO_FACTOR = 2  # 4DGaussians trains and evaluates HyperNeRF on rgb/2x


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "dataset.json").is_file()


# ----------------------------------------------------------------------------------------------------------------
# Shared with the DyCheck loader: camera JSON, scene.json, resolution folders, frame building.


@dataclass
class WorldNormalisation:
    """X' = (X - center) * scale, from ``scene.json``."""

    center: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) world units
    scale: float = 1.0

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> (..., 3) normalised points."""
        return (np.asarray(points, dtype=np.float64) - self.center) * self.scale


def read_scene_json(root: Path) -> tuple[WorldNormalisation, str]:
    """The world normalisation of ``root/scene.json`` (identity without the file) and a note saying which."""
    path = root / "scene.json"
    if not path.exists():
        return WorldNormalisation(), "no scene.json: the file's world is kept"
    data = json_object(read_json(path), path)
    center = json_array(data, "center", (3,), path)
    scale = json_number(data, "scale", path)
    if not scale > 0:
        raise UserError(f"'scale' must be positive, got {scale}", path)
    note = f"world normalised by scene.json: X' = (X - {np.round(center, 6).tolist()}) * {scale:.6g}"
    return WorldNormalisation(center, scale), note


@dataclass
class CameraExtras:
    """What a Nerfies camera holds beyond our pinhole model."""

    distorted: bool = False   # non-zero radial or tangential distortion
    skew: float = 0.0


def read_camera(path: Path, factor: float, world: WorldNormalisation, image_wh: tuple[int, int]
                ) -> tuple[Camera, CameraExtras]:
    """The camera of a Nerfies camera JSON for the image of size ``image_wh`` stored at ``factor``: K divided by
    ``factor``, world_to_camera (OpenCV) in the normalised world."""
    if not path.is_file():
        raise UserError("camera file not found", path)
    data = json_object(read_json(path), path)
    orientation = json_array(data, "orientation", (3, 3), path)
    if (not np.allclose(orientation @ orientation.T, np.eye(3), atol=1e-4)
            or np.linalg.det(orientation) <= 0):
        raise UserError("'orientation' is not a rotation matrix", path)
    position = json_array(data, "position", (3,), path)
    focal = json_number(data, "focal_length", path)
    principal_point = json_array(data, "principal_point", (2,), path)
    aspect = json_number(data, "pixel_aspect_ratio", path, default=1.0)
    skew = json_number(data, "skew", path, default=0.0)
    radial = json_array(data, "radial_distortion", None, path, default=np.zeros(3))
    tangential_key = "tangential_distortion" if "tangential_distortion" in data else "tangential"
    tangential = json_array(data, tangential_key, None, path, default=np.zeros(2))
    if not (focal > 0 and aspect > 0):
        raise UserError(f"'focal_length' and 'pixel_aspect_ratio' must be positive, got {focal}, {aspect}", path)
    if "image_size" in data:
        size_1x = json_array(data, "image_size", (2,), path)
        expected = size_1x / factor
        if np.abs(np.asarray(image_wh) - expected).max() > 1.0:
            raise UserError(f"image is {image_wh[0]}x{image_wh[1]} but the camera's image_size "
                            f"{int(size_1x[0])}x{int(size_1x[1])} at factor {factor:g} gives "
                            f"{expected[0]:.0f}x{expected[1]:.0f}", path)

    K = np.array([[focal, 0.0, principal_point[0]],
                  [0.0, focal * aspect, principal_point[1]],
                  [0.0, 0.0, 1.0]]) / np.array([[factor], [factor], [1.0]])  # rows 0-1 scaled by 1/factor
    world_to_camera = np.eye(4)
    world_to_camera[:3, :3] = orientation
    world_to_camera[:3, 3] = -orientation @ world.apply(position)
    extras = CameraExtras(distorted=bool(np.any(radial != 0) or np.any(tangential != 0)), skew=skew)
    return Camera(K, world_to_camera, *image_wh), extras


def factor_folder(root: Path, kind: str, factor: float) -> Path:
    """``root/<kind>/<n>x`` for an integer factor n, or a :class:`UserError` naming the folders that exist."""
    base = root / kind
    folder = base / f"{factor:g}x"
    if factor != int(factor) or not folder.is_dir():
        available = [p.name for p in base.glob("*x") if p.is_dir() and p.name[:-1].isdigit()] if base.is_dir() else []
        have = ", ".join(sorted(available, key=lambda n: int(n[:-1]))) or "none"
        raise UserError(f"no '{folder.name}' image folder for scene.resolution={factor:g}x "
                        f"(available: {have})", base)
    return folder


@dataclass
class Item:
    """One frame of a Nerfies-style capture before loading."""

    name: str         # item id: file stem of camera/<name>.json and rgb/<n>x/<name>.png
    split: str
    time_index: int   # warp id / time id
    camera_id: int


def build_frames(root: Path, items: list[Item], factor: float, max_size: int, world: WorldNormalisation,
                 max_time_index: int, depth_folder: Optional[Path] = None, depth_scale: float = 1.0,
                 covisible_folders: tuple[Path, ...] = ()) -> tuple[list[Frame], list[str]]:
    """Frames (cameras, lazy images, optional depth and covisibility) for ``items`` read at ``factor``, and notes.

    Depth ``depth_folder/<name>.npy`` (z-depth, 0 = invalid) is multiplied by ``depth_scale`` and attached where the
    file exists. Covisibility masks ``<folder>/<name>.png`` are attached to test frames from the first folder that
    has them.
    """
    rgb_folder = factor_folder(root, "rgb", factor)
    frames: list[Frame] = []
    n_distorted, skews = 0, []
    for item in items:
        image = rgb_folder / f"{item.name}.png"
        if not image.is_file():
            raise UserError(f"image of item '{item.name}' not found", image)
        stored_wh = image_size(image)
        camera, extras = read_camera(root / "camera" / f"{item.name}.json", factor, world, stored_wh)
        n_distorted += extras.distorted
        if extras.skew != 0:
            skews.append(extras.skew)
        width, height = scaled_size(*stored_wh, max_size=max_size)
        resize = (width, height) if (width, height) != stored_wh else None
        if resize:
            camera = camera.scaled(width, height)
        frame = Frame(name=item.name, index=0, time=item.time_index / max_time_index if max_time_index else 0.0,
                      split=item.split, width=width, height=height, load_image=image_loader(image, resize),
                      camera=camera, camera_id=item.camera_id, time_index=item.time_index, source_path=image)
        if depth_folder is not None and (depth_folder / f"{item.name}.npy").is_file():
            frame.load_depth = _depth_loader(depth_folder / f"{item.name}.npy", depth_scale, (width, height))
        if item.split == "test":
            for folder in covisible_folders:
                if (folder / f"{item.name}.png").is_file():
                    frame.load_covisible = mask_loader(folder / f"{item.name}.png", (width, height), (width, height),
                                                       "covisibility mask", "frame")
                    break
        frames.append(frame)
    finish_frames(frames)
    notes = [f"images from {rgb_folder.relative_to(root)}, {frames[0].width}x{frames[0].height}"
             if frames else f"images from {rgb_folder.relative_to(root)}"]
    if n_distorted:
        notes.append(f"{n_distorted} of {len(items)} cameras have non-zero radial/tangential distortion: ignored "
                     "(images used as stored with the pinhole part of the camera)")
    if skews:
        notes.append(f"{len(skews)} cameras have non-zero skew (max |skew| {max(map(abs, skews)):.3g} px): ignored")
    return frames, notes


def _depth_loader(path: Path, scale: float, size: tuple[int, int]):
    """The loader of a Lidar depth map, once its header has been checked (now, when the scene loads: a damaged map
    is named before the stages run, not when the evaluation reads it)."""
    def check_size(depth_size: tuple[int, int] | None) -> None:
        if depth_size is not None and aspect_ratios_differ(depth_size, size):
            raise UserError(f"depth map is {depth_size[0]}x{depth_size[1]} but its frame is {size[0]}x{size[1]} "
                            "(aspect ratios differ)", path)

    def load() -> np.ndarray:
        depth = read_npy_map(path, "depth map")
        check_size((depth.shape[1], depth.shape[0]))
        depth = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0) * np.float32(scale)
        return resize_array(depth, size, nearest=True)

    check_size(read_npy_map_size(path, "depth map"))
    return load


def read_metadata(root: Path, ids: list[str]) -> dict[str, tuple[int, int]]:
    """{id: (warp_id, camera_id)} from ``metadata.json`` for every id in ``ids``."""
    path = root / "metadata.json"
    data = json_object(read_json(path), path)
    out = {}
    for item_id in ids:
        entry = data.get(item_id)
        if not isinstance(entry, dict):
            raise UserError(f"no entry for item '{item_id}'", path)
        if "warp_id" not in entry:
            raise UserError(f"missing key 'warp_id' for item '{item_id}'", path)
        out[item_id] = (json_int(entry["warp_id"], f"warp_id of '{item_id}'", path),
                        json_int(entry.get("camera_id", 0), f"camera_id of '{item_id}'", path))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The Nerfies / HyperNeRF loader


def interp_split(n: int) -> dict[int, str]:
    """4DGaussians' split of an "interp" capture of ``n`` items: {index: 'train' | 'test'}; other indices unused.

    Train = 0, 4, 8, ...; test = each train index + 2, except after the last train index."""
    train = list(range(0, n, 4))
    test = [i + 2 for i in train[:-1]]
    return {**{i: "train" for i in train}, **{i: "test" for i in test}}


def load(path: Path, config: SceneConfig) -> Scene:
    dataset_path = path / "dataset.json"
    dataset = json_object(read_json(dataset_path), dataset_path)
    ids = json_strings(dataset, "ids", dataset_path)
    repeated = next((item for item, count in Counter(ids).items() if count > 1), None)
    if repeated is not None:    # one image would be both a training and a test frame
        raise UserError(f"'ids' lists '{repeated}' more than once", dataset_path)
    val_ids = json_strings(dataset, "val_ids", dataset_path, default=[])
    if val_ids:
        train_ids = set(json_strings(dataset, "train_ids", dataset_path))
        val_set = set(val_ids)
        unknown = sorted((train_ids | val_set) - set(ids))
        if unknown:
            raise UserError(f"train_ids/val_ids name '{unknown[0]}', which is not in 'ids'", dataset_path)
        splits = {i: "test" if item in val_set else "train" for i, item in enumerate(ids)
                  if item in val_set or item in train_ids}
        protocol = "train_ids train, val_ids test"
    else:
        splits = interp_split(len(ids))
        protocol = "no val_ids: 4DGaussians interp split (every 4th item train, offset 2 test)"
    check_frame_count([i for i, s in splits.items() if s == "train"], dataset_path, "training items")

    metadata = read_metadata(path, ids)
    max_warp = max(warp for warp, _ in metadata.values())
    items = [Item(ids[i], split, *metadata[ids[i]]) for i, split in sorted(splits.items())]
    world, world_note = read_scene_json(path)
    factor = resolution_factor(config.resolution, AUTO_FACTOR)
    covisible = (path / "covisible" / f"{factor:g}x" / "val",)
    frames, notes = build_frames(path, items, factor, config.max_size, world, max_warp,
                                 covisible_folders=covisible)
    notes = [f"Nerfies/HyperNeRF: {split_counts(frames)} of {len(ids)} items ({protocol})", *notes, world_note,
             f"time = warp_id / {max_warp}"]
    return Scene(name=path.name, format="nerfies", source=path, frames=frames,
                 background=background_rgb(config.background), fps=_fps(path), notes=notes)


def _fps(root: Path) -> Optional[float]:
    """``extra.json`` fps (written by DyCheck's processing), if present."""
    path = root / "extra.json"
    if not path.is_file():
        return None
    data = json_object(read_json(path), path)
    return json_number(data, "fps", path) if "fps" in data else None
