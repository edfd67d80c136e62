"""Config section ``render``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option


@dataclass
class RenderConfig:
    """Render stage: test views and camera-path videos."""

    video_paths: list = option(["spiral-time"], "Camera paths rendered as videos at the end of a run "
                               "(input, spiral, bullet, sweep, spiral-time).")
