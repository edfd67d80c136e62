"""A folder of frames (PNG, JPEG, ...), in natural sort order. No cameras: the geometry stage estimates them."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import IMAGE_EXTENSIONS, image_size, natural_key, scaled_size
from pipeline.scene.loaders.common import check_frame_count, holdout_split, image_loader
from pipeline.scene.model import Frame, Scene


def list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith(".")), key=natural_key)


def detect(path: Path) -> bool:
    return path.is_dir() and bool(list_images(path))


def load(path: Path, config: SceneConfig, fmt: str = "frames", fps: float | None = None,
         source: Path | None = None) -> Scene:
    """``source``: what the user named, if not ``path`` (a video whose frames were decoded into ``path``)."""
    images = list_images(path)
    if not images:
        raise UserError("folder holds no images (" + ", ".join(IMAGE_EXTENSIONS) + ")", path)
    kept = images[:: max(1, config.stride)]
    if config.max_frames > 0:
        kept = kept[: config.max_frames]
    settings = ([f"scene.stride={config.stride}"] if config.stride > 1 else []) + \
        ([f"scene.max_frames={config.max_frames}"] if config.max_frames > 0 else [])
    why = f"{' and '.join(settings)} keep {len(kept)} of its {len(images)}" if len(kept) < len(images) else ""
    check_frame_count(kept, source or path, why=why)

    first_size = image_size(kept[0])
    for p in kept[1:]:
        size = image_size(p)
        if size != first_size:
            raise UserError(f"frame size {size[0]}x{size[1]} differs from {kept[0].name}'s "
                            f"{first_size[0]}x{first_size[1]} (all frames must have one size)", p)
    width, height = scaled_size(*first_size, max_size=config.max_size)
    size = (width, height) if (width, height) != first_size else None

    n = len(kept)
    frames = [
        Frame(name=p.stem, index=i, time=i / (n - 1), split=holdout_split(i, config.test_every), width=width,
              height=height, load_image=image_loader(p, size), time_index=i, source_path=p)
        for i, p in enumerate(kept)
    ]
    notes = [f"{n} of {len(images)} frames (stride {config.stride}), {width}x{height}",
             f"test split: every {config.test_every}th frame" if config.test_every else "no test split"]
    return Scene(name=path.name, format=fmt, source=path, frames=frames, notes=notes, fps=fps,
                 background=(1.0, 1.0, 1.0) if config.background == "white" else (0.0, 0.0, 0.0))
