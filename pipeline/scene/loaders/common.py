"""Helpers shared by the loaders: frame naming, holdout splits, lazy image loaders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.scene.images import image_size, read_image, read_mask
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


def mask_loader(path: Path, size: Optional[tuple[int, int]], reference: tuple[int, int], what: str,
                reference_name: str, same_size: bool = False):
    """A lazy loader of the mask image ``path`` as (H, W) bool (:func:`read_mask`, at ``size`` = (W, H) or as
    stored), once its header has been read now - when the scene loads, so that an unreadable mask, or one that does
    not fit its frame, is named before the stages run rather than by the stage that reads it. ``reference`` (W, H):
    the size of the ``reference_name`` the mask belongs to, which it must have (``same_size``) or whose aspect ratio
    it must share; ``what`` names the mask in the message ('dynamic mask')."""
    stored = image_size(path)
    differs = tuple(stored) != tuple(reference) if same_size else aspect_ratios_differ(stored, reference)
    if differs:
        extra = "" if same_size else " (aspect ratios differ)"
        raise UserError(f"{what} is {stored[0]}x{stored[1]} but its {reference_name} is "
                        f"{reference[0]}x{reference[1]}{extra}", path)

    def load() -> np.ndarray:
        return read_mask(path, size)

    return load


def unique_names(frames: list[Frame]) -> None:
    """Make frame names unique in place: a name used more than once keeps its stem in the test split and is
    prefixed with its split elsewhere ('train_r_000'); remaining clashes get the camera id."""
    listed: dict[Path, Frame] = {}
    for f in frames:     # one image as two frames (in the train and test lists): a test view would be trained on
        if f.source_path is None:
            continue
        other = listed.setdefault(Path(f.source_path).resolve(), f)
        if other is f or "train" not in (other.split, f.split):
            continue
        if other.split == f.split:
            raise UserError(f"this image is listed more than once (frames '{other.name}' and '{f.name}')",
                            f.source_path)
        raise UserError(f"this image is listed more than once (as {other.split} frame '{other.name}' and {f.split} "
                        f"frame '{f.name}'); a view cannot be both trained on and held out", f.source_path)
    given = {id(f): f.name for f in frames}
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
    if dupes:      # two images with one name in one split and camera (images/x.png, images/sub/x.png)
        clashing = [f for f in frames if f.name == dupes[0]]
        paths = ", ".join(str(f.source_path) for f in clashing[:2])
        raise UserError(f"frame name '{given[id(clashing[0])]}' is used by {len(clashing)} images ({paths}); "
                        "rename one")


def aspect_ratios_differ(size: tuple[float, float], reference: tuple[float, float]) -> bool:
    """Whether (W, H) ``size`` has another aspect ratio than ``reference`` (by more than 1 %): then no rescaling of
    K or of a map between the two is right."""
    return abs(size[0] / size[1] - reference[0] / reference[1]) > 0.01 * reference[0] / reference[1]


def check_frame_count(frames: list, source: Path, what: str = "frames", why: str = "") -> None:
    """At least MIN_FRAMES ``frames``; ``why``: what reduced them, if something did (named in the error)."""
    if len(frames) < MIN_FRAMES:
        raise UserError(f"needs at least {MIN_FRAMES} {what}, found {len(frames)}" + (f" ({why})" if why else ""),
                        source)


def normalise_times(times: list[float]) -> list[float]:
    """Map times to [0, 1]: divide by the maximum when they exceed 1 (as 4DGaussians does for D-NeRF)."""
    arr = np.asarray(times, dtype=np.float64)
    if arr.size and arr.max() > 1.0:
        arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1e-12)
    return arr.tolist()


def resolution_factor(resolution: str, auto: float) -> float:
    """The downscale factor named by ``scene.resolution``: 'auto' -> ``auto`` (the format's usual protocol),
    '1x' -> 1, '2x' -> 2, ... (a factor > 0; '1.5x' is allowed where the loader resizes)."""
    if resolution == "auto":
        return float(auto)
    text = resolution.strip().lower()
    try:
        factor = float(text[:-1] if text.endswith("x") else text)
    except ValueError:
        factor = 0.0
    if not (factor > 0 and np.isfinite(factor)):
        raise UserError(f"scene.resolution must be 'auto' or a positive factor like '1x', '2x', got {resolution!r}")
    return factor


def is_rigid_c2w(c2w: np.ndarray, atol: float = 1e-4) -> bool:
    """Whether ``c2w`` is a 4x4 rigid camera-to-world matrix: a rotation (orthonormal, determinant +1) and a
    translation over the last row 0 0 0 1. Anything else (a singular or scaled matrix) would give wrong cameras."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        return False
    rotation = c2w[:3, :3]
    return bool(np.allclose(c2w[3], [0.0, 0.0, 0.0, 1.0], atol=atol)
                and np.allclose(rotation @ rotation.T, np.eye(3), atol=atol) and np.linalg.det(rotation) > 0)


def background_rgb(name: str) -> tuple[float, float, float]:
    """``scene.background`` as an RGB triple in [0, 1]."""
    return (1.0, 1.0, 1.0) if name == "white" else (0.0, 0.0, 0.0)


def finish_frames(frames: list[Frame]) -> None:
    """Order frames by (time step, camera, name), number them, and make their names unique, in place."""
    frames.sort(key=lambda f: (f.time_index, f.camera_id, f.name))
    for i, f in enumerate(frames):
        f.index = i
    unique_names(frames)


def split_counts(frames: list[Frame]) -> str:
    """'12 train / 0 val / 3 test' for the notes."""
    return " / ".join(f"{sum(f.split == s for f in frames)} {s}" for s in ("train", "val", "test"))


# JSON fields with one-line errors naming the file


def json_object(data, path: Path) -> dict:
    """``data`` if it is a JSON object, else a :class:`UserError` naming ``path``."""
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", path)
    return data


MISSING = object()  # "no default": the key is required


def json_number(data: dict, key: str, path: Path, default=MISSING) -> float:
    """``data[key]`` as a finite float (``default`` when absent, if given)."""
    if key not in data:
        if default is MISSING:
            raise UserError(f"missing key '{key}'", path)
        return float(default)
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise UserError(f"'{key}' must be a finite number, got {value!r}", path)
    return float(value)


def json_array(data: dict, key: str, shape: Optional[tuple[int, ...]], path: Path, default=MISSING,
               where: str = "") -> np.ndarray:
    """``data[key]`` as a float64 array of ``shape`` (any shape if None) with finite entries. ``where`` names the
    entry that holds ``data`` in messages ("frames[3]")."""
    if key not in data:
        if default is MISSING:
            raise UserError(f"missing key '{key}'", path)
        return np.asarray(default, dtype=np.float64)
    try:
        array = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is not None and (shape is None or array.shape == shape) and not np.all(np.isfinite(array)):
        raise UserError(f"'{key}'{where and ' of ' + where} has {int(np.sum(~np.isfinite(array)))} non-finite "
                        "entries (NaN or infinity)", path)
    if array is None or (shape is not None and array.shape != shape):
        want = ("a list of finite numbers" if shape is None else f"{shape[0]} finite numbers" if len(shape) == 1
                else f"a {'x'.join(map(str, shape))} matrix of finite numbers")
        raise UserError(f"'{key}'{where and ' of ' + where} must be {want}, got {data[key]!r}"[:200], path)
    return array


def json_strings(data: dict, key: str, path: Path, default=MISSING) -> list[str]:
    """``data[key]`` as a list of strings."""
    if key not in data:
        if default is MISSING:
            raise UserError(f"missing key '{key}'", path)
        return list(default)
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"'{key}' must be a list of strings", path)
    return value


def json_int(value, what: str, path: Path) -> int:
    """``value`` (described as ``what`` in the error) as a non-negative integer."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
            or value != int(value) or value < 0):
        raise UserError(f"{what} must be a non-negative integer, got {value!r}", path)
    return int(value)
