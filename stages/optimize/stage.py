"""The optimize stage: read the cameras, the initial Gaussians and the training frames, train, write the model.

Reads ``geometry/cameras.json`` (only ``split == "train"`` frames are used; test images never touch optimization),
``geometry/depth/*.npy`` (for the optional depth loss), ``initialize/gaussians.ply`` and ``initialize/labels.npz``.
Writes ``optimize/model.pt`` (read it with :func:`stages.optimize.model.load_model`), ``optimize/log.csv`` and
``optimize/checkpoints/``. An interrupted run resumes from its last checkpoint when the same command runs again.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zipfile

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.io import numpy_load_reason
from pipeline.log import progress
from stages.initialize.gaussians import read_gaussians_ply
from stages.initialize.geometry_io import read_cameras, read_depth
from stages.optimize.config import HYBRIDS, OptimizeConfig
from stages.optimize.trainer import InitialGaussians, TrainData, TrainView, train

# Keep training images on the device in float32 up to this many bytes; beyond, decode each frame when it is used.
DEVICE_IMAGE_BUDGET = 2 << 30


def check_config(cfg: OptimizeConfig) -> None:
    """Refuse values this stage cannot run with (the runner calls it before any stage runs). Comparisons are
    written so that NaN fails them."""
    problems = []
    if cfg.iterations < 1:
        problems.append("iterations must be >= 1")
    if not 0 <= cfg.sh_degree <= 3:
        problems.append("sh_degree must be 0..3")
    if not 0.0 <= cfg.ssim_lambda <= 1.0:
        problems.append("ssim_lambda must be in [0, 1]")
    if cfg.bases_knots < 4:
        problems.append("bases_knots must be >= 4")
    for name in ("batch_size", "sh_degree_interval", "bases_count", "rigid_count", "mlp_width", "mlp_depth",
                 "planes_features", "planes_head_width", "refine_every", "keep_checkpoints", "log_every",
                 "silhouette_views", "motion_every", "opacity_time_from"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1 (got {getattr(cfg, name)})")
    for name in ("checkpoint_every", "reset_every", "field_embedding", "planes_time_resolution",
                 "mlp_position_frequencies", "mlp_time_frequencies"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name} must be >= 0 (got {getattr(cfg, name)})")
    if not cfg.planes_resolution or min(cfg.planes_resolution) < 1:
        problems.append(f"planes_resolution must be a non-empty list of integers >= 1 "
                        f"(got {cfg.planes_resolution})")
    if cfg.planes_level_time_resolution and (len(cfg.planes_level_time_resolution) != len(cfg.planes_resolution)
                                             or min(cfg.planes_level_time_resolution) < 1):
        problems.append(f"planes_level_time_resolution must be [] or one integer >= 1 per level of "
                        f"planes_resolution {cfg.planes_resolution} (got {cfg.planes_level_time_resolution})")
    for name in [f.name for f in dataclasses.fields(cfg) if f.name.startswith("lr_") and f.name != "lr_final_factor"]:
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            problems.append(f"{name} must be a finite number >= 0 (got {getattr(cfg, name):g})")
    for name in [f.name for f in dataclasses.fields(cfg) if f.name.endswith("_lambda") and f.name != "ssim_lambda"]:
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            problems.append(f"{name} must be a finite number >= 0 (got {getattr(cfg, name):g})")
    if cfg.residual_lambda > 0 and cfg.deformation not in HYBRIDS:
        problems.append(f"residual_lambda applies to deformation={', '.join(HYBRIDS[:-1])} or {HYBRIDS[-1]} only "
                        f"(deformation={cfg.deformation})")
    if cfg.deformation in ("rigid", "rigid_bases") and cfg.deform_opacity:
        problems.append(f"deform_opacity does not apply to deformation={cfg.deformation} (rigid motions leave the "
                        f"opacity alone)")
    if math.isfinite(cfg.drop_rate) and not 0.0 <= cfg.drop_rate < 1.0:
        problems.append(f"drop_rate must be in [0, 1) (got {cfg.drop_rate:g})")
    if not (math.isfinite(cfg.lr_final_factor) and cfg.lr_final_factor > 0):
        problems.append(f"lr_final_factor must be a finite number > 0 (got {cfg.lr_final_factor:g})")
    if not (math.isfinite(cfg.max_anisotropy) and cfg.max_anisotropy > 1):
        problems.append(f"max_anisotropy must be a finite number > 1 (got {cfg.max_anisotropy:g})")
    if not (math.isfinite(cfg.temporal_opacity_init) and cfg.temporal_opacity_init > 0):
        problems.append("temporal_opacity_init must be > 0")
    if not cfg.time_jitter >= 0:
        problems.append("time_jitter must be >= 0")
    if cfg.time_jitter_until < 0:
        problems.append("time_jitter_until must be >= 0")
    if not cfg.temporal_width_floor >= 0:
        problems.append("temporal_width_floor must be >= 0")
    if cfg.temporal_width_floor > 0 and cfg.temporal_widen_until < cfg.temporal_widen_from:
        problems.append("temporal_widen_until must be >= temporal_widen_from")
    for name in ("grow_grad2d", "grow_scale3d", "prune_scale3d"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name} must be >= 0 (got {getattr(cfg, name):g})")
    if math.isfinite(cfg.prune_opacity) and not 0.0 <= cfg.prune_opacity < 1.0:
        problems.append(f"prune_opacity must be in [0, 1) (got {cfg.prune_opacity:g})")
    if math.isfinite(cfg.explode_factor) and not cfg.explode_factor > 1.0:
        problems.append(f"explode_factor must be > 1 (got {cfg.explode_factor:g})")
    # last: every float finite, for the options no check above has named already
    named = {p.split(" ", 1)[0] for p in problems}
    for name in [f.name for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), float)]:
        if not math.isfinite(getattr(cfg, name)) and name not in named:
            problems.append(f"{name} must be a finite number (got {getattr(cfg, name):g})")
    for name in ("max_gaussians", "refine_start", "refine_stop", "deform_warmup", "cpu_threads",
                 "temporal_widen_from", "temporal_widen_until"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name} must be >= 0 (got {getattr(cfg, name)})")
    for name in ("rigidity_neighbors", "coherence_neighbors"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1 (got {getattr(cfg, name)})")
    if problems:
        raise UserError("optimize: " + "; ".join(problems))


def load_initial(ctx) -> InitialGaussians:
    ply = read_gaussians_ply(ctx.artifact("initialize/gaussians.ply"))
    labels_path = ctx.artifact("initialize/labels.npz")
    try:
        if not zipfile.is_zipfile(labels_path):     # np.load would take other bytes for a .npy or a pickle
            raise ValueError("not a .npz archive")
        with np.load(labels_path, allow_pickle=False) as labels:
            is_dynamic, times = labels["is_dynamic"].astype(bool), labels["time"].astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"unreadable Gaussian labels ({numpy_load_reason(err)}); rerun from initialize",
                        labels_path) from None
    if not len(is_dynamic) == len(times) == len(ply["means"]):
        raise UserError(f"labels.npz has {len(is_dynamic)} is_dynamic and {len(times)} time rows, gaussians.ply "
                        f"{len(ply['means'])} Gaussians", labels_path)
    return InitialGaussians(means=ply["means"], sh=ply["sh"], opacity_logits=ply["opacity_logits"],
                            log_scales=ply["log_scales"], quats=ply["quats"], is_dynamic=is_dynamic,
                            anchor_times=np.where(is_dynamic, times, 0.0).astype(np.float32))


def load_views(ctx, cfg: OptimizeConfig, device: torch.device) -> TrainData:
    """The training frames: cameras from cameras.json, images from the scene (on ``device`` while they fit in
    :data:`DEVICE_IMAGE_BUDGET`, else decoded at every use), depth for the depth loss."""
    from pipeline.scene.images import resize_array

    geometry_dir = ctx.artifact("geometry")
    cameras, _ = read_cameras(ctx.artifact("geometry/cameras.json"))
    train_cameras = [c for c in cameras if c.split == "train"]
    if not train_cameras:
        raise UserError("no training frames in cameras.json", geometry_dir / "cameras.json")
    eager = sum(c.width * c.height * 4 * 4 for c in train_cameras) <= DEVICE_IMAGE_BUDGET
    rgba = ctx.scene.alpha(ctx.scene.frame(train_cameras[0].name)) is not None     # one format per scene

    def decode(cam) -> tuple[torch.Tensor, torch.Tensor | None]:
        frame = ctx.scene.frame(cam.name)
        rgb, alpha = ctx.scene.rgb_alpha(frame)
        if rgb.shape[:2] != (cam.height, cam.width):
            rgb = resize_array(rgb, (cam.width, cam.height))
            alpha = None if alpha is None else resize_array(alpha, (cam.width, cam.height))
        return (torch.from_numpy(np.ascontiguousarray(rgb)),
                None if alpha is None else torch.from_numpy(np.ascontiguousarray(alpha)))

    views = []
    for cam in progress(train_cameras, desc="optimize: load frames", unit="frame"):
        depth = valid = None
        if cfg.depth_lambda > 0:
            d = read_depth(geometry_dir, cam.name)
            if d.shape != (cam.height, cam.width):
                d = resize_array(d, (cam.width, cam.height), nearest=True)
            depth = torch.from_numpy(d).to(device)
            valid = depth > 0
        image = alpha = None
        if eager:
            image, alpha = decode(cam)
            image, alpha = image.to(device), None if alpha is None else alpha.to(device)
        views.append(TrainView(
            name=cam.name, time=cam.time,
            world_to_camera=torch.tensor(cam.world_to_camera, dtype=torch.float32, device=device),
            K=torch.tensor(cam.K, dtype=torch.float32, device=device), width=cam.width, height=cam.height,
            image=image, alpha=alpha, depth=depth, depth_valid=valid,
            load=None if eager else (lambda cam=cam: decode(cam)),
            has_alpha=rgba))
    return TrainData(views=views, scene_background=tuple(float(c) for c in ctx.scene.background))


def random_background_unusable(cfg: OptimizeConfig, data: TrainData) -> bool:
    """Whether ``background: random`` was asked for on frames without alpha (then the trainer uses the scene's
    background). From ``has_alpha``: frames decoded at every use hold no alpha until then."""
    return cfg.background == "random" and not any(v.has_alpha for v in data.views)


def run(ctx) -> dict:
    cfg: OptimizeConfig = ctx.section
    check_config(cfg)
    device = torch.device(ctx.device)
    started = time.perf_counter()
    initial = load_initial(ctx)
    data = load_views(ctx, cfg, device)
    load_seconds = time.perf_counter() - started
    if random_background_unusable(cfg, data):
        ctx.log.info("optimize.background=random needs RGBA frames; using the scene background")
    out_dir = ctx.out("optimize/model.pt").parent
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg, data, initial, out_dir, device=device, seed=ctx.config.seed, resume=True)
    saving = time.perf_counter()
    result.model.save(out_dir / "model.pt")
    save_seconds = time.perf_counter() - saving
    model = result.model
    summary = {
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "load_seconds": round(load_seconds, 2),      # the initial Gaussians and the frames (onto the device)
        "save_seconds": round(save_seconds, 2),      # model.pt
        "setup_seconds": round(result.setup_seconds, 2),            # training's set-up (model, optimizer, resume)
        "setup_parts": result.setup_parts,                          # the set-up's seconds by phase
        "checkpoint_seconds": round(result.checkpoint_seconds, 2),  # the training thread's time on checkpoints
        "gaussians": model.num_gaussians(),
        "dynamic": int(model.splats["is_dynamic"].sum()) if model.deformation is not None else 0,
        "deformation": cfg.deformation,
        "train_psnr": round(result.train_psnr, 3),
        "nan_restores": result.restores,
    }
    if cfg.opacity_lambda > 0:
        summary["opacity_weighting"] = result.opacity_weighting      # 'auto' resolved by the training times
    if result.resumed_from is not None:
        summary["resumed_from_step"] = result.resumed_from
    if device.type == "cuda":
        summary["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return summary
