"""A COLMAP text model: ``<scene>/sparse/0/{cameras,images,points3D}.txt`` (or ``<scene>/sparse/*.txt``) and the
images in ``<scene>/images/``, as 3DGS-style tools and ``page4dgs export --format colmap`` write them.

``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``. Pinhole-family models only: SIMPLE_PINHOLE (f, cx, cy),
PINHOLE (fx, fy, cx, cy), SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV (whose distortion is not modelled: a note says
so when non-zero); fisheye and other models are refused. COLMAP puts pixel centres at +0.5, as we do.

``images.txt``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then the 2D points (not
read). (q, t) is world-to-camera in OpenCV axes: world_to_camera = [R(q) | t]. ``points3D.txt`` is not read (the
geometry stage makes its own points). Binary models (``*.bin``) are refused with the command that converts them.

A COLMAP model is treated as one moving camera: frames are ordered by image name (natural order), time =
i / (n - 1), ``camera_id`` 0; every ``scene.test_every``-th frame is a test frame, as for frame folders
(:func:`pipeline.scene.loaders.common.holdout_split`), so that a frame folder exported to COLMAP reloads with the
same split. Where an image file's size differs from its camera's WIDTH x HEIGHT, K is scaled to the file.
``scene.resolution``: 'auto' = '1x'; 'Nx' downscales by N; ``scene.max_size`` caps the longer side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import image_size, natural_key, scaled_size
from pipeline.scene.loaders.common import (aspect_ratios_differ, background_rgb, check_frame_count, finish_frames,
                                           holdout_split, image_loader, resolution_factor, split_counts)
from pipeline.scene.model import Camera, Frame, Scene

# model name -> (number of parameters, index of fx, fy, cx, cy in them; fy == fx for single-focal models)
CAMERA_MODELS = {
    "SIMPLE_PINHOLE": (3, (0, 0, 1, 2)),
    "PINHOLE": (4, (0, 1, 2, 3)),
    "SIMPLE_RADIAL": (4, (0, 0, 1, 2)),
    "RADIAL": (5, (0, 0, 1, 2)),
    "OPENCV": (8, (0, 1, 2, 3)),
    "FULL_OPENCV": (12, (0, 1, 2, 3)),
}


def model_folder(path: Path) -> Optional[Path]:
    """The folder holding ``cameras.txt`` (or ``cameras.bin``): ``sparse/0`` or ``sparse``; None if neither."""
    for folder in (path / "sparse" / "0", path / "sparse"):
        if (folder / "cameras.txt").is_file() or (folder / "cameras.bin").is_file():
            return folder
    return None


def detect(path: Path) -> bool:
    return path.is_dir() and model_folder(path) is not None


@dataclass
class ColmapCamera:
    model: str
    width: int
    height: int
    params: np.ndarray  # (n,) float64

    def K(self) -> np.ndarray:
        """(3, 3) intrinsics in pixels of a WIDTH x HEIGHT image."""
        ifx, ify, icx, icy = CAMERA_MODELS[self.model][1]
        p = self.params
        return np.array([[p[ifx], 0.0, p[icx]], [0.0, p[ify], p[icy]], [0.0, 0.0, 1.0]])

    @property
    def distorted(self) -> bool:
        n_intrinsic = 3 if self.model.startswith(("SIMPLE_", "RADIAL")) else 4
        return bool(np.any(self.params[n_intrinsic:] != 0))


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line of ``path`` that is not a comment; blank lines are kept."""
    if not path.is_file():
        raise UserError("file not found", path)
    text = path.read_text(encoding="utf-8-sig", errors="replace")     # -sig: a byte-order mark is fine
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if not line.lstrip().startswith("#")]


def read_cameras(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for n, line in _data_lines(path):
        if not line:
            continue
        tokens = line.split()
        try:
            camera_id, model, width, height = int(tokens[0]), tokens[1], int(tokens[2]), int(tokens[3])
            params = np.array([float(t) for t in tokens[4:]])
        except (ValueError, IndexError):
            raise UserError(f"line {n} is not 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'", path) from None
        if model not in CAMERA_MODELS:
            raise UserError(f"line {n}: camera model {model} is not supported (pinhole-family models only: "
                            f"{', '.join(CAMERA_MODELS)})", path)
        if len(params) != CAMERA_MODELS[model][0]:
            raise UserError(f"line {n}: {model} takes {CAMERA_MODELS[model][0]} parameters, got {len(params)}", path)
        if width <= 0 or height <= 0 or not np.all(np.isfinite(params)):
            raise UserError(f"line {n}: invalid image size or parameters", path)
        focal_lengths = params[sorted(set(CAMERA_MODELS[model][1][:2]))]         # (fx, fy) or (f,)
        if not np.all(focal_lengths > 0):
            raise UserError(f"line {n}: focal length must be positive, got {', '.join(f'{f:g}' for f in focal_lengths)}",
                            path)
        if camera_id in cameras:
            raise UserError(f"line {n}: camera {camera_id} is defined a second time", path)
        cameras[camera_id] = ColmapCamera(model, width, height, params)
    if not cameras:
        raise UserError("holds no cameras", path)
    return cameras


def quaternion_to_rotation(qvec: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of the unit quaternion (w, x, y, z) (normalised here)."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


@dataclass
class ColmapImage:
    name: str
    camera_id: int
    world_to_camera: np.ndarray  # (4, 4) OpenCV


def read_images(path: Path) -> list[ColmapImage]:
    """Images of ``images.txt``. Each header line is followed by its 2D-point line (possibly empty); a header
    directly followed by another header (a file without point lines) is accepted too: a point line has 3k tokens,
    a header 10."""
    lines = _data_lines(path)
    images = []
    i = 0
    while i < len(lines):
        n, line = lines[i]
        i += 1
        if not line:
            continue
        tokens = line.split()
        try:
            if len(tokens) < 10:
                raise ValueError
            qvec = np.array([float(t) for t in tokens[1:5]])
            tvec = np.array([float(t) for t in tokens[5:8]])
            camera_id, name = int(tokens[8]), " ".join(tokens[9:])
            if not (np.all(np.isfinite(qvec)) and np.all(np.isfinite(tvec)) and np.linalg.norm(qvec) > 0):
                raise ValueError
        except ValueError:
            raise UserError(f"line {n} is not 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'", path) from None
        if i < len(lines) and len(lines[i][1].split()) % 3 == 0:
            i += 1  # the 2D points of this image
        world_to_camera = np.eye(4)
        world_to_camera[:3, :3] = quaternion_to_rotation(qvec)
        world_to_camera[:3, 3] = tvec
        images.append(ColmapImage(name, camera_id, world_to_camera))
    if not images:
        raise UserError("holds no images", path)
    return images


def load(path: Path, config: SceneConfig) -> Scene:
    folder = model_folder(path)
    if folder is None:
        raise UserError("no sparse/0/cameras.txt or sparse/cameras.txt", path)
    if not (folder / "cameras.txt").is_file():
        raise UserError(f"binary COLMAP models are not read; convert it with `colmap model_converter --input_path "
                        f"{folder} --output_path {folder} --output_type TXT`", folder)
    cameras = read_cameras(folder / "cameras.txt")
    images = sorted(read_images(folder / "images.txt"), key=lambda im: natural_key(Path(im.name)))
    image_dir = path / "images"
    factor = resolution_factor(config.resolution, 1.0)
    n = len(images)
    frames: list[Frame] = []
    n_distorted = n_rescaled = 0
    for i, im in enumerate(images):
        if im.camera_id not in cameras:
            raise UserError(f"image '{im.name}' uses camera {im.camera_id}, which cameras.txt does not define",
                            folder / "images.txt")
        colmap_camera = cameras[im.camera_id]
        image = image_dir / im.name
        if not image.is_file():
            raise UserError(f"image '{im.name}' of images.txt not found", image)
        stored_wh = image_size(image)
        camera = Camera(colmap_camera.K(), im.world_to_camera, colmap_camera.width, colmap_camera.height)
        if stored_wh != (camera.width, camera.height):
            if aspect_ratios_differ(stored_wh, (camera.width, camera.height)):
                raise UserError(f"image is {stored_wh[0]}x{stored_wh[1]} but its camera {im.camera_id} in cameras.txt "
                                f"is {camera.width}x{camera.height} (aspect ratios differ)", image)
            camera = camera.scaled(*stored_wh)
            n_rescaled += 1
        width, height = scaled_size(*stored_wh, factor, config.max_size)
        resize = (width, height) if (width, height) != stored_wh else None
        if resize:
            camera = camera.scaled(width, height)
        n_distorted += colmap_camera.distorted
        frames.append(Frame(name=Path(im.name).stem, index=i, time=i / max(n - 1, 1),
                            split=holdout_split(i, config.test_every), width=width, height=height,
                            load_image=image_loader(image, resize), camera=camera, time_index=i, source_path=image))
    check_frame_count([f for f in frames if f.split == "train"], folder / "images.txt", "training frames")
    finish_frames(frames)
    notes = [f"COLMAP text model {folder.relative_to(path)}: {split_counts(frames)} frames (every "
             f"{config.test_every}th is a test frame), {frames[0].width}x{frames[0].height}; time from image order"]
    if n_rescaled:
        notes.append(f"{n_rescaled} images differ in size from their camera: K scaled to the image file")
    if n_distorted:
        notes.append(f"{n_distorted} images have cameras with non-zero distortion: ignored (pinhole model)")
    return Scene(name=path.name, format="colmap", source=path, frames=frames,
                 background=background_rgb(config.background), notes=notes)
