"""Writing videos (H.264 MP4 through the ffmpeg binary that imageio-ffmpeg ships) and frame folders, atomically;
colouring depth and dynamic-weight maps for display."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.io import atomic_path, write_png

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


def depth_frames(depths: Sequence[np.ndarray], alphas: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Colour z-depth maps (H, W) for display with one range for the whole sequence.

    Inverse depth is mapped linearly between its 2nd and 98th percentiles over covered pixels (alpha > 0.5) of all
    frames, so colours mean the same depth in every frame; uncovered pixels fade to black with alpha."""
    inverse = [np.where(d > 1e-6, 1.0 / np.maximum(d, 1e-6), 0.0) for d in depths]
    covered = np.concatenate([inv[a > 0.5] for inv, a in zip(inverse, alphas)]) if inverse else np.zeros(0)
    lo, hi = (np.percentile(covered, [2, 98]) if covered.size else (0.0, 1.0))
    span = max(hi - lo, 1e-12)
    return [np.round(colormap((inv - lo) / span) * np.clip(a, 0, 1)[..., None]).astype(np.uint8)
            for inv, a in zip(inverse, alphas)]


def weight_frames(weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(H, W) weights in [0, 1] (e.g. how much of a pixel is dynamic Gaussians) -> grey (H, W, 3) uint8."""
    return [np.repeat(np.round(np.clip(w, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1) for w in weights]


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float = 24.0, crf: int = 18) -> Path:
    """Encode (H, W, 3) uint8 frames as H.264 (yuv420p, even sizes required) into ``path``, atomically."""
    import imageio_ffmpeg

    if not frames:
        raise ValueError("no frames to write")
    height, width = frames[0].shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"H.264 (4:2:0) needs even frame sizes, got {width}x{height}")
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (width, height), fps=fps, codec="libx264", quality=None,
                                             macro_block_size=2, ffmpeg_log_level="error",
                                             output_params=["-crf", str(crf), "-movflags", "+faststart"])
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                    raise ValueError(f"frames must all be ({height}, {width}, 3) uint8, got {frame.shape} "
                                     f"{frame.dtype}")
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return path


def write_frame_folder(folder: str | Path, frames: Sequence[np.ndarray]) -> Path:
    """Write frames as ``folder/00000.png ...``, replacing ``folder`` as a whole only once every frame is written."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for k, frame in enumerate(frames):
            write_png(tmp / f"{k:05d}.png", frame)
        replace_tree(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


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
