"""The geometry stage: cameras, depth, confidence, dynamic masks and a fused point cloud for every scene frame.

Flow (``docs/geometry.md``): frames (scene order, train and test) -> preprocessing -> PAGE-4D (windowed for long
scenes) -> with model cameras, their photometric refinement (``stages/geometry/photometric.py``) -> dynamic masks
from cross-frame consistency at the network resolution -> per frame: intrinsics mapped to
the stored resolution, depth/confidence/mask resampled to it, points unprojected -> optional Sim(3) into the
dataset's world -> artifacts. ``model: oracle`` takes all of it from the scene's ground truth instead.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch

from pipeline.cameras import Sim3, align_cameras_sim3
from pipeline.errors import UserError
from pipeline.io import atomic_path, write_json, write_npy, write_png
from pipeline.log import get_logger, progress
from pipeline.scene import Scene
from stages.geometry.config import GeometryConfig
from stages.geometry.consistency import ConsistencyParams, consistency_scale, dynamic_masks

if TYPE_CHECKING:
    from stages.geometry.photometric import RefinedCameras

log = get_logger("geometry")


@dataclass
class FrameGeometry:
    """One frame at its stored resolution: K (3, 3), world_to_camera (4, 4), depth/confidence (H, W) float32,
    dynamic (H, W) bool."""

    K: np.ndarray
    world_to_camera: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray
    dynamic: np.ndarray
    point_map: Optional[np.ndarray] = None       # (h, w, 3) network resolution, when requested
    point_conf: Optional[np.ndarray] = None


@dataclass
class GeometrySource:
    """Produces every frame's geometry on demand (so a long scene never holds all stored-resolution maps)."""

    frames: int
    get: Callable[[int], FrameGeometry]
    summary: dict = field(default_factory=dict)
    world_to_camera: Optional[np.ndarray] = None  # (S, 4, 4) all frames' cameras, where known up front
    alignment: Optional[Sim3] = None             # network world -> dataset world, with dataset cameras


def run(ctx) -> dict:
    cfg: GeometryConfig = ctx.section
    check_config(cfg)
    scene: Scene = ctx.scene
    start = time.perf_counter()
    camera_source = resolve_camera_source(cfg, scene)
    if cfg.model == "oracle":
        source = oracle_geometry(scene)
    else:
        dataset = None
        if camera_source == "dataset":
            dataset = (np.stack([f.camera.world_to_camera for f in scene.frames]),
                       np.stack([f.camera.K for f in scene.frames]))
        source = network_geometry(scene, cfg, ctx.device, dataset)
        if source.alignment is not None:
            record = source.summary["dataset_alignment"]
            log.info(f"network depth to the dataset cameras' units: x {record['scale']:.4g} ({record['method']})")
    summary = write_artifacts(ctx, scene, cfg, source, camera_source, source.alignment)
    summary["seconds_total"] = round(time.perf_counter() - start, 3)
    write_json(ctx.out("geometry/geometry.json"), {**source.summary, **summary})
    return {"model": cfg.model, "frames": source.frames, "cameras": camera_source,
            "dynamic_fraction": summary["dynamic_fraction"], "points": summary["points"]}


def consistency_params(cfg: GeometryConfig) -> ConsistencyParams:
    """The dynamic-mask rule of the ``geometry`` config section."""
    return ConsistencyParams(neighbours=cfg.consistency_neighbours, gap=cfg.consistency_gap,
                             threshold=cfg.consistency_threshold, vote_fraction=cfg.consistency_vote,
                             min_confidence_quantile=cfg.consistency_min_confidence,
                             head_weight=cfg.mask_head_weight, source=cfg.mask_source,
                             photometric_weight=cfg.mask_photometric_weight,
                             colour_threshold=cfg.mask_colour_threshold)


def check_config(cfg: GeometryConfig) -> None:
    """Refuse values this stage cannot run with (the runner calls it before any stage runs)."""
    problems = []
    if cfg.input_width < 0 or cfg.input_width % 14:
        problems.append(f"input_width must be 0 or a positive multiple of the patch size 14 (got {cfg.input_width})")
    if min(cfg.window, cfg.overlap, cfg.dpt_chunk) < 0:
        problems.append("window, overlap and dpt_chunk must be >= 0")
    elif cfg.window and cfg.overlap and cfg.overlap >= cfg.window:
        problems.append(f"overlap ({cfg.overlap}) must be smaller than window ({cfg.window})")
    if not 0.0 <= cfg.fusion_percentile <= 100.0:
        problems.append(f"fusion_percentile must be in [0, 100] (got {cfg.fusion_percentile:g})")
    if cfg.refine_iterations < 1:
        problems.append(f"refine_iterations must be >= 1 (got {cfg.refine_iterations})")
    if cfg.max_points < 1:
        problems.append("max_points must be >= 1")
    if cfg.consistency_neighbours < 0 or cfg.consistency_gap < 1:
        problems.append("consistency_neighbours must be >= 0 and consistency_gap >= 1")
    if not cfg.consistency_threshold > 0:
        problems.append("consistency_threshold must be > 0")
    if not 0.0 <= cfg.fov_x_deg < 180.0:
        problems.append(f"fov_x_deg must be in [0, 180) (0 = predicted; got {cfg.fov_x_deg:g})")
    for name in ("consistency_vote", "consistency_min_confidence", "mask_head_weight", "mask_colour_threshold"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"{name} must be in [0, 1] (got {getattr(cfg, name):g})")
    if not cfg.mask_photometric_weight >= 0.0:
        problems.append(f"mask_photometric_weight must be >= 0 (got {cfg.mask_photometric_weight:g})")
    if problems:
        raise UserError("geometry: " + "; ".join(problems))


DIGEST_LIMIT_BYTES = 256 * 2**20     # larger weights files are identified by size and modification time


def external_inputs(config) -> dict:
    """What the stage reads besides the scene and its config, for the runner's input hash: the network's weights
    file with its SHA-256 (size and modification time above 256 MiB, e.g. the official 1B checkpoints), so that
    replacing the file (retrained bundled weights, a new file at the same ``geometry.checkpoint`` path) reruns
    the stage. A checkpoint alias (a Hugging Face file of a fixed revision) is named only; a missing file is
    named as configured (the stage itself reports it)."""
    from pipeline.io import sha256_file
    from stages.geometry.page4d.checkpoint import ALIASES, DEFAULT_CHECKPOINT, resolve_checkpoint

    cfg: GeometryConfig = config.geometry
    if cfg.model == "oracle":
        return {}
    alias = cfg.checkpoint or DEFAULT_CHECKPOINT.get(cfg.model, "")
    if alias in ALIASES:
        return {"checkpoint": alias}
    try:
        path = resolve_checkpoint(cfg.checkpoint, cfg.model, allow_download=False)
    except UserError:
        return {"checkpoint": cfg.checkpoint or f"bundled {cfg.model}", "missing": True}
    size = path.stat().st_size
    identity = ({"sha256": sha256_file(path)} if size <= DIGEST_LIMIT_BYTES
                else {"mtime_ns": path.stat().st_mtime_ns})
    return {"checkpoint": str(path.resolve()), "bytes": size, **identity}


def resolve_camera_source(cfg: GeometryConfig, scene: Scene) -> str:
    if cfg.model == "oracle":
        return "dataset"
    if cfg.cameras == "dataset" and not scene.has_cameras:
        raise UserError("geometry.cameras=dataset but the scene has no cameras (use cameras=model or auto)",
                        scene.source)
    if cfg.cameras == "auto":
        return "dataset" if scene.has_cameras else "model"
    return cfg.cameras


# ----------------------------------------------------------------------------------------------------------------
# Sources


def oracle_geometry(scene: Scene) -> GeometrySource:
    """Ground-truth depth, cameras and dynamic masks of a synthetic scene; confidence 1 (0 where depth is invalid)."""
    lacking = [what for what, ok in (("cameras", scene.has_cameras), ("depth", scene.has_depth),
                                     ("dynamic masks", scene.has_dynamic_masks)) if not ok]
    if lacking:
        raise UserError(f"geometry.model=oracle needs ground-truth {', '.join(lacking)} for every frame, which this "
                        f"scene lacks (synthetic scenes have them)", scene.source)

    def get(index: int) -> FrameGeometry:
        frame = scene.frames[index]
        depth = np.asarray(frame.load_depth(), dtype=np.float32)
        dynamic = np.asarray(frame.load_dynamic_mask(), dtype=bool)
        if depth.shape != (frame.height, frame.width) or dynamic.shape != depth.shape:
            raise UserError(f"ground truth of frame '{frame.name}' is {depth.shape}/{dynamic.shape}, expected "
                            f"{(frame.height, frame.width)}", scene.source)
        valid = np.isfinite(depth) & (depth > 0)
        return FrameGeometry(frame.camera.K, frame.camera.world_to_camera, np.where(valid, depth, 0.0),
                             valid.astype(np.float32), dynamic)

    return GeometrySource(len(scene.frames), get, {"model": "oracle"})


def network_geometry(scene: Scene, cfg: GeometryConfig, device: str,
                     dataset: Optional[tuple[np.ndarray, np.ndarray]] = None) -> GeometrySource:
    """Run PAGE-4D over all frames; masks from consistency (+ a supervised mask head).

    dataset: the scene's cameras (world_to_camera (S, 4, 4), K (S, 3, 3) in stored pixels) when they are used: the
    network's world is then aligned to theirs (:func:`align_to_dataset`) and the masks' consistency check runs
    under them, with the depth in their units.
    """
    from stages.geometry.page4d import sdpa
    from stages.geometry.page4d.checkpoint import load_model
    from stages.geometry.page4d.inference import Predictor, predict_sequence, prepare_model
    from stages.geometry.page4d.preprocess import prepare_frames, to_uint8

    timings = {}
    t = time.perf_counter()
    model, info = load_model(cfg.model, cfg.checkpoint, cfg.mask, "cpu", cfg.allow_download)
    head_dtype = torch.bfloat16 if cfg.head_precision == "bfloat16" else torch.float32
    model = prepare_model(model, device, head_dtype)
    sdpa.set_policy(cfg.attention)
    timings["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    width = cfg.input_width or model.config.input_width
    if width % model.config.patch_size:
        raise UserError(f"geometry.input_width={width} is not a multiple of the patch size {model.config.patch_size}")
    images = [to_uint8(scene.rgb(f)) for f in progress(scene.frames, desc="geometry: reading frames", unit="frame")]
    prepared = prepare_frames(images, cfg.preprocessing, width, model.config.patch_size)
    del images
    timings["preprocess_s"] = time.perf_counter() - t

    t = time.perf_counter()
    heads = ("camera", "depth", "point") if cfg.point_maps else ("camera", "depth")
    predictor = Predictor(model, device, heads, cfg.dpt_chunk, want_mask_score=info.mask_supervised)
    window = cfg.window or model.config.window
    overlap = (cfg.overlap or max(2, window // 5)) if window < len(scene.frames) else 0
    if window and window < len(scene.frames) and not 0 <= overlap < window:
        raise UserError(f"geometry.window={window} needs an overlap in [0, window) between windows "
                        f"(geometry.overlap={overlap}); use a window of 3 frames or more")
    pred = predict_sequence(predictor, prepared, window, overlap, blend_cameras=cfg.blend_window_cameras)
    predicted_fx = [float(m.intrinsics_to_stored(K)[0, 0]) for m, K in zip(prepared.mappings, pred.intrinsics)]
    if cfg.fov_x_deg > 0:
        pred = dataclasses.replace(pred, intrinsics=focal_from_field_of_view(pred.intrinsics, prepared.mappings,
                                                                             cfg.fov_x_deg))
    elif cfg.shared_focal and len(set(prepared.mappings)) == 1:
        pred = dataclasses.replace(pred, intrinsics=shared_focal_length(pred.intrinsics))
    if device == "cuda":
        torch.cuda.synchronize()
    timings["inference_s"] = time.perf_counter() - t

    t = time.perf_counter()
    params = consistency_params(cfg)
    head_probability = None
    if info.mask_supervised and pred.mask_score is not None:
        h, w = pred.depth.shape[1:]
        score = torch.from_numpy(pred.mask_score)[:, None] + 0.5                      # (S, 1, h/p, w/p)
        head_probability = torch.nn.functional.interpolate(score, size=(h, w), mode="bilinear",
                                                           align_corners=False)[:, 0].numpy()
    refinement_record = None
    if dataset is None and cfg.refine_cameras and len(pred) > 1:
        begin = time.perf_counter()
        refined = refine_predicted_cameras(pred, prepared, head_probability, cfg, device)
        refinement_record = refined.record
        intrinsics = np.array(pred.intrinsics, copy=True)                   # network pixels
        intrinsics[:, 0, 0] *= refined.record["focal_scale"]
        intrinsics[:, 1, 1] *= refined.record["focal_scale"]
        pred = dataclasses.replace(pred, world_to_camera=refined.world_to_camera, intrinsics=intrinsics)
        timings["camera_refinement_s"] = time.perf_counter() - begin
        t += timings["camera_refinement_s"]                                 # masks_s: the masks alone
        log_refinement(refinement_record)
    alignment, alignment_record = None, None
    mask_depth, mask_K, mask_w2c = pred.depth, pred.intrinsics, pred.world_to_camera
    if dataset is not None:
        begin = time.perf_counter()
        dataset_w2c = dataset[0]
        dataset_K = np.stack([m.intrinsics_to_network(K) for m, K in zip(prepared.mappings, dataset[1])])
        shown = np.stack([m.network_coverage() for m in prepared.mappings])           # (S, h, w): not padding
        alignment, alignment_record = align_to_dataset(np.where(shown, pred.depth, 0.0), pred.depth_conf,
                                                       pred.world_to_camera, dataset_K, dataset_w2c, device)
        mask_depth, mask_K, mask_w2c = pred.depth * np.float32(alignment.scale), dataset_K, dataset_w2c
        timings["dataset_alignment_s"] = time.perf_counter() - begin
        t += timings["dataset_alignment_s"]                                 # masks_s: the masks alone
    if params.photometric_weight > 0 and not (dataset is None and (refinement_record or {}).get("kept")):
        # measured to help with refined model cameras only: under the network's own cameras colours disagree
        # everywhere, and under a dataset's the network's depth errors do on the movers' outlines (docs/geometry.md)
        params = dataclasses.replace(params, photometric_weight=0.0)
        log.info("dynamic masks: no photometric votes (they need refined model cameras)")
    colours = prepared.batch(slice(None), device) if params.photometric_weight > 0 else None   # (S, 3, h, w)
    masks = dynamic_masks(mask_depth, mask_K, mask_w2c, params, pred.depth_conf,
                          head_probability, device, colours)                            # (S, h, w) bool
    timings["masks_s"] = time.perf_counter() - t

    def get(index: int) -> FrameGeometry:
        mapping = prepared.mappings[index]
        maps = torch.from_numpy(np.stack([pred.depth[index], pred.depth_conf[index]]))
        depth, conf = mapping.to_stored(maps).numpy()
        conf = np.where(mapping.stored_coverage(), conf, 0.0).astype(np.float32)
        dynamic = mapping.to_stored(torch.from_numpy(masks[index][None].astype(np.float32)), "nearest")[0] > 0.5
        return FrameGeometry(mapping.intrinsics_to_stored(pred.intrinsics[index]), pred.world_to_camera[index],
                             depth.astype(np.float32), conf, dynamic.numpy(),
                             None if pred.world_points is None else pred.world_points[index],
                             None if pred.world_points_conf is None else pred.world_points_conf[index])

    summary = {
        "model": model.config.name, "model_requested": cfg.model, "checkpoint": info.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device, "preprocessing": cfg.preprocessing, "network_size": list(prepared.net_size),
        "attention_kernels": sdpa.chosen_kernels(), "head_precision": cfg.head_precision,
        "windows": pred.windows, "timings": {k: round(v, 3) for k, v in timings.items()},
        # the network's per-frame focal lengths (stored pixels) before shared_focal / fov_x_deg
        "predicted_fx_px": {"min": min(predicted_fx), "median": float(np.median(predicted_fx)),
                            "max": max(predicted_fx)},
    }
    if alignment_record is not None:
        summary["dataset_alignment"] = alignment_record
    if refinement_record is not None:
        summary["camera_refinement"] = refinement_record
    summary["mask_photometric_weight"] = params.photometric_weight          # 0: no photometric votes
    return GeometrySource(len(scene.frames), get, summary, pred.world_to_camera, alignment)


def refine_predicted_cameras(pred, prepared, head_probability: Optional[np.ndarray], cfg: GeometryConfig,
                             device: str) -> RefinedCameras:
    """The network's cameras corrected by direct photometric alignment (:mod:`stages.geometry.photometric`) at the
    network resolution. Source pixels: confidence at or above the frame's 30th percentile, not padding, and, where
    the checkpoint's mask head is supervised, probability of moving below one half (the robust cost handles the
    movers the head misses; the dynamic masks are computed afterwards, under the refined cameras). A source pixel
    that lands on another frame's padding ('pad' preprocessing) is scored as image content there (a limitation)."""
    from stages.geometry.photometric import PhotometricParams, refine_cameras

    confidence = torch.from_numpy(pred.depth_conf)
    covered = torch.from_numpy(np.stack([m.network_coverage() for m in prepared.mappings]))   # (S, h, w): not padding
    floor = torch.nanquantile(torch.where(covered, confidence, torch.nan).flatten(1), 0.3, dim=1)[:, None, None]
    allowed = (confidence >= floor) & covered
    if head_probability is not None:
        allowed &= torch.from_numpy(head_probability) < 0.5
    params = PhotometricParams(iterations=cfg.refine_iterations, joint_iterations=cfg.refine_iterations,
                               focal=cfg.refine_focal)
    images = prepared.batch(slice(None), device)                                    # (S, 3, h, w) in [0, 1]
    return refine_cameras(images, torch.from_numpy(pred.depth).to(device), allowed.float().to(device),
                          torch.from_numpy(pred.intrinsics).float().to(device), pred.world_to_camera, params)


def log_refinement(record: dict) -> None:
    """One log line on what the camera refinement did (skipped, kept the network's cameras, or refined them)."""
    if "reason" in record:
        log.warning(f"camera refinement skipped: {record['reason']}")
    elif not record["kept"]:
        log.info(f"camera refinement found no better cameras (cost {record['cost_before']:.4f}): the network's "
                 "are kept")
    else:
        change = record["rotation_change_deg"]
        log.info(f"cameras refined photometrically: cost {record['cost_before']:.4f} -> {record['cost_after']:.4f}, "
                 f"rotations changed by {change['mean']:.2f} deg on average, {change['max']:.2f} at most")


def shared_focal_length(intrinsics: np.ndarray) -> np.ndarray:
    """(S, 3, 3) -> (S, 3, 3): every frame takes the median fx and the median fy over the frames; principal points
    and everything else are kept. The median, not the mean: a few misjudged frames do not move it."""
    shared = np.array(intrinsics, dtype=np.float64, copy=True)
    shared[:, 0, 0] = np.median(shared[:, 0, 0])
    shared[:, 1, 1] = np.median(shared[:, 1, 1])
    return shared


def focal_from_field_of_view(intrinsics: np.ndarray, mappings: list, fov_x_deg: float) -> np.ndarray:
    """(S, 3, 3) network-pixel intrinsics with every frame's focal length set from a known horizontal field of view of
    its stored frame (square stored pixels: fx = fy = width / (2 tan(fov / 2)) there), principal points kept.
    mappings: each frame's :class:`~stages.geometry.page4d.preprocess.FrameMapping`."""
    known = np.array(intrinsics, dtype=np.float64, copy=True)
    for K, mapping in zip(known, mappings):
        focal = mapping.stored_size[0] / (2.0 * np.tan(np.radians(fov_x_deg) / 2.0))   # stored pixels
        K[0, 0], K[1, 1] = focal / mapping.scale_x, focal / mapping.scale_y
    return known


def align_to_dataset(depth: np.ndarray, confidence: np.ndarray, predicted_w2c: np.ndarray, dataset_K: np.ndarray,
                     dataset_w2c: np.ndarray, device: str = "cpu") -> tuple[Sim3, dict]:
    """The Sim(3) from the network's world to the dataset cameras' world, and a record of how it was found.

    depth, confidence (S, h, w) network resolution; predicted_w2c (S, 4, 4); dataset_K (S, 3, 3) in network pixels;
    dataset_w2c (S, 4, 4). Rotation (and a first scale) from the cameras (:func:`align_cameras_sim3`). The scale
    is then the one under which the depth maps agree across frames seen through the dataset cameras
    (:func:`consistency_scale`), where that is well posed (wide baselines: object captures); a camera that barely
    moves keeps the cameras' scale. The translation matches the camera centres for the chosen scale.
    """
    cameras = align_cameras_sim3(predicted_w2c, dataset_w2c)
    to = torch.device(device)
    fit = consistency_scale(torch.from_numpy(np.asarray(depth)).to(to), torch.from_numpy(dataset_K).to(to),
                            torch.from_numpy(np.asarray(dataset_w2c, dtype=np.float64)).to(to), cameras.scale,
                            torch.from_numpy(np.asarray(confidence)).to(to))
    scale = fit.scale if fit.well_posed else cameras.scale
    alignment = align_cameras_sim3(predicted_w2c, dataset_w2c, scale=scale) if fit.well_posed else cameras
    record = {"scale": scale,
              "method": ("depth agreement across frames under the dataset cameras" if fit.well_posed else
                         "camera centres (depth agreement not well posed: small baselines)"),
              "camera_scale": cameras.scale, "agreement_scale": fit.scale,
              "agreement": round(fit.score, 4), "agreement_at_range_ends": round(fit.edge_score, 4)}
    return alignment, record


# ----------------------------------------------------------------------------------------------------------------
# Writing


def camera_entry(frame, K: np.ndarray, world_to_camera: np.ndarray) -> dict:
    return {"name": frame.name, "index": frame.index, "time": frame.time, "time_index": frame.time_index,
            "split": frame.split, "width": frame.width, "height": frame.height,
            "K": np.asarray(K).tolist(), "world_to_camera": np.asarray(world_to_camera).tolist()}


def unproject_stored(depth: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    """(H, W) z-depth -> (H, W, 3) world points through the pixel centres (u + 0.5, v + 0.5)."""
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    z = depth.astype(np.float64)
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    return (cam - world_to_camera[:3, 3]) @ world_to_camera[:3, :3]


def write_ply(path, points: np.ndarray, colours: np.ndarray) -> None:
    """Binary PLY with x y z (float32) and red green blue (uchar)."""
    from plyfile import PlyData, PlyElement

    vertex = np.empty(len(points), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k, axis in enumerate("xyz"):
        vertex[axis] = points[:, k]
    for k, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = colours[:, k]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(tmp))


def surface_pixels(alpha: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """(H, W) bool at the stored ``shape``: where a frame's alpha (RGBA inputs) is at least one half, the pixels that
    show a surface, as the initialize stage keeps them; None without alpha."""
    from pipeline.scene.images import resize_array

    return None if alpha is None else resize_array(alpha, (shape[1], shape[0])) >= 0.5


def write_artifacts(ctx, scene: Scene, cfg: GeometryConfig, source: GeometrySource, camera_source: str,
                    align: Optional[Sim3]) -> dict:
    rng = np.random.default_rng(ctx.config.seed)
    per_frame = max(1, cfg.max_points // max(1, source.frames))
    cameras, predicted = [], []
    points, colours = [], []
    dynamic_pixels = total_pixels = 0
    for index in progress(range(source.frames), desc="geometry: writing", unit="frame"):
        frame = scene.frames[index]
        geo = source.get(index)
        depth, world_to_camera = geo.depth, geo.world_to_camera
        # RGBA inputs: where the dataset's alpha is below one half there is no surface, so nothing there moves and
        # nothing there joins the fused cloud (the network still predicts a depth for the empty background).
        image, alpha = scene.rgb_alpha(frame)
        covered = surface_pixels(alpha, depth.shape)
        dynamic = geo.dynamic if covered is None else geo.dynamic & covered
        if align is not None:
            predicted_w2c = align.transform_w2c(world_to_camera)
            predicted.append(camera_entry(frame, geo.K, predicted_w2c))
            cameras.append(camera_entry(frame, frame.camera.K, frame.camera.world_to_camera))
            depth = depth * np.float32(align.scale)
            # The fused cloud lies on the rays of cameras.json (what export pairs it with, and what the optimization
            # uses): the scaled depth through the dataset camera, not the network's camera moved by the Sim(3).
            world_points = unproject_stored(depth, frame.camera.K, frame.camera.world_to_camera)
        else:
            world_points = unproject_stored(depth, geo.K, world_to_camera)
            entry = camera_entry(frame, geo.K, world_to_camera)
            cameras.append(entry)
            predicted.append(entry)
        write_npy(ctx.out(f"geometry/depth/{frame.name}.npy"), depth.astype(np.float32))
        write_npy(ctx.out(f"geometry/confidence/{frame.name}.npy"), geo.confidence.astype(np.float32))
        write_png(ctx.out(f"geometry/dynamic_mask/{frame.name}.png"), dynamic.astype(np.uint8) * 255)
        if geo.point_map is not None:
            point_map = geo.point_map if align is None else align.apply(geo.point_map)
            write_npy(ctx.out(f"geometry/point_maps/{frame.name}.npy"), point_map.astype(np.float16))
            write_npy(ctx.out(f"geometry/point_conf/{frame.name}.npy"), geo.point_conf.astype(np.float16))
        dynamic_pixels += int(dynamic.sum())
        total_pixels += dynamic.size
        # Fusion: confident, valid pixels (with a surface); an even random share per frame.
        valid = (geo.depth > 0) & np.isfinite(geo.depth) & (geo.confidence > 0)
        if covered is not None:
            valid &= covered
        if cfg.fusion_percentile > 0 and valid.any():
            valid &= geo.confidence >= np.percentile(geo.confidence[valid], cfg.fusion_percentile)
        index_valid = np.flatnonzero(valid)
        if len(index_valid) > per_frame:
            index_valid = rng.choice(index_valid, per_frame, replace=False)
        points.append(world_points.reshape(-1, 3)[index_valid].astype(np.float32))
        colours.append(np.clip(np.round(image.reshape(-1, 3)[index_valid] * 255), 0, 255).astype(np.uint8))
    cloud = np.concatenate(points) if points else np.zeros((0, 3), np.float32)
    write_ply(ctx.out("geometry/points.ply"), cloud, np.concatenate(colours) if colours else np.zeros((0, 3)))
    write_json(ctx.out("geometry/cameras.json"), {"convention": "opencv", "source": camera_source, "frames": cameras})
    write_json(ctx.out("geometry/predicted_cameras.json"),
               {"convention": "opencv", "source": camera_source, "frames": predicted})
    summary = {"frames": source.frames, "cameras": camera_source, "points": int(len(cloud)),
               "dynamic_fraction": dynamic_pixels / max(1, total_pixels)}
    if align is not None:
        summary["alignment_sim3"] = {"scale": align.scale, "rotation": align.rotation.tolist(),
                                     "translation": align.translation.tolist()}
    return summary
