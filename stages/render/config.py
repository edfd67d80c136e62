"""Config section ``render``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option

PATHS = ("input", "spiral", "bullet", "sweep", "spiral-time")


@dataclass
class RenderConfig:
    """Render stage: test views, camera-path videos; also what `page4dgs render` and `page4dgs export` use."""

    video_paths: list = option(["spiral-time"], "Camera paths rendered as videos at the end of a run "
                               "(input, spiral, bullet, sweep, spiral-time).")
    video_frames: int = option(48, "Views per synthesized path video (spiral, bullet, sweep, spiral-time); the input "
                               "path replays every input frame unless `page4dgs render --frames` resamples it.")
    video_fps: float = option(24.0, "Frame rate of the MP4 videos.")
    video_max_size: int = option(512, "Longer side of video frames in pixels (0 = the input resolution); sides are "
                                 "rounded down to even numbers for H.264.")
    video_depth: bool = option(True, "Also write <path>_depth.mp4 (inverse depth, one colour range per video).")
    video_dynamic: bool = option(True, "Also write <path>_dynamic.mp4 (white = pixel covered by dynamic Gaussians).")
    video_png_frames: bool = option(True, "Also write the colour frames as PNGs in videos/<path>/.")
    frozen_time: float = option(0.5, "Time in [0, 1] at which the spiral and bullet paths freeze the scene.")
    bullet_arc_deg: float = option(60.0, "Total swing of the bullet-time camera around the focus point, degrees.")
    export_timestamps: int = option(0, "PLY export: number of timestamps, evenly spaced over the input times "
                                    "(0 = every distinct input time).")
    backend: str = option("auto", "Rasterizer for rendering: 'auto' (gsplat on CUDA, else PyTorch), 'gsplat' or "
                          "'torch'.", choices=("auto", "gsplat", "torch"))
