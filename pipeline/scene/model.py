"""The scene model every loader produces and every stage reads.

Conventions (see ``docs/conventions.md``): cameras are OpenCV (x right, y down, z forward); extrinsics are 4x4
**world-to-camera**; intrinsics ``K`` are in pixels of the frame as stored, with pixel (row i, column j) centred at
(j + 0.5, i + 0.5). ``time`` is in [0, 1] over the scene. Images are float32 RGB in [0, 1] in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pipeline.scene.config import canonical_source

ImageLoader = Callable[[], np.ndarray]
"""Returns an image as float32 (H, W, 3) or (H, W, 4) in [0, 1]."""
ArrayLoader = Callable[[], np.ndarray]


@dataclass
class Camera:
    """A pinhole camera.

    K: (3, 3) float64 intrinsics in pixels of the stored image (pixel centres at +0.5).
    world_to_camera: (4, 4) float64, OpenCV axes.
    """

    K: np.ndarray
    world_to_camera: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.world_to_camera = np.asarray(self.world_to_camera, dtype=np.float64).reshape(4, 4)

    @property
    def camera_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_camera)

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates."""
        R, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -R.T @ t

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) world points. Returns pixel coordinates (N, 2) (x right, y down) and z-depth (N,)."""
        pts = np.asarray(points_world, dtype=np.float64)
        cam = pts @ self.world_to_camera[:3, :3].T + self.world_to_camera[:3, 3]
        z = cam[:, 2]
        uv = cam[:, :2] / z[:, None] * np.array([self.K[0, 0], self.K[1, 1]]) + self.K[:2, 2]
        return uv, z

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera for an image resized to (width, height): pixel-centre-consistent rescaling of K."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        return Camera(K, self.world_to_camera.copy(), width, height)


@dataclass
class Frame:
    """One input image of the scene."""

    name: str                 # file stem in the input ("r_000", "00042"); names the artifacts of this frame
    index: int                # position in the scene's frame list (sorted by time, then camera)
    time: float               # in [0, 1] over the scene
    split: str                # "train", "val" or "test"
    width: int
    height: int
    load_image: ImageLoader = field(repr=False)
    camera: Optional[Camera] = None          # None where the input has no cameras (videos, frame folders)
    camera_id: int = 0                        # physical camera (multi-view datasets), 0 otherwise
    time_index: int = 0                       # integer time step (video frame number, warp id)
    load_depth: Optional[ArrayLoader] = field(default=None, repr=False)       # (H, W) float32 z-depth, 0 = invalid
    load_dynamic_mask: Optional[ArrayLoader] = field(default=None, repr=False)  # (H, W) bool, True = moving
    load_covisible: Optional[ArrayLoader] = field(default=None, repr=False)   # (H, W) bool, True = covisible
    source_path: Optional[Path] = None


@dataclass
class Scene:
    """A dynamic scene: frames with optional cameras and ground truth."""

    name: str
    format: str
    source: Path
    frames: list[Frame]
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fps: Optional[float] = None
    notes: list[str] = field(default_factory=list)   # what the loader decided (split, resolution), for the log
    frames_decoded: bool = False   # the frames' files are our cache of frames decoded from ``source`` (video, N3DV):
                                   # errors about a frame name ``source``, the user's input, not the cache

    def split(self, name: str) -> list[Frame]:
        return [f for f in self.frames if f.split == name]

    @property
    def train_frames(self) -> list[Frame]:
        return self.split("train")

    @property
    def test_frames(self) -> list[Frame]:
        test = self.split("test")
        return test if test else self.split("val")

    @property
    def has_cameras(self) -> bool:
        return all(f.camera is not None for f in self.frames)

    @property
    def has_depth(self) -> bool:
        return all(f.load_depth is not None for f in self.frames)

    @property
    def has_dynamic_masks(self) -> bool:
        return all(f.load_dynamic_mask is not None for f in self.frames)

    def frame(self, name: str) -> Frame:
        for f in self.frames:
            if f.name == name:
                return f
        raise KeyError(name)

    def rgb_alpha(self, frame: Frame) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The frame's image, read once: float32 (H, W, 3) with RGBA composited on the scene background, and its
        (H, W) float32 alpha for RGBA inputs, else None."""
        image = frame.load_image()
        if image.shape[-1] != 4:
            return np.ascontiguousarray(image[..., :3], dtype=np.float32), None
        alpha = image[..., 3:4]
        rgb = image[..., :3] * alpha + np.asarray(self.background, np.float32) * (1.0 - alpha)
        return np.ascontiguousarray(rgb, dtype=np.float32), alpha[..., 0].astype(np.float32)

    def rgb(self, frame: Frame) -> np.ndarray:
        """The frame's image as float32 (H, W, 3), RGBA composited on the scene background."""
        return self.rgb_alpha(frame)[0]

    def alpha(self, frame: Frame) -> Optional[np.ndarray]:
        """(H, W) float32 alpha for RGBA inputs, else None."""
        return self.rgb_alpha(frame)[1]

    def fingerprint(self) -> dict:
        """What identifies this scene's content for caching: names, sizes, times, splits and cameras."""
        entries = []
        for f in self.frames:
            entry = [f.name, f.split, round(f.time, 9), f.width, f.height]
            if f.source_path is not None and f.source_path.exists():
                st = f.source_path.stat()
                entry += [st.st_size, st.st_mtime_ns]
            if f.camera is not None:
                entry += [np.round(f.camera.K, 9).tolist(), np.round(f.camera.world_to_camera, 9).tolist()]
            entries.append(entry)
        return {"format": self.format, "source": canonical_source(str(self.source)), "frames": entries,
                "background": self.background}
