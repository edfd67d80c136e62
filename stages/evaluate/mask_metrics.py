"""Dynamic-mask agreement: intersection over union pooled over the frames of a sequence."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mask_iou(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    """sum_frames |P & G| / sum_frames |P | G| of (H, W) boolean masks (True = moving).

    Pooling over frames (rather than averaging per-frame IoUs) keeps frames without motion, whose IoU is undefined,
    from dominating. NaN when no frame has a moving pixel in either mask."""
    intersection = union = 0
    for pred, gt in zip(predictions, targets, strict=True):
        p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
        if p.shape != g.shape:
            raise ValueError(f"mask shapes differ: {p.shape} vs {g.shape}")
        intersection += int(np.count_nonzero(p & g))
        union += int(np.count_nonzero(p | g))
    return intersection / union if union else float("nan")
