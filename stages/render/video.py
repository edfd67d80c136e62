"""Writing videos (H.264 MP4 through the ffmpeg binary that imageio-ffmpeg ships) and frame folders, atomically;
colouring depth and dynamic-weight maps for display."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.io import require_ffmpeg, with_default_mode, write_png

# Anchor colours of a perceptually ordered dark-blue -> green -> yellow map (viridis' end and quarter points),
# interpolated linearly in RGB. Near = bright.
_COLORMAP_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                             dtype=np.float64) / 255.0


def colormap(values: np.ndarray) -> np.ndarray:
    """(...,) values in [0, 1] -> (..., 3) uint8 colours."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0) * (len(_COLORMAP_ANCHORS) - 1)
    low = np.minimum(np.floor(v).astype(int), len(_COLORMAP_ANCHORS) - 2)
    w = (v - low)[..., None]
    rgb = (1 - w) * _COLORMAP_ANCHORS[low] + w * _COLORMAP_ANCHORS[low + 1]
    return np.round(rgb * 255).astype(np.uint8)


def inverse_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) z-depth -> inverse depth, 0 where depth is 0 (nothing rendered)."""
    return np.where(depth > 1e-6, 1.0 / np.maximum(depth, 1e-6), 0.0)


def depth_range(inverse_depths: Sequence[np.ndarray], alphas: Sequence[np.ndarray]) -> tuple[float, float]:
    """2nd and 98th percentiles of inverse depth over covered pixels (alpha > 0.5) of all frames."""
    covered = [np.asarray(inv, np.float64)[np.asarray(a, np.float64) > 0.5] for inv, a in zip(inverse_depths, alphas)]
    values = np.concatenate(covered) if covered else np.zeros(0)
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98])
    return float(lo), float(hi)


def depth_frame(inverse: np.ndarray, alpha: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """One inverse-depth map coloured with the sequence's range; uncovered pixels fade to black with alpha."""
    values = (np.asarray(inverse, np.float64) - lo) / max(hi - lo, 1e-12)
    return np.round(colormap(values) * np.clip(np.asarray(alpha, np.float64), 0, 1)[..., None]).astype(np.uint8)


def depth_frames(depths: Sequence[np.ndarray], alphas: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Colour z-depth maps (H, W) for display with one range for the whole sequence (:func:`depth_range`), so colours
    mean the same depth in every frame."""
    inverse = [inverse_depth(d) for d in depths]
    lo, hi = depth_range(inverse, alphas)
    return [depth_frame(inv, a, lo, hi) for inv, a in zip(inverse, alphas)]


def weight_frame(weight: np.ndarray) -> np.ndarray:
    """(H, W) weight in [0, 1] (e.g. how much of a pixel is dynamic Gaussians) -> grey (H, W, 3) uint8."""
    return np.repeat(np.round(np.clip(weight, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def weight_frames(weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [weight_frame(w) for w in weights]


class Mp4Writer:
    """Streams (H, W, 3) uint8 frames into an H.264 MP4 (yuv420p, so even sizes); the file appears at ``path`` only
    when the ``with`` block ends without an error, else the partial file is deleted."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float = 24.0, crf: int = 18):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 (4:2:0) needs even frame sizes, got {width}x{height}")
        self.path, self.shape = Path(path), (height, width, 3)
        self.fps, self.crf = fps, crf
        self.frames = 0

    def __enter__(self) -> "Mp4Writer":
        imageio_ffmpeg = require_ffmpeg(f"writing {self.path.name}",
                                        "set render.video_paths=[] to skip the camera-path videos")

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp.mp4", dir=self.path.parent)
        os.close(fd)
        self._tmp = with_default_mode(Path(tmp))
        self._writer = imageio_ffmpeg.write_frames(
            str(self._tmp), (self.shape[1], self.shape[0]), fps=self.fps, codec="libx264", quality=None,
            macro_block_size=2, ffmpeg_log_level="error", output_params=["-crf", str(self.crf), "-movflags",
                                                                          "+faststart"])
        self._writer.send(None)  # start ffmpeg
        return self

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != self.shape or frame.dtype != np.uint8:
            raise ValueError(f"frames must all be {self.shape} uint8, got {frame.shape} {frame.dtype}")
        self._writer.send(np.ascontiguousarray(frame))
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            # imageio-ffmpeg warns when a writer closes before its first frame; here that file is discarded anyway
            # (an error, or ValueError below), so the warning would only sit above the real message.
            quiet = logging.getLogger("imageio_ffmpeg")
            level = quiet.level
            quiet.setLevel(logging.ERROR if self.frames == 0 else level)
            try:
                self._writer.close()
            finally:
                quiet.setLevel(level)
            if exc_type is None:
                if self.frames == 0:
                    raise ValueError("no frames to write")
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()


class FrameFolderWriter:
    """Writes frames as ``folder/00000.png ...`` into a temporary folder that replaces ``folder`` as a whole when the
    ``with`` block ends without an error."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.frames = 0

    def __enter__(self) -> "FrameFolderWriter":
        self._check_replaceable()
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = with_default_mode(Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".tmp",
                                                            dir=self.folder.parent)))
        return self

    @staticmethod
    def frame_name(index: int) -> str:
        return f"{index:05d}.png"

    def _check_replaceable(self) -> None:
        """Replace only an older frame folder: never a file, nor a folder holding anything but frames (so that
        ``render --out photos.mp4`` does not empty an unrelated ``photos/``)."""
        if not self.folder.exists() and not self.folder.is_symlink():
            return
        if self.folder.is_dir() and not self.folder.is_symlink():
            if all(p.is_file() and p.stem.isdigit() and p.name == self.frame_name(int(p.stem))
                   for p in self.folder.iterdir()):
                return
            raise UserError("the video's PNG frames would replace this folder, which holds other files; choose "
                            "another --out or move the folder", self.folder)
        raise UserError("the video's PNG frame folder would replace this file; choose another --out", self.folder)

    def write(self, frame: np.ndarray) -> None:
        write_png(self._tmp / self.frame_name(self.frames), frame)
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                replace_tree(self._tmp, self.folder)
        finally:
            if self._tmp.exists():
                shutil.rmtree(self._tmp)


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float = 24.0, crf: int = 18) -> Path:
    """Encode (H, W, 3) uint8 frames as H.264 into ``path``, atomically."""
    if not len(frames):
        raise ValueError("no frames to write")
    height, width = frames[0].shape[:2]
    with Mp4Writer(path, width, height, fps, crf) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)


def write_frame_folder(folder: str | Path, frames: Sequence[np.ndarray]) -> Path:
    """Write frames as ``folder/00000.png ...``, replacing ``folder`` as a whole only once every frame is written."""
    with FrameFolderWriter(folder) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(folder)


def replace_tree(source: Path, destination: Path) -> None:
    """Move ``source`` onto ``destination`` (file or folder); an existing destination is swapped out first."""
    trash = destination.with_name(f".{destination.name}.old")
    if trash.exists():
        shutil.rmtree(trash) if trash.is_dir() else trash.unlink()
    if destination.exists():
        os.replace(destination, trash)
    os.replace(source, destination)
    if trash.exists():
        shutil.rmtree(trash) if trash.is_dir() else trash.unlink()
