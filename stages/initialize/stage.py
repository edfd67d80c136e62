"""The initialize stage: static and dynamic Gaussians from the geometry stage's depth maps.

Only training frames contribute (test images never touch optimization). Per training frame: unproject the depth at
pixel centres, keep pixels with valid depth, enough confidence, no depth discontinuity and (RGBA scenes) alpha >= 0.5,
take the colour from the frame (of RGBA frames, the surface's own colour: soft edges un-blended from the background),
and split by the dynamic mask. Static points of all frames are pooled and voxel-downsampled; dynamic points are
downsampled per time slice, so every dynamic Gaussian keeps the time it was seen. One voxel size serves both (the
same density everywhere) unless the dynamic slices would then take more than their share of the budget
(:func:`allocate_voxels`). Scales come from nearest-neighbour distances, colours become SH DC terms. Depth maps of
another size than their frame (a geometry folder from elsewhere) are unprojected with K scaled to them when the
aspect ratio agrees, and refused otherwise.

Writes ``initialize/gaussians.ply`` (standard 3DGS layout, SH degree 0) and ``initialize/labels.npz``
(``is_dynamic`` bool (N,), ``time`` float32 (N,) = time seen (-1 for static), ``frame_index`` int32 (N,) = index in
``cameras.json`` of a frame of that time slice (-1 for static)).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from pipeline.cameras import Sim3, align_cameras_sim3
from pipeline.errors import UserError
from pipeline.io import atomic_path
from pipeline.log import progress
from pipeline.scene.loaders.common import aspect_ratios_differ
from pipeline.scene.model import Camera
from stages.initialize.config import InitializeConfig
from stages.initialize.gaussians import (initial_log_scales, logit, rgb_to_sh_dc, unblend_background,
                                         write_gaussians_ply)
from stages.initialize.geometry_io import FrameCamera, read_cameras, read_confidence, read_depth, read_dynamic_mask
from stages.initialize.points import (confidence_mask, count_voxels, depth_edge_mask, point_bounds, unproject_depth,
                                      voxel_downsample, voxel_size_for_budget)


@dataclass
class FramePoints:
    """Filtered points of one training frame, in the world of cameras.json."""

    camera: FrameCamera
    points: np.ndarray      # (P, 3) float64
    colors: np.ndarray      # (P, 3) float64 in [0, 1]
    dynamic: np.ndarray     # (P,) bool


@dataclass
class InitialGaussians:
    """Initial Gaussians (pre-activation), static first then dynamic slices in time order."""

    means: np.ndarray           # (N, 3)
    colors: np.ndarray          # (N, 3) in [0, 1]
    log_scales: np.ndarray      # (N, 3)
    is_dynamic: np.ndarray      # (N,) bool
    time: np.ndarray            # (N,) float32, -1 for static
    frame_index: np.ndarray     # (N,) int32, -1 for static


def frame_points(camera: FrameCamera, depth: np.ndarray, rgb: np.ndarray, confidence: np.ndarray,
                 dynamic_mask: np.ndarray | None, alpha: np.ndarray | None, cfg: InitializeConfig,
                 unproject_camera: FrameCamera | None = None, to_world: Sim3 | None = None) -> FramePoints:
    """Filter and unproject one frame. ``unproject_camera``/``to_world``: unproject with another camera (the
    network's own) and map the points into the cameras.json world by ``to_world``."""
    keep = (depth > 0) & np.isfinite(depth)
    keep &= confidence_mask(confidence, cfg.min_confidence, cfg.confidence_percentile, valid=keep)
    keep &= depth_edge_mask(depth, cfg.max_depth_edge)
    if alpha is not None:
        keep &= alpha >= 0.5
    cam = unproject_camera or camera
    points = unproject_depth(depth, cam.K, cam.world_to_camera)[keep]          # (P, 3)
    if to_world is not None:
        points = to_world.apply(points)
    dynamic = dynamic_mask[keep] if dynamic_mask is not None else np.zeros(len(points), dtype=bool)
    return FramePoints(camera, points, rgb[keep].astype(np.float64), dynamic)


def camera_for_map(camera: FrameCamera, shape: tuple[int, int], path) -> FrameCamera:
    """``camera`` with the intrinsics of a map of ``shape`` (H, W) of its frame: unchanged when the map has the
    frame's size (the artifacts' contract, docs/artifacts.md); K's rows scaled by the size ratios when it has
    another size but the frame's aspect ratio (pixel centres at +0.5 stay so: u' = s u); else a :class:`UserError`
    naming ``path`` (no rescaling of K would be right)."""
    height, width = shape
    if (width, height) == (camera.width, camera.height):
        return camera
    if aspect_ratios_differ((width, height), (camera.width, camera.height)):
        raise UserError(f"map is {width}x{height} but its frame in cameras.json is {camera.width}x{camera.height} "
                        "(aspect ratios differ)", path)
    scaled = Camera(camera.K, camera.world_to_camera, camera.width, camera.height).scaled(width, height)
    return replace(camera, K=scaled.K, width=width, height=height)


def allocate_voxels(static_pts: np.ndarray, slice_pts: list[np.ndarray], budget: int,
                    dynamic_fraction: float) -> tuple[float, float]:
    """Voxel sizes (static, dynamic) for the budget: one size for everything (the same density on static surfaces
    and on each time slice of the moving ones) unless the dynamic slices would then take more than
    max(dynamic_fraction x budget, what the static points cannot use); then the dynamic slices get exactly that
    share at one common size and the static points the rest. 0 = no downsampling."""
    static_bounds = point_bounds(static_pts) if len(static_pts) else None
    slice_bounds = [point_bounds(p) if len(p) else None for p in slice_pts]   # each group's, once for all searches

    def n_voxels(size: float) -> int:
        return sum(count_voxels(p, size, b) if size > 0 else len(p) for p, b in zip(slice_pts, slice_bounds))

    common = voxel_size_for_budget([static_pts, *slice_pts], budget, bounds=[static_bounds, *slice_bounds])
    # at least one voxel per non-empty slice, whatever dynamic_fraction says (the caller checked that they fit)
    cap = max(int(dynamic_fraction * budget), budget - len(static_pts), sum(len(p) > 0 for p in slice_pts))
    if n_voxels(common) <= cap:
        return common, common
    dynamic = voxel_size_for_budget(slice_pts, cap, bounds=slice_bounds)
    return voxel_size_for_budget([static_pts], budget - n_voxels(dynamic), bounds=[static_bounds]), dynamic


def build_gaussians(frames: list[FramePoints], cfg: InitializeConfig) -> InitialGaussians:
    """Pool, downsample to the budget and attribute the points of all training frames."""
    static_pts = np.concatenate([f.points[~f.dynamic] for f in frames] or [np.zeros((0, 3))])
    static_rgb = np.concatenate([f.colors[~f.dynamic] for f in frames] or [np.zeros((0, 3))])
    kept_times = set(sorted({f.camera.time for f in frames})[:: cfg.dynamic_time_stride])  # the first, every k-th
    slices: dict[float, list[FramePoints]] = defaultdict(list)      # time -> frames seen at that time
    for f in frames:
        if f.dynamic.any() and f.camera.time in kept_times:
            slices[f.camera.time].append(f)
    times = sorted(slices)
    slice_pts = [np.concatenate([f.points[f.dynamic] for f in slices[t]]) for t in times]
    slice_rgb = [np.concatenate([f.colors[f.dynamic] for f in slices[t]]) for t in times]
    if len(slices) + (len(static_pts) > 0) > cfg.max_gaussians:
        raise UserError(f"initialize: a budget of {cfg.max_gaussians} Gaussians cannot hold the {len(slices)} "
                        f"dynamic time slices (raise initialize.max_gaussians)")
    static_voxel, dynamic_voxel = allocate_voxels(static_pts, slice_pts, cfg.max_gaussians, cfg.dynamic_fraction)

    dyn_means, dyn_rgb, dyn_time, dyn_frame = [], [], [], []
    for t, pts, rgb in zip(times, slice_pts, slice_rgb):
        pts, rgb = voxel_downsample(pts, rgb, dynamic_voxel)
        dyn_means.append(pts)
        dyn_rgb.append(rgb)
        dyn_time.append(np.full(len(pts), t))
        dyn_frame.append(np.full(len(pts), min(f.camera.index for f in slices[t])))
    n_dynamic = sum(len(p) for p in dyn_means)
    static_pts, static_rgb = voxel_downsample(static_pts, static_rgb, static_voxel)
    if len(static_pts) + n_dynamic == 0:
        raise UserError("initialize: no valid depth pixels in any training frame (check geometry/depth and the "
                        "confidence thresholds)")

    # Scales: static points from their own neighbourhood; each dynamic slice from itself plus the static points.
    log_scales = [initial_log_scales(static_pts, cfg.init_scale)] if len(static_pts) else []
    for pts in dyn_means:
        both = np.concatenate([pts, static_pts])
        log_scales.append(initial_log_scales(both, cfg.init_scale)[: len(pts)])
    return InitialGaussians(
        means=np.concatenate([static_pts, *dyn_means]),
        colors=np.clip(np.concatenate([static_rgb, *dyn_rgb]), 0.0, 1.0),
        log_scales=np.concatenate(log_scales) if log_scales else np.zeros((0, 3)),
        is_dynamic=np.concatenate([np.zeros(len(static_pts), bool), np.ones(n_dynamic, bool)]),
        time=np.concatenate([np.full(len(static_pts), -1.0), *dyn_time]).astype(np.float32),
        frame_index=np.concatenate([np.full(len(static_pts), -1), *dyn_frame]).astype(np.int32),
    )


def write_initial_gaussians(gaussians: InitialGaussians, ply_path, labels_path, init_opacity: float) -> None:
    n = len(gaussians.means)
    sh = rgb_to_sh_dc(gaussians.colors)[:, None, :]                         # (N, 1, 3)
    quats = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (n, 1))
    write_gaussians_ply(ply_path, gaussians.means, sh, np.full(n, logit(init_opacity)), gaussians.log_scales, quats)
    with atomic_path(labels_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, is_dynamic=gaussians.is_dynamic, time=gaussians.time, frame_index=gaussians.frame_index)


def check_config(cfg: InitializeConfig) -> None:
    """Refuse values this stage cannot run with (the runner calls it before any stage runs)."""
    if not 0.0 <= cfg.dynamic_fraction <= 1.0:
        raise UserError(f"initialize.dynamic_fraction must be in [0, 1], got {cfg.dynamic_fraction}")
    if cfg.dynamic_time_stride < 1:
        raise UserError(f"initialize.dynamic_time_stride must be >= 1, got {cfg.dynamic_time_stride}")
    if cfg.max_gaussians < 1 or not 0.0 < cfg.init_opacity < 1.0:
        raise UserError("initialize: max_gaussians must be >= 1, init_opacity in (0, 1)")
    if not (math.isfinite(cfg.init_scale) and cfg.init_scale > 0):
        raise UserError(f"initialize.init_scale must be a finite number > 0, got {cfg.init_scale:g}")
    if not 0.0 <= cfg.confidence_percentile <= 100.0:
        raise UserError(f"initialize.confidence_percentile must be in [0, 100], got {cfg.confidence_percentile:g}")
    for name in ("min_confidence", "max_depth_edge"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            raise UserError(f"initialize.{name} must be a finite number >= 0, got {getattr(cfg, name):g}")


def run(ctx) -> dict:
    cfg: InitializeConfig = ctx.section
    check_config(cfg)
    geometry_dir = ctx.artifact("geometry")
    cameras, camera_source = read_cameras(ctx.artifact("geometry/cameras.json"))
    train = [c for c in cameras if c.split == "train"]
    if not train:
        raise UserError("no training frames in cameras.json", geometry_dir / "cameras.json")

    unproject_cameras: dict[str, FrameCamera] = {}
    to_world = None
    if cfg.points_from == "predicted":
        predicted, predicted_source = read_cameras(ctx.artifact("geometry/predicted_cameras.json"))
        by_name = {c.name: c for c in predicted}
        missing = [c.name for c in train if c.name not in by_name]
        if missing:
            raise UserError(f"predicted_cameras.json lacks training frame '{missing[0]}'", geometry_dir)
        unproject_cameras = {c.name: by_name[c.name] for c in train}
        if predicted_source == camera_source:
            # The geometry stage writes its predictions already in the cameras.json world (aligned, with the depth
            # in its units): a second, camera-centre Sim(3) would undo the depth-agreement scale.
            ctx.log.info("points from the predicted cameras (already in the cameras.json world)")
        else:
            # Predictions in the network's own world beside dataset cameras: bring them over.
            to_world = align_cameras_sim3(np.stack([by_name[c.name].world_to_camera for c in train]),
                                          np.stack([c.world_to_camera for c in train]))
            ctx.log.info(f"points from the predicted cameras ({predicted_source} world), Sim(3) to the cameras.json "
                         f"world: scale {to_world.scale:.4g}")

    from pipeline.scene.images import resize_array

    frames = []
    n_masks = 0
    for cam in progress(train, desc="initialize: unproject", unit="frame"):
        depth = read_depth(geometry_dir, cam.name)
        shape = depth.shape
        depth_path = geometry_dir / "depth" / f"{cam.name}.npy"
        camera = camera_for_map(cam, shape, depth_path)           # K at the depth map's resolution
        unproject = unproject_cameras.get(cam.name)
        unproject = None if unproject is None else camera_for_map(unproject, shape, depth_path)
        frame = ctx.scene.frame(cam.name)
        rgb, alpha = ctx.scene.rgb_alpha(frame)
        if rgb.shape[:2] != shape:
            rgb = resize_array(rgb, (shape[1], shape[0]))
            alpha = None if alpha is None else resize_array(alpha, (shape[1], shape[0]))
        if alpha is not None:                     # colours of the surfaces, not of their blend at soft edges
            rgb = unblend_background(rgb, alpha, ctx.scene.background)
        mask = read_dynamic_mask(geometry_dir, cam.name, shape)
        n_masks += mask is not None
        confidence = read_confidence(geometry_dir, cam.name, shape)
        frames.append(frame_points(camera, depth, rgb, confidence, mask, alpha, cfg, unproject, to_world))
    if n_masks == 0:
        ctx.log.info("no dynamic masks in geometry/: every Gaussian starts static")

    gaussians = build_gaussians(frames, cfg)
    write_initial_gaussians(gaussians, ctx.out("initialize/gaussians.ply"), ctx.out("initialize/labels.npz"),
                            cfg.init_opacity)
    n_dyn = int(gaussians.is_dynamic.sum())
    return {"gaussians": int(len(gaussians.means)), "static": int(len(gaussians.means) - n_dyn), "dynamic": n_dyn,
            "time_slices": int(len(np.unique(gaussians.time[gaussians.is_dynamic]))),
            "points_from": cfg.points_from}
