"""Stage 4a, render: every test view into ``render/test/NAME.png`` (+ ``render/test_depth/NAME.npy``), and the
videos of ``render.video_paths`` into ``videos/``.

The same pieces serve ``page4dgs render`` on a finished run (:mod:`stages.render.cli`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.io import read_npy_map, write_npy, write_png
from pipeline.log import progress
from stages.render.config import PATHS, RenderConfig
from stages.render.paths import InputCamera, PathView, SceneLayout, camera_path, resized, scene_layout
from stages.render.renderer import render_dynamic_weight, render_view
from stages.render.video import (FrameFolderWriter, Mp4Writer, depth_frame, depth_range, inverse_depth,
                                 weight_frame)


@dataclass
class RunInputs:
    """What rendering needs from a run folder."""

    run_dir: Path
    model: Any                    # stages.optimize.model.GaussianModel4D
    cameras: list                 # stages.initialize.geometry_io.FrameCamera, in cameras.json order
    camera_source: str            # "model" | "dataset"
    layout: SceneLayout
    background: tuple[float, float, float]
    config: RenderConfig

    @property
    def input_cameras(self) -> list[InputCamera]:
        return [InputCamera(c.world_to_camera, c.K, c.width, c.height, c.time) for c in self.cameras]

    def camera(self, name: str):
        for c in self.cameras:
            if c.name == name:
                return c
        raise UserError(f"frame '{name}' is not in geometry/cameras.json", self.run_dir)


def median_depths(geometry_dir: Path, names: Sequence[str]) -> Optional[list[float]]:
    """Median positive depth of each frame's ``geometry/depth/NAME.npy``; None when there are no depth maps."""
    values = []
    for name in names:
        path = geometry_dir / "depth" / f"{name}.npy"
        if not path.is_file():
            values.append(float("nan"))
            continue
        depth = read_npy_map(path, "depth map")
        valid = depth[np.isfinite(depth) & (depth > 0)]
        values.append(float(np.median(valid)) if valid.size else float("nan"))
    return values if np.isfinite(values).any() else None


def load_run_model(run_dir: Path, device: str):
    """The run's 4D model, ``optimize/model.pt`` (read by the optimize stage's documented loader)."""
    from stages.optimize.model import load_model

    path = run_dir / "optimize" / "model.pt"
    if not path.is_file():
        raise UserError("missing 'optimize/model.pt': the run has not finished its optimize stage", run_dir)
    return load_model(path, device)


def open_run(run_dir: Path, config: RenderConfig, background: str, device: str) -> RunInputs:
    """Load the model and cameras of a run folder (the optimize and geometry stages must have finished)."""
    from pipeline.scene.loaders.common import background_rgb
    from stages.initialize.geometry_io import read_cameras

    if not (run_dir / "geometry" / "cameras.json").is_file():
        raise UserError("missing 'geometry/cameras.json': the run has not finished its geometry stage", run_dir)
    model = load_run_model(run_dir, device)
    cameras, source = read_cameras(run_dir / "geometry" / "cameras.json")
    inputs = [InputCamera(c.world_to_camera, c.K, c.width, c.height, c.time) for c in cameras]
    layout = scene_layout(inputs, median_depths(run_dir / "geometry", [c.name for c in cameras]))
    return RunInputs(run_dir=run_dir, model=model, cameras=cameras, camera_source=source, layout=layout,
                     background=background_rgb(background), config=config)


def render_test_views(inputs: RunInputs, names: Sequence[str], out_dir: Path) -> dict:
    """Render each named frame at its stored resolution: ``out_dir/render/test/NAME.png`` (8-bit) and
    ``out_dir/render/test_depth/NAME.npy`` (float32 expected z-depth, 0 where nothing was rendered)."""
    start = time.perf_counter()
    for name in progress(names, desc="test views", unit="view"):
        cam = inputs.camera(name)
        view = PathView(cam.world_to_camera, cam.K, cam.width, cam.height, cam.time)
        out = render_view(inputs.model, view, inputs.background, inputs.config.backend)
        write_png(out_dir / "render" / "test" / f"{name}.png", out.rgb)
        write_npy(out_dir / "render" / "test_depth" / f"{name}.npy", out.depth)
    seconds = time.perf_counter() - start
    return {"test_views": len(names), "test_view_s": round(seconds / max(len(names), 1), 4)}


# Longest video a camera path may have: two minutes at 30 fps. The depth video's colour range needs every frame's
# inverse depth in memory (float16, about 1.3 MB a frame at 800 x 800) before it is encoded.
MAX_VIDEO_FRAMES = 3600


def video_outputs(out_mp4: Path) -> dict[str, Path]:
    """Where one path's files go: the colour MP4 and, beside it, depth / dynamic MP4s and the PNG frame folder."""
    stem = out_mp4.with_suffix("")
    return {"color": out_mp4, "depth": stem.with_name(stem.name + "_depth.mp4"),
            "dynamic": stem.with_name(stem.name + "_dynamic.mp4"), "frames": stem}


def render_video(inputs: RunInputs, path_name: str, out_mp4: Path, n_views: Optional[int] = None) -> list[Path]:
    """Render camera path ``path_name`` into ``out_mp4`` (and its depth / dynamic videos and PNG frames, as
    configured). Each file is written atomically. Returns the paths written."""
    cfg = inputs.config
    if path_name not in PATHS:
        raise UserError(f"unknown camera path '{path_name}' (choose from {', '.join(PATHS)})")
    if n_views is not None and not 2 <= n_views <= MAX_VIDEO_FRAMES:
        raise UserError(f"--frames must lie in [2, {MAX_VIDEO_FRAMES}] (got {n_views})")
    files = video_outputs(out_mp4)
    for key in ("color", "depth", "dynamic"):
        if files[key].is_dir():     # checked before any file is written: no video of a set is left half made
            raise UserError(f"a folder stands where the {key} video would be written; name an .mp4 file with --out",
                            files[key])
    views = camera_path(path_name, inputs.input_cameras, inputs.layout, n_views, cfg.frozen_time,
                        cfg.bullet_arc_deg, cfg.video_frames)
    views = [resized(v, cfg.video_max_size) for v in views]
    # Views of the input path can differ in size (multi-camera datasets): one video needs one size.
    views = [v if (v.width, v.height) == (views[0].width, views[0].height) else _refit(v, views[0]) for v in views]
    width, height = views[0].width, views[0].height
    inverse_depths, alphas = [], []       # the depth video's colour range needs every frame: float16 / uint8
    with contextlib.ExitStack() as stack:
        # the frame folder first: it refuses to replace a folder of the user's before any encoder starts
        frames = stack.enter_context(FrameFolderWriter(files["frames"])) if cfg.video_png_frames else None
        color = stack.enter_context(Mp4Writer(files["color"], width, height, cfg.video_fps))
        dynamic = (stack.enter_context(Mp4Writer(files["dynamic"], width, height, cfg.video_fps))
                   if cfg.video_dynamic else None)
        for view in progress(views, desc=f"video {path_name}", unit="frame"):
            out = render_view(inputs.model, view, inputs.background, cfg.backend)
            rgb = np.round(out.rgb * 255).astype(np.uint8)
            color.write(rgb)
            if frames is not None:
                frames.write(rgb)
            if dynamic is not None:
                dynamic.write(weight_frame(render_dynamic_weight(inputs.model, view, cfg.backend)))
            inverse_depths.append(inverse_depth(out.depth).astype(np.float16))
            alphas.append(np.round(out.alpha * 255).astype(np.uint8))
        if cfg.video_depth:   # inside the block: a failure here discards the other files too
            lo, hi = depth_range(inverse_depths, [a / 255.0 for a in alphas])
            with Mp4Writer(files["depth"], width, height, cfg.video_fps) as depth:
                for inv, a in zip(inverse_depths, alphas):
                    depth.write(depth_frame(inv, a / 255.0, lo, hi))
    return [files[k] for k, on in (("color", True), ("depth", cfg.video_depth), ("dynamic", cfg.video_dynamic),
                                   ("frames", cfg.video_png_frames)) if on]


def _refit(view: PathView, like: PathView) -> PathView:
    """``view`` rescaled to ``like``'s size (K scaled per axis)."""
    K = view.K.copy()
    K[0, :] *= like.width / view.width
    K[1, :] *= like.height / view.height
    return PathView(view.world_to_camera, K, like.width, like.height, view.time)


def check_config(cfg: RenderConfig) -> None:
    """Refuse values this stage cannot run with (the runner calls it before any stage runs)."""
    problems = [f"unknown camera path '{p}' in video_paths (choose from {', '.join(PATHS)})"
                for p in cfg.video_paths if p not in PATHS]
    if not 2 <= cfg.video_frames <= MAX_VIDEO_FRAMES:
        problems.append(f"video_frames must lie in [2, {MAX_VIDEO_FRAMES}]")
    if not cfg.video_fps > 0:
        problems.append("video_fps must be > 0")
    if cfg.video_max_size < 0:
        problems.append("video_max_size must be >= 0")
    if not 0.0 <= cfg.frozen_time <= 1.0:
        problems.append("frozen_time must lie in [0, 1]")
    if cfg.export_timestamps < 0:
        problems.append("export_timestamps must be >= 0")
    if not math.isfinite(cfg.bullet_arc_deg):
        problems.append(f"bullet_arc_deg must be a finite number (got {cfg.bullet_arc_deg:g})")
    if not math.isfinite(cfg.video_fps):
        problems.append(f"video_fps must be a finite number (got {cfg.video_fps:g})")
    if problems:
        raise UserError("render: " + "; ".join(problems))


def run(ctx) -> dict:
    cfg: RenderConfig = ctx.section
    check_config(cfg)
    inputs = open_run(ctx.run_dir, cfg, ctx.config.scene.background, ctx.device)
    names = [f.name for f in ctx.scene.test_frames]
    summary = render_test_views(inputs, names, ctx.work_dir)
    video_dir = ctx.work_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path_name in cfg.video_paths:
        render_video(inputs, path_name, video_dir / f"{path_name}.mp4")
    summary["videos"] = len(cfg.video_paths)
    summary["video_s"] = round(time.perf_counter() - start, 3)
    _keep_extra_videos(ctx.run_dir / "videos", video_dir)
    return summary


def _keep_extra_videos(previous: Path, current: Path) -> None:
    """Carry over what `page4dgs render` added to a run's videos/ (paths this stage does not render), so that a
    rerun of the stage does not delete them."""
    if not previous.is_dir():
        return
    for item in previous.iterdir():
        target = current / item.name
        if target.exists() or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)
