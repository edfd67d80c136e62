"""DyCheck iPhone captures (``KAIR-BAIR/dycheck``): the Nerfies layout (``camera/<id>.json``, ``rgb/{1x,2x}/``,
``scene.json``, ``dataset.json``, ``metadata.json``; see :mod:`pipeline.scene.loaders.nerfies` for the camera
conversion) plus

- ``splits/{train,val}.json`` {frame_names, time_ids, camera_ids}: train = the moving iPhone (camera 0), val = the
  static test cameras; val frames are our test frames. Without ``splits/`` the split is made as DyCheck does:
  camera 0 trains, every other camera tests.
- ``depth/{1x,2x}/<id>.npy``: Lidar z-depth of training frames, 0 = invalid, in the file's world units; multiplied by
  the ``scene.json`` scale so that it is in the normalised world of the cameras (as DyCheck does). Kept as z-depth
  (DyCheck converts to ray distance for its NeRF; we do not).
- ``covisible/<n>x/val/<id>.png``: which test pixels training views see (DyCheck's masked metrics); attached to test
  frames as ``Frame.load_covisible``, from the folder at the chosen factor, else the 2x one (resized).
- ``extra.json`` {factor, fps, ...}: ``factor`` is the evaluation resolution (2 for every released sequence), used
  when ``scene.resolution`` is 'auto'.
- RGB images are RGBA: alpha 0 where the Lidar saw nothing (training frames; their RGB is black there).

Time = time_id / max(time_id) over both splits. Detection: a ``splits/train.json``, or a ``dataset.json`` with a
``depth/`` folder; it runs before the Nerfies loader (DyCheck's re-processed Nerfies/HyperNeRF captures have
``splits/train_intl.json`` etc. instead and load as Nerfies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.errors import UserError
from pipeline.io import read_json
from pipeline.scene.config import SceneConfig
from pipeline.scene.loaders.common import (background_rgb, check_frame_count, json_int, json_number, json_object,
                                           json_strings, resolution_factor, split_counts)
from pipeline.scene.loaders.nerfies import Item, build_frames, read_metadata, read_scene_json
from pipeline.scene.model import Scene

DEFAULT_FACTOR = 2  # DyCheck evaluates at factor 2 (extra.json "factor" of every released sequence)


def detect(path: Path) -> bool:
    return path.is_dir() and ((path / "splits" / "train.json").is_file()
                              or ((path / "dataset.json").is_file() and (path / "depth").is_dir()))


def read_split(path: Path, split: str) -> list[Item]:
    """Items of a DyCheck split file {frame_names, time_ids, camera_ids}."""
    data = json_object(read_json(path), path)
    names = json_strings(data, "frame_names", path)
    columns = {}
    for key in ("time_ids", "camera_ids"):
        values = data.get(key)
        if not isinstance(values, list):
            raise UserError(f"missing list '{key}'", path)
        if len(values) != len(names):
            raise UserError(f"'{key}' has {len(values)} entries but 'frame_names' has {len(names)}", path)
        columns[key] = [json_int(v, f"{key}[{i}]", path) for i, v in enumerate(values)]
    return [Item(name, split, t, c) for name, t, c in zip(names, columns["time_ids"], columns["camera_ids"])]


def _items(root: Path) -> tuple[list[Item], str]:
    splits = root / "splits"
    if (splits / "train.json").is_file():
        items = read_split(splits / "train.json", "train")
        if (splits / "val.json").is_file():
            items += read_split(splits / "val.json", "test")
        return items, "splits/train.json train, splits/val.json test"
    if splits.is_dir() and any(splits.glob("*.json")):
        # Some split files but not train.json: falling back to camera 0 would silently change the protocol.
        found = ", ".join(sorted(p.name for p in splits.glob("*.json")))
        raise UserError(f"splits/ has {found} but no train.json: add it, or remove splits/ to train on camera 0",
                        splits)
    dataset_path = root / "dataset.json"
    ids = json_strings(json_object(read_json(dataset_path), dataset_path), "ids", dataset_path)
    metadata = read_metadata(root, ids)
    items = [Item(i, "train" if camera == 0 else "test", time, camera) for i, (time, camera) in metadata.items()]
    return items, "no splits/: camera 0 train, other cameras test"


def _extra(root: Path) -> tuple[int, Optional[float]]:
    """(evaluation factor, fps) from ``extra.json``; (2, None) without it."""
    path = root / "extra.json"
    if not path.is_file():
        return DEFAULT_FACTOR, None
    data = json_object(read_json(path), path)
    factor = json_int(data.get("factor", DEFAULT_FACTOR), "'factor'", path)
    if factor < 1:
        raise UserError(f"'factor' must be at least 1, got {factor}", path)
    fps = json_number(data, "fps", path) if "fps" in data else None
    if fps is not None and fps <= 0:
        raise UserError(f"'fps' must be positive, got {fps:g}", path)
    return factor, fps


def load(path: Path, config: SceneConfig) -> Scene:
    items, protocol = _items(path)
    check_frame_count([it for it in items if it.split == "train"], path, "training frames")
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        dupe = next(n for n in names if names.count(n) > 1)
        raise UserError(f"frame '{dupe}' is listed more than once in the splits", path / "splits")
    eval_factor, fps = _extra(path)
    factor = resolution_factor(config.resolution, eval_factor)
    world, world_note = read_scene_json(path)
    max_time = max(it.time_index for it in items)
    depth_folder = path / "depth" / f"{factor:g}x"
    covisible = (path / "covisible" / f"{factor:g}x" / "val", path / "covisible" / "2x" / "val")
    frames, notes = build_frames(path, items, factor, config.max_size, world, max_time,
                                 depth_folder=depth_folder if depth_folder.is_dir() else None,
                                 depth_scale=world.scale, covisible_folders=covisible)
    n_depth = sum(f.load_depth is not None for f in frames)
    n_covisible = sum(f.load_covisible is not None for f in frames)
    notes = [f"DyCheck iPhone: {split_counts(frames)} frames ({protocol}); evaluation factor {eval_factor}",
             *notes, world_note, f"time = time_id / {max_time}",
             f"Lidar depth for {n_depth} frames (x scene scale {world.scale:.6g}), covisibility masks for "
             f"{n_covisible} test frames"]
    return Scene(name=path.name, format="dycheck", source=path, frames=frames,
                 background=background_rgb(config.background), fps=fps, notes=notes)
