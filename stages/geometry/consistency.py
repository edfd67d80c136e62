"""Dynamic masks from cross-frame geometric consistency of depth and cameras (optionally fused with a mask head).

A static surface point that frame i sees at depth z must not be *seen through* from another frame j: projected
into j (at depth z_j), j's observed depth there must not lie clearly behind it. A moving object breaks this: where
it was at time i, frame j sees what is behind it. So pixel p of frame i votes "moving" in neighbour j when

    d_j(project_j(p)) - z_j > threshold * z_j        (free-space violation, relative to depth)

with d_j eroded (3x3 minimum) so that depth edges never vote. Occlusions (something *in front* in j) are not
violations, which keeps static pixels near occluding edges static. A pixel is moving when more than
``vote_fraction`` of its valid neighbours, and at least ``min_violations`` of them, vote so. Neighbours are frames at offsets +-gap, +-2 gap, +-4 gap, ...
(doubling, nearest first, inside the sequence).

The PAGE-4D mask head is unsupervised in the released checkpoints, so its score is not a dynamic cue by itself;
where a checkpoint records that its head was trained with mask supervision, its probability (score + 0.5) is
blended with the geometric vote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class ConsistencyParams:
    neighbours: int = 8            # frames each frame is checked against
    gap: int = 2                   # nearest neighbour offset; further ones double it (+-gap, +-2 gap, +-4 gap, ...)
    threshold: float = 0.03        # relative depth excess that counts as a violation
    vote_fraction: float = 0.2     # moving when more than this fraction of valid neighbours vote so
    min_violations: int = 2        # ... and at least this many of them (pixels with few valid neighbours)
    min_confidence_quantile: float = 0.0   # pixels below this per-frame confidence quantile do not vote
    head_weight: float = 0.5       # weight of a supervised mask head's probability in the fused score
    photometric_weight: float = 0.0    # weight of the photometric votes in the fused score (0: not computed)
    colour_threshold: float = 0.15     # photometric vote: colour difference (max over channels, [0, 1]) after warping
    source: str = "fused"          # 'fused', 'head' (probability > 0.5 alone) or 'consistency' (votes alone)


def neighbour_offsets(index: int, frames: int, count: int, gap: int) -> list[int]:
    """Up to ``count`` frame offsets +-gap, +-2 gap, +-4 gap, ... (doubling, nearest first) inside [0, frames).

    Doubling baselines catch fast movers at short range and slow movers at long range with few neighbours.
    """
    offsets = []
    step = gap
    while len(offsets) < count and step < frames:
        for sign in (1, -1):
            if 0 <= index + sign * step < frames and len(offsets) < count:
                offsets.append(sign * step)
        step *= 2
    return offsets


def _pixel_rays(K: Tensor, H: int, W: int) -> Tensor:
    """(H, W, 3) camera-space rays with z = 1 through the pixel centres (u + 0.5, v + 0.5)."""
    v, u = torch.meshgrid(torch.arange(H, dtype=K.dtype, device=K.device) + 0.5,
                          torch.arange(W, dtype=K.dtype, device=K.device) + 0.5, indexing="ij")
    return torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], dim=-1)


def reproject(depth_i: Tensor, K_i: Tensor, w2c_i: Tensor, K_j: Tensor, w2c_j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Frame i's pixels, unprojected through their depth (H, W) at the pixel centres, seen from frame j: their
    depth z in j and pixel coordinates u, v there (corners at integers), each (H, W). K: (3, 3); w2c: (4, 4)."""
    H, W = depth_i.shape
    points_cam = _pixel_rays(K_i, H, W) * depth_i[..., None]                        # (H, W, 3)
    i_to_j = w2c_j @ torch.linalg.inv(w2c_i)                                        # (4, 4)
    in_j = points_cam @ i_to_j[:3, :3].T + i_to_j[:3, 3]                            # (H, W, 3)
    z = in_j[..., 2]
    return z, K_j[0, 0] * in_j[..., 0] / z + K_j[0, 2], K_j[1, 1] * in_j[..., 1] / z + K_j[1, 2]


def violation_votes(depth_i: Tensor, K_i: Tensor, w2c_i: Tensor, depth_j: Tensor, K_j: Tensor, w2c_j: Tensor,
                    threshold: float, voting_i: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(violates (H, W) bool, valid (H, W) bool) for frame i's pixels checked against frame j.

    depth: (H, W) z-depth (<= 0 or non-finite = invalid); K: (3, 3); w2c: (4, 4) OpenCV world-to-camera.
    voting_i: (H, W) bool, the pixels of frame i allowed to vote (all when None).
    """
    z, u, v = reproject(depth_i, K_i, w2c_i, K_j, w2c_j)
    Hj, Wj = depth_j.shape
    valid = (depth_i > 0) & torch.isfinite(depth_i) & (z > 1e-6) & (u >= 0) & (u < Wj) & (v >= 0) & (v < Hj)
    if voting_i is not None:
        valid &= voting_i
    # 3x3 minimum of the observed depth; a neighbourhood that touches invalid depth (-1 here) cannot vote.
    clean_j = torch.where((depth_j > 0) & torch.isfinite(depth_j), depth_j, torch.full_like(depth_j, -1.0))
    eroded = -F.max_pool2d(-clean_j[None, None], 3, stride=1, padding=1)[0, 0]
    col = torch.nan_to_num(u, nan=0.0).clamp(0, Wj - 1).long()       # invalid pixels (z <= 0) read anything
    row = torch.nan_to_num(v, nan=0.0).clamp(0, Hj - 1).long()
    observed = eroded[row, col]
    valid &= observed > 0
    violates = valid & (observed - z > threshold * z)
    return violates, valid


def geometric_scores(depth: Tensor, intrinsics: Tensor, world_to_camera: Tensor, params: ConsistencyParams,
                     confidence: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(score (S, H, W) fraction of valid neighbours voting "moving", valid_count (S, H, W)).

    depth (S, H, W); intrinsics (S, 3, 3); world_to_camera (S, 4, 4); confidence (S, H, W) optional.
    """
    S, H, W = depth.shape
    depth = depth.double()
    intrinsics, world_to_camera = intrinsics.double(), world_to_camera.double()
    voting = None
    if confidence is not None and params.min_confidence_quantile > 0:
        flat = confidence.reshape(S, -1).float()                      # kthvalue: no size limit, unlike quantile
        k = max(1, int(params.min_confidence_quantile * flat.shape[1]))
        floor = flat.kthvalue(k, dim=1).values
        voting = confidence.float() >= floor[:, None, None]          # (S, H, W): low-confidence pixels abstain
    votes = torch.zeros(S, H, W, dtype=torch.float32, device=depth.device)
    counts = torch.zeros(S, H, W, dtype=torch.float32, device=depth.device)
    for i in range(S):
        for offset in neighbour_offsets(i, S, params.neighbours, params.gap):
            j = i + offset
            violates, valid = violation_votes(depth[i], intrinsics[i], world_to_camera[i], depth[j],
                                              intrinsics[j], world_to_camera[j], params.threshold,
                                              None if voting is None else voting[i])
            votes[i] += violates.float()
            counts[i] += valid.float()
    score = torch.where(counts > 0, votes / counts.clamp(min=1), torch.zeros_like(votes))
    return score, counts


def photometric_scores(images: Tensor, depth: Tensor, intrinsics: Tensor, world_to_camera: Tensor,
                       params: ConsistencyParams) -> tuple[Tensor, Tensor]:
    """(score (S, H, W) fraction of valid neighbours voting "moving", valid_count (S, H, W)) from colour.

    A static point of frame i, seen through its depth from neighbour j, has the same colour there; where something
    moved, j shows another surface. Pixel p of frame i votes "moving" in neighbour j when the largest colour-channel
    difference between I_i(p) and I_j(project_j(p)) (bilinear) exceeds ``params.colour_threshold`` after one gain
    per channel and pair (the ratio of the two frames' medians over the valid pixels: auto-exposure). Where j's own
    depth there (the 3x3 maximum) lies in front of the point by more than ``params.threshold`` of its depth,
    something occludes it in j (often the mover itself, passing in front of a static point): that neighbour does
    not vote. Neighbours as for :func:`geometric_scores`. Unlike the free-space test it also sees movers in front of the background (a
    hand over a table), and it needs texture: a mover coloured like what lies behind it does not vote.

    images (S, C, H, W) in [0, 1]; depth (S, H, W); intrinsics (S, 3, 3); world_to_camera (S, 4, 4).
    """
    S, C, H, W = images.shape
    images = images.float()
    depth, intrinsics, world_to_camera = depth.double(), intrinsics.double(), world_to_camera.double()
    votes = torch.zeros(S, H, W, dtype=torch.float32, device=depth.device)
    counts = torch.zeros(S, H, W, dtype=torch.float32, device=depth.device)
    clean = torch.where((depth > 0) & torch.isfinite(depth), depth, torch.zeros_like(depth))
    farthest = F.max_pool2d(clean[:, None], 3, stride=1, padding=1)[:, 0]            # (S, H, W) 3x3 maximum
    for i in range(S):
        for offset in neighbour_offsets(i, S, params.neighbours, params.gap):
            j = i + offset
            z, u, v = reproject(depth[i], intrinsics[i], world_to_camera[i], intrinsics[j], world_to_camera[j])
            valid = ((depth[i] > 0) & torch.isfinite(depth[i]) & (z > 1e-6) & (u >= 0.5) & (u <= W - 0.5)
                     & (v >= 0.5) & (v <= H - 0.5))
            col = torch.nan_to_num(u, nan=0.0).clamp(0, W - 1).long()
            row = torch.nan_to_num(v, nan=0.0).clamp(0, H - 1).long()
            behind = farthest[j][row, col]                                         # j's depth there
            valid &= ~((behind > 0) & (behind < z * (1 - params.threshold)))         # occluded in j: no vote
            if not bool(valid.any()):
                continue
            grid = torch.stack([u / W * 2 - 1, v / H * 2 - 1], -1).float()[None]     # (1, H, W, 2)
            grid = torch.nan_to_num(grid, nan=0.0, posinf=0.0, neginf=0.0)
            seen = F.grid_sample(images[j:j + 1], grid, mode="bilinear", align_corners=False)[0]   # (C, H, W)
            own = images[i]
            gain = own[:, valid].median(1).values / seen[:, valid].median(1).values.clamp_min(1e-3)  # (C,)
            difference = (seen * gain[:, None, None] - own).abs().amax(0)               # (H, W)
            votes[i] += (valid & (difference > params.colour_threshold)).float()
            counts[i] += valid.float()
    score = torch.where(counts > 0, votes / counts.clamp(min=1), torch.zeros_like(votes))
    return score, counts


def dynamic_masks(depth: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray,
                  params: ConsistencyParams = ConsistencyParams(), confidence: Optional[np.ndarray] = None,
                  head_probability: Optional[np.ndarray] = None, device: str | torch.device = "cpu",
                  images: Optional[np.ndarray | Tensor] = None) -> np.ndarray:
    """(S, H, W) bool moving-pixel masks.

    head_probability: (S, H, W) in [0, 1] from a mask head trained with mask supervision, or None. ``params.source``
    says how it is used: 'fused' blends it with the geometric score (weight ``params.head_weight``; pixels without
    a valid neighbour use it alone) and thresholds the blend at ``params.vote_fraction``; 'head' thresholds it
    alone at 0.5 (the depth is not checked); 'consistency' ignores it. Without it every source gives the votes.
    images (S, C, H, W) in [0, 1] at the depth's resolution: with ``params.photometric_weight`` > 0 and the
    'fused' source, the photometric votes (:func:`photometric_scores`) join the blend with that weight, the blend
    being divided by 1 + the weight (pixels without a valid neighbour for them leave them out).
    """
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), device=device)  # noqa: E731
    if head_probability is not None and params.source == "head":
        return (as_tensor(head_probability) > 0.5).cpu().numpy()
    score, counts = geometric_scores(as_tensor(depth), as_tensor(intrinsics), as_tensor(world_to_camera), params,
                                     None if confidence is None else as_tensor(confidence))
    moving = (score > params.vote_fraction) & (score * counts >= params.min_violations - 0.5)
    if params.source != "fused":
        return moving.cpu().numpy()
    fused = None
    if head_probability is not None:
        head = as_tensor(head_probability).float()
        fused = torch.where(counts > 0, (1 - params.head_weight) * score + params.head_weight * head, head)
    if params.photometric_weight > 0 and images is not None:
        photo, photo_counts = photometric_scores(torch.as_tensor(images, device=device), as_tensor(depth),
                                                 as_tensor(intrinsics), as_tensor(world_to_camera), params)
        base = fused if fused is not None else score
        w = params.photometric_weight
        fused = torch.where(photo_counts > 0, (base + w * photo) / (1 + w), base)
    if fused is not None:
        moving = fused > params.vote_fraction
    return moving.cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------
# The depth scale under known cameras


@dataclass(frozen=True)
class ScaleFit:
    """A depth scale chosen by multi-view agreement under fixed cameras (see :func:`consistency_scale`)."""

    scale: float              # the best candidate
    score: float              # its agreement: the share of sampled pixels that another frame sees at their depth
    edge_score: float         # the better of the two ends of the searched range
    well_posed: bool          # the agreement peaks inside the range, clearly above its ends


def consistency_scale(depth: Tensor, intrinsics: Tensor, world_to_camera: Tensor, initial: float,
                      confidence: Optional[Tensor] = None, span: float = 32.0, steps: int = 81,
                      tolerance: float = 0.02, stride: int = 4, max_pairs: int = 48,
                      min_peak_over_edge: float = 1.5, offsets: tuple[int, ...] = (1, 2, 4, 8)) -> ScaleFit:
    """The factor s that makes s x ``depth`` agree across frames under the given cameras.

    depth (S, H, W) z-depth in arbitrary units (<= 0 = invalid); intrinsics (S, 3, 3) for those pixels;
    world_to_camera (S, 4, 4) OpenCV, in the units wanted; confidence (S, H, W) optional (pixels below their frame's
    median are not sampled). Pairs: each frame with the frames ``offsets`` after it (at most ``max_pairs``, spread
    over the sequence).

    For each candidate s (``steps`` log-spaced over [initial / span, initial x span], then a finer pass around the
    best), pixel p of frame i is placed at s d_i(p) on its ray and projected into frame j; it agrees when j's own
    depth there (bilinear between pixel centres, all four valid), s d_j, is within ``tolerance`` of the projected
    depth. The score is the share of the projections landing on j's valid depth that agree, averaged over pairs
    (counting all of i's pixels instead biased the peak by the overlap of the two views, which changes with s: 5 %
    low on the ray-cast room). Moving content and occlusions lower every candidate alike.

    With wide baselines (object captures from many sides) a wrong scale moves the projections off the surface and
    the score peaks sharply at the right one. With a small baseline (a camera that barely moves) parallax vanishes
    as s grows, the score keeps rising to the end of the range, and ``well_posed`` is False: the caller then keeps
    its own estimate. Well posed = the peak is inside the range and ``min_peak_over_edge`` x the better end.
    """
    S, H, W = depth.shape
    depth = depth.double()
    K, w2c = intrinsics.double(), world_to_camera.double()
    pairs = [(i, i + k) for i in range(S) for k in offsets if i + k < S]
    if len(pairs) > max_pairs:
        pairs = [pairs[k] for k in np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)]
    rows = torch.arange(0, H, stride, device=depth.device)
    cols = torch.arange(0, W, stride, device=depth.device)
    valid_depth = (depth > 0) & torch.isfinite(depth)
    observed_maps = torch.stack([torch.where(valid_depth, depth, torch.zeros_like(depth)), valid_depth.double()],
                                dim=1).float()                                       # (S, 2, H, W) depth, validity
    observed_maps = observed_maps.unsqueeze(1)                                       # (S, 1, 2, H, W)
    prepared = []                      # per pair: A (P, 3), B (3,), the target frame, sample count
    for i, j in pairs:
        d = depth[i][rows][:, cols]                                               # (h, w)
        keep = (d > 0) & torch.isfinite(d)
        if confidence is not None:
            c = confidence[i].double()[rows][:, cols]
            keep &= c >= c[keep].median() if keep.any() else keep
        rays = _pixel_rays(K[i], H, W)[rows][:, cols]                             # (h, w, 3)
        points_i = (rays * d[..., None])[keep]                                    # (P, 3) camera i, unit scale
        i_to_j = w2c[j] @ torch.linalg.inv(w2c[i])
        # In camera j at scale s: s R points_i + t, with R, t of i_to_j (the cameras are not scaled).
        prepared.append((points_i @ i_to_j[:3, :3].T, i_to_j[:3, 3], j, int(keep.sum())))

    def scores_of(candidates: Tensor) -> Tensor:
        total = torch.zeros(len(candidates), dtype=torch.float64, device=depth.device)
        for A, B, j, count in prepared:
            if count == 0:
                continue
            X = candidates[:, None, None] * A[None] + B                            # (C, P, 3)
            z = X[..., 2]
            u = K[j, 0, 0] * X[..., 0] / z + K[j, 0, 2]
            v = K[j, 1, 1] * X[..., 1] / z + K[j, 1, 2]
            inside = (z > 1e-9) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
            # j's depth at the projection, bilinear between pixel centres; where one of the four is invalid the
            # interpolated validity is below 1 and the pixel cannot agree (depth edges fail the tolerance anyway).
            grid = torch.stack([2 * u / W - 1, 2 * v / H - 1], dim=-1).nan_to_num(nan=-2.0)[None].float()
            sampled = F.grid_sample(observed_maps[j], grid, mode="bilinear", padding_mode="border",
                                    align_corners=False)[0]                          # (2, C, P)
            observed = sampled[0].double() * candidates[:, None]
            agree = inside & (sampled[1] > 0.999) & ((observed - z).abs() <= tolerance * z)
            seen = (inside & (sampled[1] > 0.999)).double().sum(1)                   # (C,) landing on valid depth
            total += agree.double().sum(1) / seen.clamp(min=1)
        return total / max(1, len(prepared))

    coarse = float(initial) * torch.logspace(-math.log10(span), math.log10(span), steps, dtype=torch.float64,
                                             device=depth.device)
    scores = scores_of(coarse)
    best = int(scores.argmax())
    edge = float(max(scores[0], scores[-1]))
    peak = float(scores[best])
    well_posed = 0 < best < steps - 1 and peak >= min_peak_over_edge * edge and peak > 0
    scale = float(coarse[best])
    if 0 < best < steps - 1:
        fine = torch.logspace(math.log10(float(coarse[best - 1])), math.log10(float(coarse[best + 1])), 21,
                              dtype=torch.float64, device=depth.device)
        fine_scores = scores_of(fine)
        k = int(fine_scores.argmax())
        scale, peak = float(fine[k]), max(peak, float(fine_scores[k]))
    return ScaleFit(scale, peak, edge, bool(well_posed))
