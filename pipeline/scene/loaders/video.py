"""A video file (mp4, mov, avi, ...). Frames are decoded once, with a progress bar, into a cache folder of PNGs
(keyed by the file's size and modification time and the stride / max-frames / max-size options); the scene is then
that frame folder."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.paths import cache_dir
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import scaled_size
from pipeline.scene.loaders import frames as frame_folder
from pipeline.scene.model import Scene

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _cache_key(path: Path, config: SceneConfig) -> str:
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{config.stride}|{config.max_frames}|{config.max_size}|v1"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def video_fps(path: Path) -> float | None:
    import imageio.v3 as iio

    try:
        meta = iio.immeta(path, plugin="FFMPEG")
        return float(meta.get("fps")) if meta.get("fps") else None
    except Exception:
        return None


def extract_frames(path: Path, out_dir: Path, config: SceneConfig) -> int:
    """Decode ``path`` into ``out_dir/00000.png ...`` (frame numbers of the video). Returns the count written."""
    import imageio.v3 as iio
    from PIL import Image
    from tqdm import tqdm

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stride, limit = max(1, config.stride), config.max_frames
    written = 0
    try:
        for index, frame in enumerate(tqdm(iio.imiter(path, plugin="FFMPEG"), desc="decode video", unit="frame",
                                           leave=False)):
            if index % stride:
                continue
            image = Image.fromarray(np.asarray(frame)[..., :3])
            size = scaled_size(*image.size, max_size=config.max_size)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BOX)
            image.save(tmp / f"{index:05d}.png")
            written += 1
            if limit and written >= limit:
                break
    except (OSError, RuntimeError, ValueError, StopIteration) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot decode video ({first})", path) from None
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return written


def load(path: Path, config: SceneConfig) -> Scene:
    if path.stat().st_size == 0:
        raise UserError("video file is empty", path)
    out_dir = cache_dir("videos") / f"{path.stem}-{_cache_key(path, config)}"
    if not (out_dir / ".complete").exists():
        count = extract_frames(path, out_dir, config)
        if count == 0:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise UserError("video holds no decodable frames", path)
        (out_dir / ".complete").write_text(str(count))
    # The cache already applied stride, max-frames and max-size.
    from dataclasses import replace

    scene = frame_folder.load(out_dir, replace(config, stride=1, max_frames=0, max_size=0), fmt="video",
                              fps=video_fps(path))
    scene.name, scene.source = path.stem, path
    scene.notes.insert(0, f"decoded video frames cached in {out_dir}")
    return scene
