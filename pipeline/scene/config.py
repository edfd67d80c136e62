"""Config section ``scene``: which input to load and how."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import option

FORMATS = ("auto", "demo", "video", "frames", "dnerf", "nerfies", "dycheck", "n3dv", "nerfstudio", "colmap")


@dataclass
class SceneConfig:
    """Input scene: a video file, a folder of frames, a dataset folder, or 'demo' (a synthetic room scene)."""

    source: str = option("demo", "The scene: a path, or 'demo' for the embedded synthetic scene (generated on first use).")
    format: str = option("auto", "Input format; 'auto' detects it from the files present.", choices=FORMATS)
    stride: int = option(1, "Keep every stride-th frame of a video, frame folder or N3DV capture.")
    max_frames: int = option(0, "Keep at most this many frames of a video or frame folder (time steps of an N3DV "
                                 "capture) after striding (0 = all); datasets with their own splits keep all.")
    max_size: int = option(0, "Downscale frames so that the longer side is at most this many pixels (0 = keep).")
    resolution: str = option("auto", "Dataset image resolution: 'auto' (the family's usual protocol), or a factor "
                             "such as '1x', '2x', '4x' (Nerfies/DyCheck folders; other formats are resized).")
    background: str = option("white", "Colour that RGBA frames are composited on.", choices=("white", "black"))
    test_every: int = option(8, "Frame folders, videos, COLMAP models and nerfstudio files without split lists: hold "
                             "out every n-th frame for testing (0 = none). Other datasets use their own split.")


def canonical_source(source: str) -> str:
    """``scene.source`` as runs compare it: 'demo' as is, a path absolute with symlinks resolved (the same folder
    named relatively, absolutely or through a link is one scene)."""
    return source if source == "demo" else str(Path(source).expanduser().resolve())
