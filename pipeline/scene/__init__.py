"""Scenes: the :class:`Scene` model and :func:`load_scene`, which detects the input format from the files present.

Formats (see ``docs/formats.md``): ``demo`` (the embedded synthetic room scene), a video file, a folder of frames,
D-NeRF, Nerfies/HyperNeRF, DyCheck iPhone, N3DV, nerfstudio ``transforms.json`` and a COLMAP text model.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.scene.config import SceneConfig
from pipeline.scene.model import Camera, Frame, Scene

__all__ = ["Camera", "Frame", "Scene", "SceneConfig", "load_scene", "detect_format"]

# Detection order matters: the most specific layouts first; a plain folder of images last.
_LOADERS = {
    "video": "pipeline.scene.loaders.video",
    "dnerf": "pipeline.scene.loaders.dnerf",
    "dycheck": "pipeline.scene.loaders.dycheck",
    "nerfies": "pipeline.scene.loaders.nerfies",
    "n3dv": "pipeline.scene.loaders.n3dv",
    "nerfstudio": "pipeline.scene.loaders.nerfstudio",
    "colmap": "pipeline.scene.loaders.colmap",
    "frames": "pipeline.scene.loaders.frames",
}


def _loader(fmt: str):
    try:
        return importlib.import_module(_LOADERS[fmt])
    except ModuleNotFoundError as err:
        if err.name == _LOADERS[fmt]:
            raise UserError(f"the '{fmt}' format is not supported yet") from None
        raise


def _missing(path: Path) -> UserError:
    """The error for a scene path that does not exist (or is a link to nothing)."""
    return UserError("a symbolic link to nothing (dangling, or a loop)" if path.is_symlink() else
                     "no such file or folder", path)


def detect_format(path: Path) -> str:
    """The format of ``path``, or a :class:`UserError` that says what was found instead."""
    if not path.exists():
        raise _missing(path)
    for fmt in _LOADERS:
        try:
            module = _loader(fmt)
        except UserError:
            continue
        if module.detect(path):
            return fmt
    if path.is_dir():
        if not any(path.iterdir()):
            raise UserError("folder is empty", path)
        splits = [name for name in ("transforms_test.json", "transforms_val.json") if (path / name).is_file()]
        if splits:
            raise UserError(f"a D-NeRF scene needs transforms_train.json (found only {' and '.join(splits)})", path)
        raise UserError("unknown scene format: no video, images, transforms*.json, dataset.json, "
                        "poses_bounds.npy or sparse/0/cameras.txt found", path)
    if path.stat().st_size == 0:
        raise UserError("file is empty", path)
    raise UserError(f"unknown scene format: '{path.suffix or path.name}' is not a video "
                    f"({', '.join(_video_extensions())}) or a folder", path)


def _video_extensions() -> tuple[str, ...]:
    from pipeline.scene.loaders.video import VIDEO_EXTENSIONS

    return VIDEO_EXTENSIONS


# Smallest longer side that scene.max_size may ask for: below it no network patch grid or rasterizer tile fits.
MIN_MAX_SIZE = 16


def check_scene_options(config: SceneConfig) -> None:
    """Refuse scene options no loader can honour (a :class:`UserError` naming each)."""
    problems = []
    if config.stride < 1:
        problems.append(f"scene.stride must be >= 1 (got {config.stride})")
    if config.max_frames < 0:
        problems.append(f"scene.max_frames must be >= 0, 0 = all (got {config.max_frames})")
    if config.max_size != 0 and config.max_size < MIN_MAX_SIZE:
        problems.append(f"scene.max_size must be 0 (keep) or >= {MIN_MAX_SIZE} pixels (got {config.max_size})")
    if config.test_every < 0:
        problems.append(f"scene.test_every must be >= 0, 0 = no test frames (got {config.test_every})")
    if problems:
        raise UserError("; ".join(problems))


def load_scene(config: SceneConfig) -> Scene:
    """Load the scene named by ``config.source`` (a path or 'demo')."""
    check_scene_options(config)
    if config.source == "demo" or config.format == "demo":
        from pipeline.synthetic.demo import demo_scene_path

        path = demo_scene_path()
        fmt = "dnerf"
    else:
        path = Path(config.source).expanduser()
        fmt = detect_format(path) if config.format == "auto" else config.format
        if not path.exists():
            raise _missing(path)
    scene = _loader(fmt).load(path, config)
    if config.source == "demo":
        scene.name = "demo"
    check_frames(scene, config)
    return scene


MIN_IMAGE_SIDE = 11             # pixels: the SSIM loss's window (stages/optimize/losses.py) must fit in a frame
FIELD_OF_VIEW_DEG = (0.1, 179.0)  # a pinhole camera's plausible fields of view, each axis


def check_frames(scene: Scene, config: SceneConfig) -> None:
    """Refuse frames too small to optimize (a later stage would fail after the earlier ones ran) and cameras whose
    focal length makes no sense for their image (a field of view outside ``FIELD_OF_VIEW_DEG``: 1e-300 or 1e308
    pixels passed as positive and came out as non-finite Gaussians), naming the frame."""
    for frame in scene.frames:
        image = scene.source if scene.frames_decoded or frame.source_path is None else frame.source_path
        if min(frame.width, frame.height) < MIN_IMAGE_SIDE:
            scaled = config.max_size and abs(max(frame.width, frame.height) - config.max_size) <= 1
            made = f" (scene.max_size={config.max_size} scales them to this)" if scaled else ""
            raise UserError(f"frame '{frame.name}' is {frame.width}x{frame.height} pixels: each side needs at least "
                            f"{MIN_IMAGE_SIDE}{made}", image)
        if frame.camera is None:
            continue
        fx, fy = frame.camera.K[0, 0], frame.camera.K[1, 1]
        with np.errstate(all="ignore"):
            fov = np.degrees(2 * np.arctan2([frame.width / 2, frame.height / 2], [fx, fy]))
        lo, hi = FIELD_OF_VIEW_DEG
        if not (np.all(np.isfinite(fov)) and np.all((fov >= lo) & (fov <= hi))):
            # The focal length comes from the dataset's camera files, which differ per format: name the scene
            # and the frame's image.
            raise UserError(f"the camera of frame '{frame.name}' ({image}) has focal lengths {fx:.4g}, {fy:.4g} "
                            f"pixels for a {frame.width}x{frame.height} image: a field of view of {fov[0]:.3g} x "
                            f"{fov[1]:.3g} degrees, outside the {lo:g}-{hi:g} a pinhole camera can have",
                            scene.source)
