"""Helpers shared by the loaders: frame naming, holdout splits, lazy image loaders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.scene.images import read_image
from pipeline.scene.model import Frame

MIN_FRAMES = 2


def holdout_split(index: int, test_every: int) -> str:
    """Every ``test_every``-th frame is a test frame, starting in the middle of the first block
    (indices n/2, n/2 + n, ...), so test frames are surrounded by training frames in time. 0 = no test frames."""
    if test_every <= 0:
        return "train"
    return "test" if index % test_every == test_every // 2 else "train"


def image_loader(path: Path, size: Optional[tuple[int, int]] = None):
    """A lazy loader: decodes ``path`` (resized to ``size`` = (W, H)) when called."""

    def load() -> np.ndarray:
        return read_image(path, size)

    return load


def unique_names(frames: list[Frame]) -> None:
    """Make frame names unique in place: a name used more than once keeps its stem in the test split and is
    prefixed with its split elsewhere ('train_r_000'); remaining clashes get the camera id."""
    counts = Counter(f.name for f in frames)
    for f in frames:
        if counts[f.name] > 1 and f.split != "test":
            f.name = f"{f.split}_{f.name}"
    counts = Counter(f.name for f in frames)
    for f in frames:
        if counts[f.name] > 1:
            f.name = f"{f.name}_cam{f.camera_id:02d}"
    counts = Counter(f.name for f in frames)
    dupes = [n for n, c in counts.items() if c > 1]
    if dupes:
        raise UserError(f"frame name '{dupes[0]}' appears more than once")


def check_frame_count(frames: list, source: Path, what: str = "frames") -> None:
    if len(frames) < MIN_FRAMES:
        raise UserError(f"needs at least {MIN_FRAMES} {what}, found {len(frames)}", source)


def normalise_times(times: list[float]) -> list[float]:
    """Map times to [0, 1]: divide by the maximum when they exceed 1 (as 4DGaussians does for D-NeRF)."""
    arr = np.asarray(times, dtype=np.float64)
    if arr.size and arr.max() > 1.0:
        arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1e-12)
    return arr.tolist()
