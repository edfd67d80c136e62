"""A video file (mp4, mov, avi, ...). Frames are decoded once, with a progress bar, into a cache folder of PNGs
(keyed by the file's size and modification time and the stride / max-frames / max-size options); the scene is then
that frame folder."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.io import require_ffmpeg
from pipeline.log import get_logger, progress
from pipeline.paths import cache_dir
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import scaled_size
from pipeline.scene.loaders import frames as frame_folder
from pipeline.scene.model import Scene

log = get_logger("scene")

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _cache_key(path: Path, stride: int, max_frames: int, factor: float, max_size: int) -> str:
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{stride}|{max_frames}|{factor:g}|{max_size}|v2"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _header(path: Path) -> dict:
    """The container's metadata as imageio's ffmpeg plugin reads it ({} where it cannot)."""
    import imageio.v3 as iio

    try:
        return dict(iio.immeta(path, plugin="FFMPEG"))
    except Exception:
        return {}


def video_fps(path: Path) -> float | None:
    fps = _header(path).get("fps")
    return float(fps) if fps else None


def declared_frames(path: Path) -> int | None:
    """The frame count the container's header implies (duration x frame rate), or None where it says neither."""
    meta = _header(path)
    try:
        count = float(meta.get("fps") or 0) * float(meta.get("duration") or 0)
    except (TypeError, ValueError):
        return None
    return int(round(count)) if np.isfinite(count) and count >= 1 else None


# Written beside the decoded frames when the file ended early, read by every load of that cache.
SHORT_NOTE = ".short"


def extract_frames(path: Path, out_dir: Path, stride: int = 1, max_frames: int = 0, factor: float = 1.0,
                   max_size: int = 0) -> int:
    """Decode ``path`` into ``out_dir/00000.png ...`` (PNG names are the video's frame numbers), keeping every
    ``stride``-th frame, at most ``max_frames`` of them (0 = all), each downscaled by ``factor`` and then capped at
    ``max_size`` pixels on the longer side (0 = no cap). Returns the count written."""
    import imageio.v3 as iio
    from PIL import Image

    require_ffmpeg(f"decoding {path.name}", "extract its frames into a folder and pass the folder")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stride = max(1, stride)
    written, decoded, stopped_early = 0, 0, False
    try:
        for index, frame in enumerate(progress(iio.imiter(path, plugin="FFMPEG"), f"decode {path.name}",
                                               unit="frame")):
            decoded = index + 1
            if index % stride:
                continue
            image = Image.fromarray(np.asarray(frame)[..., :3])
            size = scaled_size(*image.size, factor=factor, max_size=max_size)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BOX)
            image.save(tmp / f"{index:05d}.png")
            written += 1
            if max_frames and written >= max_frames:
                stopped_early = True
                break
    except (OSError, RuntimeError, ValueError, StopIteration) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot decode video ({first})", path) from None
    declared = None if stopped_early or not written else declared_frames(path)
    if declared is not None and decoded < declared - max(2, 0.05 * declared):
        # ffmpeg stops quietly where a file was cut short or damaged; say so rather than use part of it unnoticed
        (tmp / SHORT_NOTE).write_text(f"{path.name}: decoded {decoded} of the {declared} frames its header declares "
                                      "(the file may be cut short or damaged); the scene uses those decoded")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return written


def decoded_frames(path: Path, stride: int = 1, max_frames: int = 0, factor: float = 1.0, max_size: int = 0) -> Path:
    """The cache folder holding the frames of video ``path`` as PNGs (see :func:`extract_frames`), decoding it on
    first use. The cache is keyed by the file's path, size and modification time and by the decoding options."""
    if path.stat().st_size == 0:
        raise UserError("video file is empty", path)
    out_dir = cache_dir("videos") / f"{path.stem}-{_cache_key(path, stride, max_frames, factor, max_size)}"
    if not _cache_intact(out_dir):
        if out_dir.exists():
            log.warning(f"the decoded-frame cache {out_dir} is damaged (a frame missing, empty or unreadable); "
                        f"decoding {path.name} again")
        count = extract_frames(path, out_dir, stride, max_frames, factor, max_size)
        if count == 0:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise UserError("video holds no decodable frames", path)
        (out_dir / ".complete").write_text(str(count))
    return out_dir


def _cache_intact(out_dir: Path) -> bool:
    """Whether a cache folder holds every frame its ``.complete`` marker counts, each a PNG whose header reads
    (a cheap check: a frame damaged inside its pixel data is still reported, by name, when it is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        count = int((out_dir / ".complete").read_text(encoding="ascii").strip())
        frames = sorted(out_dir.glob("*.png"))
        if count < 1 or len(frames) != count:
            return False
        for frame in frames:
            with Image.open(frame) as image:
                image.verify()
    except (OSError, ValueError, UnicodeDecodeError, UnidentifiedImageError, SyntaxError):
        return False
    return True


def load(path: Path, config: SceneConfig) -> Scene:
    out_dir = decoded_frames(path, config.stride, config.max_frames, max_size=config.max_size)
    # The cache already applied stride, max-frames and max-size.
    scene = frame_folder.load(out_dir, replace(config, stride=1, max_frames=0, max_size=0), fmt="video",
                              fps=video_fps(path), source=path)
    scene.name, scene.source, scene.frames_decoded = path.stem, path, True
    scene.notes.insert(0, f"decoded video frames cached in {out_dir}")
    short = out_dir / SHORT_NOTE
    if short.is_file():
        note = short.read_text(errors="replace").strip()
        log.warning(note)
        scene.notes.insert(1, note)
    return scene
