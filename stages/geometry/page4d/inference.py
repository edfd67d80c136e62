"""Inference: precision policy, one-pass prediction and windowed prediction of long videos joined by Sim(3).

Precision: on CUDA the aggregator runs under bfloat16 autocast with its matrix weights stored in bfloat16 (the
same rounding autocast applies on every call, without the per-call casts or the cached copies), attention through
SDPA's flash/cuDNN kernels (:mod:`stages.geometry.page4d.sdpa`); LayerNorm, LayerScale and the residual stream stay
float32. The heads run in float32 (official) or bfloat16. On the CPU everything is float32.

Long videos: windows of ``window`` frames overlapping by ``overlap`` frames. Window k predicts in its own world
(its first frame's camera, its own scale); a Sim(3) fitted (Umeyama, float64) between the depth-unprojected points
of the overlap frames in window k and the same pixels already placed in the global world maps window k into the
global world (the first window's). Each frame keeps the prediction of the window where it is most central; its
camera, by default, moves from the earlier window's estimate to the next one's across the overlap
(:func:`blend_world_to_camera`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.cameras import Sim3, camera_centres, umeyama_sim3
from pipeline.errors import UserError
from pipeline.log import progress
from stages.geometry.page4d.model import HEADS, PAGE4D
from stages.geometry.page4d.pose import mat_to_quat, pose_encoding_to_extri_intri, quat_to_mat
from stages.geometry.page4d.preprocess import PreparedFrames


def prepare_model(model: PAGE4D, device: torch.device | str, head_dtype: torch.dtype = torch.float32) -> PAGE4D:
    """Move the model to ``device`` for inference; on CUDA store the aggregator's Linear/Conv weights in bf16."""
    device = torch.device(device)
    model = model.to(device).eval()
    if device.type == "cuda":
        for module in model.aggregator.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.to(torch.bfloat16)
        model.camera_head.float()
        model.depth_head.to(head_dtype)
        model.point_head.to(head_dtype)
    return model


@dataclass
class Prediction:
    """Per-frame predictions at the network resolution (H, W), on the CPU.

    world_to_camera (S, 4, 4) float64 OpenCV; intrinsics (S, 3, 3) float64 in network pixels; depth, depth_conf
    (S, H, W) float32; world_points (S, H, W, 3) and world_points_conf (S, H, W) when the point head ran;
    mask_score (S, H/p, W/p) when computed. All in one world (the first frame's camera of the first window).
    """

    world_to_camera: np.ndarray
    intrinsics: np.ndarray
    depth: np.ndarray
    depth_conf: np.ndarray
    world_points: Optional[np.ndarray] = None
    world_points_conf: Optional[np.ndarray] = None
    mask_score: Optional[np.ndarray] = None
    windows: list[dict] = field(default_factory=list)    # start, stop, and the Sim(3) that joined each window

    def __len__(self) -> int:
        return len(self.depth)


class Predictor:
    """Runs a prepared model on batches of frames with the right precision and returns CPU numpy predictions."""

    def __init__(self, model: PAGE4D, device: torch.device | str, heads: Sequence[str] = HEADS,
                 dpt_chunk: int = 8, want_mask_score: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.heads = tuple(h for h in HEADS if h in heads or h == "camera")
        if "depth" not in self.heads:
            raise ValueError("the depth head is required")
        self.dpt_chunk = dpt_chunk
        self.want_mask_score = want_mask_score

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Prediction:
        """images: (S, 3, H, W) float in [0, 1] -> Prediction."""
        images = images.to(self.device)[None]
        autocast = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = self.model(images, heads=self.heads, want_mask_score=self.want_mask_score,
                             dpt_chunk=self.dpt_chunk)
        H, W = images.shape[-2:]
        extrinsics, intrinsics = pose_encoding_to_extri_intri(out["pose_enc"].double(), (H, W))
        w2c = torch.eye(4, dtype=torch.float64).repeat(images.shape[1], 1, 1)
        w2c[:, :3] = extrinsics[0].cpu()

        def cpu(key: str, dtype=torch.float32):
            return out[key][0].to("cpu", dtype).numpy() if key in out else None

        points = out.get("world_points")
        return Prediction(
            world_to_camera=w2c.numpy(), intrinsics=intrinsics[0].cpu().numpy(),
            depth=out["depth"][0, ..., 0].float().cpu().numpy(), depth_conf=cpu("depth_conf"),
            world_points=None if points is None else points[0].float().cpu().numpy(),
            world_points_conf=cpu("world_points_conf"), mask_score=cpu("mask_score"))


def window_starts(frames: int, window: int, overlap: int) -> list[int]:
    """First frame of each window: stride window - overlap, the last window flush with the end."""
    if frames <= window:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap ({overlap}) must be in [0, window) (window {window})")
    step = window - overlap
    starts = list(range(0, frames - window + 1, step))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return starts


def unproject(depth: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray, stride: int = 1) -> np.ndarray:
    """(H, W) z-depth -> (H/stride, W/stride, 3) world points, sampling pixel centres (u + 0.5, v + 0.5)."""
    H, W = depth.shape
    v, u = np.mgrid[0:H:stride, 0:W:stride].astype(np.float64) + 0.5
    z = depth[::stride, ::stride].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z], axis=-1)
    R, t = world_to_camera[:3, :3], world_to_camera[:3, 3]
    return (cam - t) @ R                                                 # R^T (X_c - t), row-vector form


def fit_overlap_sim3(window: Prediction, window_frames: Sequence[int], placed: Prediction,
                     placed_frames: Sequence[int], stride: int = 4) -> Sim3:
    """Sim(3) taking ``window``'s world onto ``placed``'s, from the frames both predicted.

    The scale is the median ratio of the two predictions' depths at the same pixels of the shared frames (the same
    images, so this holds whatever the cameras are); rotation and translation then come from Umeyama on those
    pixels unprojected by each prediction's cameras, with the scale fixed. A scale fitted by Umeyama as well would
    shrink by the correlation of the two point sets: with poorly predicted cameras (wide baselines) every window
    came out about 3x smaller than the last. Pixels whose depth confidence is at or above the median in both
    predictions are used.
    """
    sources, targets, ratios = [], [], []
    for a, b in zip(window_frames, placed_frames):
        src = unproject(window.depth[a], window.intrinsics[a], window.world_to_camera[a], stride)
        dst = unproject(placed.depth[b], placed.intrinsics[b], placed.world_to_camera[b], stride)
        conf_a = window.depth_conf[a][::stride, ::stride]
        conf_b = placed.depth_conf[b][::stride, ::stride]
        depth_a = window.depth[a][::stride, ::stride].astype(np.float64)
        depth_b = placed.depth[b][::stride, ::stride].astype(np.float64)
        keep = (conf_a >= np.median(conf_a)) & (conf_b >= np.median(conf_b)) & (depth_a > 0) & (depth_b > 0)
        keep &= np.isfinite(src).all(-1) & np.isfinite(dst).all(-1)
        sources.append(src[keep])
        targets.append(dst[keep])
        ratios.append(depth_b[keep] / depth_a[keep])
    ratio = np.concatenate(ratios)
    if len(ratio) < 3:
        raise UserError(f"geometry: consecutive windows share {len(window_frames)} frame(s) with fewer than 3 "
                        f"confident pixels of valid depth, too few to join them; raise geometry.overlap")
    scale = float(np.median(ratio))
    rigid = umeyama_sim3(scale * np.concatenate(sources), np.concatenate(targets), with_scale=False)
    return Sim3(scale, rigid.rotation, rigid.translation)


def transform_prediction(pred: Prediction, sim: Sim3) -> Prediction:
    """The same prediction expressed in the world x' = s R x + t (depth scales by s)."""
    return Prediction(
        world_to_camera=np.stack([sim.transform_w2c(w) for w in pred.world_to_camera]),
        intrinsics=pred.intrinsics, depth=pred.depth * np.float32(sim.scale), depth_conf=pred.depth_conf,
        world_points=None if pred.world_points is None else _apply_float32(sim, pred.world_points),
        world_points_conf=pred.world_points_conf, mask_score=pred.mask_score)


def _apply_float32(sim: Sim3, points: np.ndarray) -> np.ndarray:
    """sim applied to (..., 3) float32 points without a float64 copy of a large array."""
    linear = (sim.scale * sim.rotation).T.astype(np.float32)
    return points @ linear + sim.translation.astype(np.float32)


def blend_world_to_camera(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """The pose ``weight`` of the way from ``first`` to ``second`` (both (4, 4) world-to-camera): the camera's
    orientation by quaternion slerp, its centre linearly. weight 0 -> first, 1 -> second."""
    rotations = torch.from_numpy(np.stack([first[:3, :3], second[:3, :3]]).astype(np.float64))
    qa, qb = mat_to_quat(rotations).unbind(0)                                        # (4,) each
    dot = float(torch.dot(qa, qb))
    if dot < 0:                                                                      # the shorter way round
        qb, dot = -qb, -dot
    angle = math.acos(min(dot, 1.0))
    if angle < 1e-8:
        q = qa
    else:
        q = (math.sin((1 - weight) * angle) * qa + math.sin(weight * angle) * qb) / math.sin(angle)
    rotation = quat_to_mat(q / q.norm()).numpy()
    centre = (1 - weight) * camera_centres(first[None])[0] + weight * camera_centres(second[None])[0]
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = -rotation @ centre
    return out.astype(first.dtype)


def predict_sequence(predictor: Predictor, frames: PreparedFrames, window: int, overlap: int,
                     show_progress: bool = True, blend_cameras: bool = True) -> Prediction:
    """Predict every frame; longer sequences than ``window`` go through overlapping windows joined by Sim(3).

    Each frame's depth, confidence, points and mask come from the window where it lies most centrally. Its camera
    too when ``blend_cameras`` is off; on, the frames that a window shares with the ones before it take a camera
    that moves from the earlier windows' estimate to this window's across the shared frames (weights 1/(n+1) ..
    n/(n+1)), so that where two windows disagree the trajectory turns gradually instead of jumping at one frame."""
    S = len(frames)
    starts = window_starts(S, window, overlap)
    result: Optional[Prediction] = None
    centrality = np.full(S, -1)
    windows = []
    iterator = progress(starts, desc="geometry windows", unit="window") if show_progress and len(starts) > 1 \
        else starts
    for start in iterator:
        stop = min(S, start + window)
        begin = time.perf_counter()
        pred = predictor(frames.batch(slice(start, stop), predictor.device))
        info = {"start": start, "stop": stop, "seconds": round(time.perf_counter() - begin, 3)}
        shared = [i for i in range(start, stop) if centrality[i] >= 0]      # placed by earlier windows
        if result is None:
            result = _allocate(pred, S)
            sim = Sim3(1.0, np.eye(3), np.zeros(3))
        else:
            sim = fit_overlap_sim3(pred, [i - start for i in shared], result, shared)
            pred = transform_prediction(pred, sim)
        info["sim3"] = {"scale": sim.scale, "rotation": sim.rotation.tolist(), "translation": sim.translation.tolist()}
        windows.append(info)
        earlier = {i: result.world_to_camera[i].copy() for i in shared}       # before this window replaces any
        for i in range(start, stop):
            c = min(i - start, stop - 1 - i)
            if c > centrality[i]:
                centrality[i] = c
                _assign(result, i, pred, i - start)
        if blend_cameras:
            for k, i in enumerate(shared):
                result.world_to_camera[i] = blend_world_to_camera(earlier[i], pred.world_to_camera[i - start],
                                                                  (k + 1) / (len(shared) + 1))
    result.windows = windows
    return result


_FIELDS = ("world_to_camera", "intrinsics", "depth", "depth_conf", "world_points", "world_points_conf", "mask_score")


def _allocate(pred: Prediction, frames: int) -> Prediction:
    arrays = {}
    for name in _FIELDS:
        value = getattr(pred, name)
        arrays[name] = None if value is None else np.empty((frames,) + value.shape[1:], dtype=value.dtype)
    return Prediction(**arrays)


def _assign(result: Prediction, index: int, pred: Prediction, local: int) -> None:
    for name in _FIELDS:
        target = getattr(result, name)
        if target is not None:
            target[index] = getattr(pred, name)[local]
