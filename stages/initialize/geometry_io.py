"""Readers for the geometry stage's artifacts (``docs/artifacts.md``): cameras, depth, confidence, dynamic masks.

Shared by the initialize and optimize stages. Missing or malformed files are :class:`UserError`s naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.io import read_json, read_npy_map


@dataclass
class FrameCamera:
    """One entry of ``cameras.json``: an OpenCV pinhole camera of one frame (K in pixels, pixel centres at +0.5)."""

    name: str
    index: int
    time: float
    time_index: int
    split: str
    width: int
    height: int
    K: np.ndarray                 # (3, 3) float64
    world_to_camera: np.ndarray   # (4, 4) float64


def read_cameras(path: Path) -> tuple[list[FrameCamera], str]:
    """Read ``cameras.json``; returns the frames in file order and the ``source`` ('model' or 'dataset')."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise UserError("expected an object with a 'frames' list", path)
    if data.get("convention", "opencv") != "opencv":
        raise UserError(f"unsupported camera convention {data.get('convention')!r} (expected 'opencv')", path)
    frames = []
    for k, entry in enumerate(data["frames"]):
        try:
            K = np.asarray(entry["K"], dtype=np.float64).reshape(3, 3)
            w2c = np.asarray(entry["world_to_camera"], dtype=np.float64).reshape(4, 4)
            frames.append(FrameCamera(name=str(entry["name"]), index=int(entry.get("index", k)),
                                      time=float(entry["time"]), time_index=int(entry.get("time_index", k)),
                                      split=str(entry.get("split", "train")), width=int(entry["width"]),
                                      height=int(entry["height"]), K=K, world_to_camera=w2c))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"frames[{k}] is malformed ({type(err).__name__}: {err})", path) from None
        if not (np.isfinite(K).all() and np.isfinite(w2c).all()):
            raise UserError(f"frames[{k}] ('{entry['name']}') has non-finite camera values", path)
    if not frames:
        raise UserError("no frames", path)
    return frames, str(data.get("source", "model"))


def read_depth(geometry_dir: Path, name: str) -> np.ndarray:
    """(H, W) float32 z-depth; non-finite values become 0 (invalid)."""
    path = geometry_dir / "depth" / f"{name}.npy"
    if not path.is_file():
        raise UserError("missing depth map", path)
    depth = read_npy_map(path, "depth map")
    return np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)


def read_confidence(geometry_dir: Path, name: str, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 confidence; ones when the file is absent."""
    path = geometry_dir / "confidence" / f"{name}.npy"
    if not path.is_file():
        return np.ones(shape, dtype=np.float32)
    conf = read_npy_map(path, "confidence map")
    if conf.shape != shape:
        raise UserError(f"confidence map shape {conf.shape} differs from the depth map's {shape}", path)
    return np.where(np.isfinite(conf), conf, 0.0)


def read_dynamic_mask(geometry_dir: Path, name: str, shape: tuple[int, int]) -> Optional[np.ndarray]:
    """(H, W) bool, True = moving; None when the file is absent."""
    path = geometry_dir / "dynamic_mask" / f"{name}.png"
    if not path.is_file():
        return None
    from pipeline.scene.images import read_mask

    mask = read_mask(path)
    if mask.shape != shape:
        raise UserError(f"dynamic mask shape {mask.shape} differs from the depth map's {shape}", path)
    return mask
