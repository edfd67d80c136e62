"""Video-depth metrics with one scale per sequence (MonST3R / CUT3R / PAGE-4D protocol).

``../shared/spec/metrics-and-data.md`` §7: predictions are resized to the ground-truth size (bicubic), valid pixels
are 0 < d_gt (< max_depth when given) with a finite prediction, **one** scale is fitted over all valid pixels of the
sequence, then Abs Rel = mean |s d^ - d| / d and delta < 1.25 = mean(max(s d^ / d, d / (s d^)) < 1.25) over those
pixels. The aligned prediction is clamped at 1e-5 (as the log-RMSE of the reference code does), so a non-positive
prediction counts as a large error rather than a division by zero.

Scale fits:
* ``scale`` (PAGE-4D / CUT3R default): IRLS (Weiszfeld) iterations toward the L1-optimal scale from
  s0 = mean(d) / mean(d^), weights 1 / (|s d^ - d| + 1e-8), s = sum(w d^ d) / sum(w d^^2), clamped >= 1e-3; the
  reference code stops after 10 iterations (not always converged), and so do we;
* ``median`` (MonST3R default): s = median(d) / median(d^).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

ALIGNMENTS = ("scale", "median")
MIN_DEPTH = 1e-5


def resize_bicubic(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) -> (height, width), bicubic (a = -0.75, half-pixel centres, like cv2.INTER_CUBIC)."""
    if depth.shape == (height, width):
        return depth
    t = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float64))[None, None]  # [1, 1, h, w]
    return F.interpolate(t, size=(height, width), mode="bicubic", align_corners=False)[0, 0].numpy()


def fit_scale(prediction: np.ndarray, target: np.ndarray, method: str = "scale", iterations: int = 10) -> float:
    """One scale s mapping ``prediction`` onto ``target`` (1-D arrays of valid pixels)."""
    d_hat = np.asarray(prediction, dtype=np.float64)
    d = np.asarray(target, dtype=np.float64)
    if method == "median":
        return float(np.median(d) / np.median(d_hat))
    if method != "scale":
        raise ValueError(f"unknown depth alignment '{method}' (choose from {', '.join(ALIGNMENTS)})")
    s = float(d.mean() / d_hat.mean())
    for _ in range(iterations):
        w = 1.0 / (np.abs(s * d_hat - d) + 1e-8)
        s = max(float(np.sum(w * d_hat * d) / np.sum(w * d_hat**2)), 1e-3)
    return s


def depth_errors(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray], method: str = "scale",
                 max_depth: float = 0.0) -> dict:
    """Abs Rel and delta < 1.25 of one sequence (lists of (H, W) z-depth maps; target 0 = invalid).

    Returns {"abs_rel", "delta_1.25", "scale", "valid_pixels"}; NaNs when no pixel is valid."""
    pred_values, gt_values = [], []
    for pred, gt in zip(predictions, targets, strict=True):
        gt = np.asarray(gt, dtype=np.float64)
        pred = resize_bicubic(np.asarray(pred, dtype=np.float64), *gt.shape)
        valid = (gt > 0) & np.isfinite(gt) & np.isfinite(pred)
        if max_depth > 0:
            valid &= gt < max_depth
        pred_values.append(pred[valid])
        gt_values.append(gt[valid])
    d_hat = np.concatenate(pred_values) if pred_values else np.zeros(0)
    d = np.concatenate(gt_values) if gt_values else np.zeros(0)
    if d.size == 0:
        return {"abs_rel": float("nan"), "delta_1.25": float("nan"), "scale": float("nan"), "valid_pixels": 0}
    scale = fit_scale(d_hat, d, method)
    aligned = np.maximum(scale * d_hat, MIN_DEPTH)
    ratio = np.maximum(aligned / d, d / aligned)
    return {"abs_rel": float(np.mean(np.abs(aligned - d) / d)), "delta_1.25": float(np.mean(ratio < 1.25)),
            "scale": scale, "valid_pixels": int(d.size)}
