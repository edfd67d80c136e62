"""Stage 4b, evaluate: ``metrics.json`` (DESIGN.md §3, every protocol choice stated) and ``report.html``.

Image metrics compare each test view's render (``render/test/NAME.png``, 8 bit) with the scene's test image
composited on the scene background and rounded to 8 bit, at the test frame's stored resolution: PSNR, SSIM (3DGS
convention), LPIPS-alex and LPIPS-vgg (inputs in [-1, 1]), per view and their mean over views. ``extra`` adds the
valid-region SSIM and VGG LPIPS in the 3DGS [0, 1] convention; ``masked`` adds DyCheck's covisibility-masked
mPSNR / mSSIM / mLPIPS-alex where the scene has covisibility masks.

Geometry metrics, only where the scene has ground truth: camera poses of the geometry network against the dataset
cameras (ATE, RPE after a Sim(3) alignment), its depth maps against ground-truth depth (one scale per sequence), its
dynamic masks against ground-truth masks (IoU). Non-finite values are written as null.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.io import read_json, write_json, write_text
from pipeline.log import get_logger, progress
from stages.evaluate.config import EvaluateConfig
from stages.evaluate.depth_metrics import depth_errors
from stages.evaluate.image_metrics import (masked_psnr, masked_ssim, moving_region_errors, psnr, quantize_8bit,
                                           ssim_3dgs, ssim_valid)
from stages.evaluate.mask_metrics import mask_iou
from stages.evaluate.pose_metrics import camera_to_world, pose_errors

log = get_logger("evaluate")

IMAGE_METRICS = ("psnr", "ssim", "lpips_alex", "lpips_vgg")
STAGE_TIMES = ("geometry", "initialize", "optimize", "render")


@dataclass
class ViewImages:
    """A test view kept for the report: ground truth and render, (H, W, 3) float in [0, 1]."""

    name: str
    ground_truth: np.ndarray
    render: np.ndarray
    metrics: dict


@dataclass
class Evaluation:
    metrics: dict                                     # the content of metrics.json
    views: list[ViewImages] = field(default_factory=list)
    trajectories: dict = field(default_factory=dict)  # label -> (N, 3) camera centres for the report


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _finite(obj):
    """Replace non-finite floats by None, recursively (JSON has no NaN / Infinity)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def evenly_spaced(items: list, count: int) -> list:
    if count <= 0 or not items:
        return []
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.round(np.linspace(0, len(items) - 1, count)).astype(int)]


# ----------------------------------------------------------------------------------------------------------------
# Image metrics


def _read_render(run_dir: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    from pipeline.scene.images import read_image

    path = run_dir / "render" / "test" / f"{name}.png"
    if not path.is_file():
        raise UserError(f"missing test render 'render/test/{name}.png' (make it again: page4dgs reconstruct "
                        "SCENE --out RUN --from render)", run_dir)
    image = quantize_8bit(read_image(path)[..., :3])   # exact k / 255 in float64
    if image.shape != shape:
        raise UserError(f"render is {image.shape[1]}x{image.shape[0]} but the test frame is {shape[1]}x{shape[0]}",
                        path)
    return image


def image_metrics(scene, run_dir: Path, cfg: EvaluateConfig,
                  device: str) -> tuple[list[dict], list[dict], list[dict], list[dict], list[ViewImages], str]:
    """Per-view metrics (DESIGN keys), per-view extras, per-view masked metrics, per-view errors on and around the
    moving pixels (test frames with ground-truth dynamic masks), the views kept for the report and a description
    of the LPIPS weights."""
    from stages.evaluate.lpips_metric import get_lpips

    frames = scene.test_frames
    if not frames:
        log.warning("the scene holds no test views (for videos and frame folders: scene.test_every=0), so PSNR, "
                    "SSIM and LPIPS are not computed (null in metrics.json); geometry metrics still are")
    keep = {f.name for f in evenly_spaced(frames, cfg.report_views)}
    nets: dict[str, object] = {"alex": None, "vgg": None}
    missing: dict[str, str] = {}
    if cfg.lpips and frames:
        for name in nets:          # each backbone on its own: an offline host may hold AlexNet's weights only
            try:
                nets[name] = get_lpips(name, device)
            except UserError as err:   # no weights and no registry: the other metrics still count
                missing[name] = str(err)
                log.warning(f"LPIPS-{name} skipped: {err}; rerun `page4dgs evaluate RUN` once the weights are in "
                            "place")
    alex, vgg = nets["alex"], nets["vgg"]
    unavailable = missing.get("alex", "")
    train_times = np.array([f.time for f in scene.train_frames], dtype=np.float64)
    per_view, extra, masked, moving, kept = [], [], [], [], []
    for frame in progress(frames, desc="metrics", unit="view"):
        gt = quantize_8bit(scene.rgb(frame))
        render = _read_render(run_dir, frame.name, gt.shape)
        row = {"name": frame.name, "psnr": psnr(render, gt), "ssim": ssim_3dgs(render, gt),
               "lpips_alex": alex(render, gt) if alex else None, "lpips_vgg": vgg(render, gt) if vgg else None}
        per_view.append(row)
        extra.append({"name": frame.name, "ssim_valid": ssim_valid(render, gt),
                      "lpips_vgg_3dgs": vgg(render, gt, inputs_in_minus1_1=False)
                      if vgg and cfg.lpips_vgg_3dgs else None})
        if frame.load_covisible is not None:
            mask = np.asarray(frame.load_covisible(), dtype=bool)
            masked.append({"name": frame.name, "mpsnr": masked_psnr(render, gt, mask),
                           "mssim": masked_ssim(render, gt, mask),
                           "mlpips_alex": alex.masked(render, gt, mask) if alex else None,
                           "covisible_fraction": float(mask.mean())})
        if frame.load_dynamic_mask is not None:
            moving.append(moving_view(frame, render, gt, train_times))
        if frame.name in keep:
            kept.append(ViewImages(frame.name, gt, render, row))
    source = (alex.source if alex else f"not computed ({unavailable})" if unavailable
              else "not computed (no test views)" if cfg.lpips else "not computed (evaluate.lpips = false)")
    if "vgg" in missing and alex:
        source += f"; lpips_vgg not computed ({missing['vgg']})"
    return per_view, extra, masked, moving, kept, source


MOVING_BORDER_PX = 3           # the border around the moving pixels whose error the 'moving' section reports


def moving_view(frame, render: np.ndarray, gt: np.ndarray, train_times: np.ndarray) -> dict:
    """One test view's figures for the ``moving`` section: PSNR over its moving and its other pixels, its squared
    error on the moving pixels, on the border around them and in all (ground-truth dynamic mask, resized to the
    test image by nearest neighbour where it differs), and its time with the distance to the nearest training time
    (``time_to_train``, scene time in [0, 1]; None without training frames): whether the moving error grows
    between training times or with the new viewpoint alone."""
    from pipeline.scene.images import resize_array

    mask = np.asarray(frame.load_dynamic_mask(), dtype=bool)
    if mask.shape != gt.shape[:2]:
        mask = resize_array(mask.astype(np.float32), (gt.shape[1], gt.shape[0]), nearest=True) > 0.5
    errors = moving_region_errors(render, gt, mask, MOVING_BORDER_PX)
    total = errors["sse_total"]
    gap = float(np.abs(train_times - frame.time).min()) if train_times.size else None
    return {"name": frame.name, "time": float(frame.time), "time_to_train": gap,
            "psnr_moving": masked_psnr(render, gt, mask),
            "psnr_static": masked_psnr(render, gt, ~mask), "moving_fraction": float(mask.mean()),
            "error_share_moving": errors["sse_moving"] / total if total else None,
            "error_share_border": errors["sse_border"] / total if total else None, "_errors": errors}


def moving_summary(views: list[dict]) -> dict:
    """The ``moving`` section from :func:`moving_view` rows: PSNRs as means over views (as the headline PSNR; a view
    without moving pixels has no psnr_moving and is left out of its mean), error shares pooled over all views (the
    squared error summed over views on the moving pixels / border, over the total)."""
    sums = {key: sum(v["_errors"][key] for v in views) for key in ("sse_moving", "sse_border", "sse_total")}
    total = sums["sse_total"]
    return {"psnr_moving": _mean(v["psnr_moving"] for v in views if not math.isnan(v["psnr_moving"])),
            "psnr_static": _mean(v["psnr_static"] for v in views if not math.isnan(v["psnr_static"])),
            "error_share_moving": sums["sse_moving"] / total if total else None,
            "error_share_border": sums["sse_border"] / total if total else None,
            "moving_fraction": _mean(v["moving_fraction"] for v in views),
            "per_view": [{k: v for k, v in view.items() if k != "_errors"} for view in views]}


# ----------------------------------------------------------------------------------------------------------------
# Geometry metrics


def pose_metrics(scene, run_dir: Path) -> tuple[dict, Optional[str], dict]:
    """ATE / RPE of the network's cameras against the dataset's; ({} , None, {}) when either is missing."""
    from stages.initialize.geometry_io import read_cameras

    if not scene.has_cameras:
        return {}, None, {}
    geometry = run_dir / "geometry"
    cameras, source = read_cameras(geometry / "cameras.json")
    if (geometry / "predicted_cameras.json").is_file():
        estimated, _ = read_cameras(geometry / "predicted_cameras.json")
        what = "geometry/predicted_cameras.json (the geometry stage's own estimate)"
    elif source == "model":
        estimated, what = cameras, "geometry/cameras.json (model cameras)"
    else:
        return {}, None, {}
    by_name = {c.name: c for c in estimated}
    pairs = [(f, by_name[f.name]) for f in sorted(scene.frames, key=lambda f: f.index) if f.name in by_name]
    if len(pairs) < 3:
        return {}, None, {}
    reference = np.stack([f.camera.world_to_camera for f, _ in pairs])
    estimate = np.stack([c.world_to_camera for _, c in pairs])
    errors = pose_errors(estimate, reference)
    aligned = errors.alignment.apply(camera_to_world(estimate)[:, :3, 3])
    protocol = (f"estimate: {what}; reference: the dataset cameras; {len(pairs)} frames in time order; Sim(3) "
                f"Umeyama alignment of camera centres (scale {errors.alignment.scale:.4g}); ATE = RMSE of aligned "
                f"centres; RPE over consecutive frames (delta 1), RMSE of translation and of rotation angle (deg)")
    trajectories = {"dataset cameras": camera_to_world(reference)[:, :3, 3], "estimated (aligned)": aligned}
    return ({"ate": errors.ate, "rpe_trans": errors.rpe_trans, "rpe_rot_deg": errors.rpe_rot_deg}, protocol,
            trajectories)


def depth_metrics(scene, run_dir: Path, cfg: EvaluateConfig) -> tuple[dict, Optional[str]]:
    from stages.initialize.geometry_io import read_depth

    frames = [f for f in scene.frames
              if f.load_depth is not None and (run_dir / "geometry" / "depth" / f"{f.name}.npy").is_file()]
    if not frames:
        return {}, None
    predictions = [read_depth(run_dir / "geometry", f.name) for f in frames]
    targets = [np.asarray(f.load_depth(), dtype=np.float64) for f in frames]
    result = depth_errors(predictions, targets, cfg.depth_alignment, cfg.depth_max)
    alignment = {"scale": "L1 scale by IRLS (10 iterations, PAGE-4D / CUT3R)",
                 "median": "median ratio (MonST3R)"}[cfg.depth_alignment]
    protocol = (f"geometry/depth vs ground-truth z-depth over {len(frames)} frames as one sequence; "
                f"{alignment}, fitted once (scale {result['scale']:.4g}); valid: 0 < d_gt"
                + (f" < {cfg.depth_max:g}" if cfg.depth_max > 0 else "")
                + f"; {result['valid_pixels']} pixels; predictions resized bicubically to the ground truth")
    return {"depth_abs_rel": result["abs_rel"], "depth_delta_1.25": result["delta_1.25"]}, protocol


def dynamic_mask_metrics(scene, run_dir: Path) -> tuple[dict, Optional[str]]:
    from pipeline.scene.images import read_mask, resize_array

    frames = [f for f in scene.frames if f.load_dynamic_mask is not None
              and (run_dir / "geometry" / "dynamic_mask" / f"{f.name}.png").is_file()]
    if not frames:
        return {}, None
    predictions, targets = [], []
    for f in frames:
        target = np.asarray(f.load_dynamic_mask(), dtype=bool)
        predicted = read_mask(run_dir / "geometry" / "dynamic_mask" / f"{f.name}.png")
        if predicted.shape != target.shape:
            size = (target.shape[1], target.shape[0])
            predicted = resize_array(predicted.astype(np.float32), size, nearest=True) > 0.5
        predictions.append(predicted)
        targets.append(target)
    protocol = f"geometry/dynamic_mask vs ground-truth dynamic masks, IoU pooled over {len(frames)} frames"
    return {"mask_iou": mask_iou(predictions, targets)}, protocol


# ----------------------------------------------------------------------------------------------------------------
# Assembly


def timing(run_dir: Path, evaluate_s: float) -> tuple[dict, Optional[str]]:
    """Stage wall times from manifest.json; total_s adds this evaluation's own time. Also the training device."""
    # The timings are optional: a missing, malformed or oddly shaped manifest means none (as the runner, which
    # reruns its stages, treats it), not a failed evaluation.
    try:
        manifest = read_json(run_dir / "manifest.json")
    except UserError:
        manifest = {}
    stages = manifest.get("stages") if isinstance(manifest, dict) else None
    stages = {k: v for k, v in stages.items() if isinstance(v, dict)} if isinstance(stages, dict) else {}
    out = {}
    for name in STAGE_TIMES:
        wall = stages.get(name, {}).get("wall_s")
        out[f"{name}_s"] = float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None
    out["total_s"] = sum(v for v in out.values() if v is not None) + evaluate_s
    device = stages.get("optimize", {}).get("device")
    return out, device if isinstance(device, str) else None


def _test_split(scene) -> str:
    frames = scene.test_frames
    if not frames:
        return "none: the scene has no test frames (set scene.test_every for videos and frame folders)"
    split = frames[0].split
    text = f"{len(frames)} '{split}' frames of the {scene.format} scene"
    if scene.format in ("video", "frames"):
        text += " (held out every scene.test_every-th frame, starting mid-block)"
    return text + (f"; loader: {scene.notes[0]}" if scene.notes else "")


def evaluate_run(run_dir: Path, config, scene, device: str = "cpu") -> Evaluation:
    """Compute everything metrics.json holds for a finished run (render stage done)."""
    from pipeline.runner import device_name
    from stages.initialize.geometry_io import read_cameras

    start = time.perf_counter()
    cfg: EvaluateConfig = config.evaluate
    per_view, extra_views, masked_views, moving_views, kept, lpips_source = image_metrics(scene, run_dir, cfg,
                                                                                          device)
    _, camera_source = read_cameras(run_dir / "geometry" / "cameras.json")

    metrics: dict = {}
    sizes = sorted({(f.width, f.height) for f in scene.test_frames})
    masks = ("covisible: DyCheck mPSNR / mSSIM / mLPIPS-alex in 'masked' (inputs multiplied by the mask, "
             "SSIM map mean over all pixels as in DyCheck); headline metrics unmasked") if masked_views else "none"
    cameras_note = ("dataset cameras for training and for rendering test views" if camera_source == "dataset" else
                    "model cameras: the geometry network estimated every camera, test cameras included, from the "
                    "input images (test images were used to estimate their own poses, never for appearance)")
    metrics["protocol"] = {
        "ssim": "ssim_3dgs: per channel, 11x11 Gaussian window (sigma 1.5), zero padding 5, mean over the full map "
                "(3DGS / 4DGaussians loss_utils.ssim); C1 = 0.01^2, C2 = 0.03^2; population statistics",
        "lpips": f"lpips 0.1.4 with its v0.1 linear heads; lpips_alex: AlexNet, lpips_vgg: VGG16 ImageNet features "
                 f"({lpips_source}); inputs in [0, 1] scaled to [-1, 1] (normalize=True)",
        "psnr": "per view: -10 log10(MSE over H x W x 3), then the mean over views",
        "quantisation": "8-bit: renders read back from PNG; ground truth composited on the background, then "
                        "rounded to 8 bit",
        "resolution": list(sizes[0]) if len(sizes) == 1 else [list(s) for s in sizes],   # [] without test views
        "background": (f"{'white' if scene.background == (1.0, 1.0, 1.0) else 'black'}: RGBA ground truth "
                       f"composited as rgb * a + bg * (1 - a); renders composited on the same colour"),
        "masks": masks,
        "cameras": camera_source,
        "cameras_note": cameras_note,
        "test_split": _test_split(scene),
        "averaging": "mean over test views of the per-view values",
    }
    for key in IMAGE_METRICS:
        metrics[key] = _mean(v[key] for v in per_view)
    metrics["per_view"] = per_view

    geometry, geometry_protocol, trajectories = {}, {}, {}
    pose, pose_protocol, trajectories = pose_metrics(scene, run_dir)
    depth, depth_protocol = depth_metrics(scene, run_dir, cfg)
    dynamic, mask_protocol = dynamic_mask_metrics(scene, run_dir)
    for values, name, text in ((pose, "poses", pose_protocol), (depth, "depth", depth_protocol),
                               (dynamic, "dynamic_masks", mask_protocol)):
        geometry.update(values)
        if text:
            geometry_protocol[name] = text
    if geometry:
        metrics["geometry"] = geometry
        metrics["protocol"]["geometry"] = geometry_protocol

    metrics["extra"] = {
        "ssim_valid": _mean(v["ssim_valid"] for v in extra_views),
        "lpips_vgg_3dgs": _mean(v["lpips_vgg_3dgs"] for v in extra_views),
        "per_view": extra_views,
        "about": "ssim_valid: SSIM over windows inside the image (scikit-image Gaussian convention); "
                 "lpips_vgg_3dgs: VGG16 LPIPS fed [0, 1] images, the convention of 3DGS / 4DGaussians / "
                 "Deformable-3DGS tables (10-30 % lower than lpips_vgg)",
    }
    if masked_views:
        metrics["masked"] = {key: _mean(v[key] for v in masked_views) for key in ("mpsnr", "mssim", "mlpips_alex")}
        metrics["masked"]["per_view"] = masked_views
    if moving_views:
        metrics["moving"] = moving_summary(moving_views)
        metrics["protocol"]["moving"] = (
            f"where the test views' ground-truth dynamic masks exist ({len(moving_views)} views; True = moving at "
            f"that time): psnr_moving / psnr_static = -10 log10 of the MSE over the moving / the other pixels (x 3 "
            f"channels, the 8-bit images of psnr), mean over views that have such pixels; error_share_moving / "
            f"error_share_border = the squared error summed over all test views on the moving pixels / on the "
            f"{MOVING_BORDER_PX}-pixel border outside them (Chebyshev distance 1-{MOVING_BORDER_PX}: silhouettes "
            f"drawn out of place), over the total; moving_fraction = mean share of moving pixels per view; per "
            f"view also its time and time_to_train, the distance to the nearest training time (scene time in "
            f"[0, 1])")
    times, train_device = timing(run_dir, time.perf_counter() - start)
    metrics["timing"] = times
    metrics["device"] = train_device or device_name(device)
    return Evaluation(metrics=_finite(metrics), views=kept, trajectories=trajectories)


def write_outputs(evaluation: Evaluation, out_dir: Path, run_dir: Path, config, scene) -> None:
    """metrics.json and report.html into ``out_dir`` (each atomically). The report, which reads the input images,
    is built first: a failure there leaves both files as they were (``page4dgs evaluate`` writes into the run)."""
    from stages.evaluate.report import build_report

    report = build_report(evaluation, run_dir, config, scene)
    write_json(out_dir / "metrics.json", evaluation.metrics)
    write_text(out_dir / "report.html", report)


def check_config(cfg: EvaluateConfig) -> None:
    """Refuse values this stage cannot run with (the runner calls it before any stage runs)."""
    problems = []
    if cfg.report_views < 0 or cfg.report_inputs < 0:
        problems.append("report_views and report_inputs must be >= 0")
    if cfg.report_image_size < 16:
        problems.append(f"report_image_size must be >= 16 pixels (got {cfg.report_image_size})")
    if not (math.isfinite(cfg.depth_max) and cfg.depth_max >= 0):
        problems.append(f"depth_max must be a number >= 0 (0 = no cap; got {cfg.depth_max:g})")
    if problems:
        raise UserError("evaluate: " + "; ".join(problems))


def run(ctx) -> dict:
    check_config(ctx.section)
    evaluation = evaluate_run(ctx.run_dir, ctx.config, ctx.scene, ctx.device)
    write_outputs(evaluation, ctx.work_dir, ctx.run_dir, ctx.config, ctx.scene)
    m = evaluation.metrics
    summary = {k: m[k] for k in IMAGE_METRICS if m.get(k) is not None}
    if m.get("moving", {}).get("psnr_moving") is not None:     # where the error lies, for sweeps to record
        summary["psnr_moving"] = m["moving"]["psnr_moving"]
    return summary


def read_training_log(run_dir: Path) -> dict[str, np.ndarray]:
    """``optimize/log.csv`` as columns of floats ({} when absent); unparsable cells become NaN."""
    path = run_dir / "optimize" / "log.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return {k: np.asarray(v) for k, v in columns.items() if k is not None}
