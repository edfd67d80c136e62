"""Direct photometric refinement of predicted cameras: every frame's pose is corrected so that, through its own
depth, its pixels land on the same colours in its neighbours.

The network predicts each frame's camera from the images alone; on real footage those poses are inconsistent
(docs/model-card-page4d-tiny.md: the static model fits lady-running's training views at only 15 dB). Given the
depth maps, the relation between two frames is checkable pixel by pixel: a static point at pixel p of frame i, at
depth d_i(p), seen from frame j through the relative pose j <- i must have the same colour there. This module finds
the pose corrections that minimise that photometric error over many frame pairs at once (direct image alignment,
as in direct visual odometry; poses only, depth held fixed, so the depth's scale stays the scale of the world):

    xi_k (6,)            correction of frame k (k >= 1; frame 0 is the world and stays put): rotation vector
                         omega (radians) and translation v (units of the median depth), applied on the left,
                         world_to_camera_k <- [exp(omega) | v * median_depth] @ world_to_camera_k
    X = d_i(p) K_i^-1 [p + 0.5, 1]^T        frame i's point (camera space, pixel centres)
    q = K_j (R_ji X + t_ji)                 its projection in frame j
    r = sqrt(a_j / a_i) I_j(q) - sqrt(a_i / a_j) I_i(p) + b_j - b_i      per colour channel; a = exp(gain), b:
                                            per-frame exposure (symmetric: noise does not shrink the gains)
    cost = mean over pairs, pixels, channels of log(1 + (r / c)^2)   (Cauchy: movers and occlusions weigh little;
                                            a pixel that leaves frame j counts as an outlier)

Pairs are (i, i + k) in both directions for every k in ``offsets`` (1, 2, 4, 8), so a frame is tied to several
others and errors do not accumulate along the sequence as they would by chaining pairs. Source pixels:
``pixels_per_frame`` per frame and pyramid level (each level halves the resolution), drawn (fixed seed) among the
allowed pixels (``weight`` > 0: confident depth, not marked moving) whose image gradient is above the frame's
median (flat regions say nothing about pose).

Solved by Adam in two passes. Tracking, on the coarsest level: frames 1, 2, ... in turn, each solved alone against
the earlier frames it is paired with, from the better of two starts (the network's motion from the frame before,
or the last motion repeated), so that every frame starts within a pixel or two of its solution however far the
network's poses drift over the sequence. Joint, coarse to fine: all frames and all pairs at once. The result is
kept only if it lowers the cost of the finest level; the record says which. Optionally (``focal``) one factor
on every frame's focal length is found by profiling the whole refinement over factors (:func:`_search_focal`).
On synthetic rooms and the real clip: docs/geometry.md, "Camera refinement".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation
from torch import Tensor

from pipeline.cameras import rotation_angle_deg


@dataclass(frozen=True, kw_only=True)
class PhotometricParams:
    offsets: tuple[int, ...] = (1, 2, 4, 8)   # frame pairs (i, i + k), aligned in both directions
    levels: int = 3                           # pyramid levels, each half the resolution of the one above
    iterations: int = 30                      # Adam steps per frame while tracking (on the coarsest level)
    joint_iterations: int = 30                # Adam steps per level over all frames at once (0: tracking only)
    pixels_per_frame: int = 1024              # source pixels per frame and level
    learning_rate: float = 2e-3               # Adam step while tracking: radians, units of the median depth, log gain
    joint_learning_rate: float = 1e-3         # Adam step of the joint pass (it starts near the solution)
    robust_scale: float = 0.05                # Cauchy scale of colour residuals (colours in [0, 1])
    exposure: bool = True                     # per-frame gain and bias of the colours (auto-exposure)
    exposure_prior: float = 0.1               # weight of (log gain^2 + bias^2) per frame, towards no change
    focal: bool = False                       # also find one factor on every frame's focal length (a search)
    focal_step: float = 1.12                  # focal search: factors tried are powers of this (1, 1.12, 1/1.12, ...)
    focal_range: tuple[float, float] = (0.5, 2.0)   # focal search: the factors it may try
    seed: int = 0                             # the random draw of source pixels


def rotation_matrices(rotation_vectors: Tensor) -> Tensor:
    """Rodrigues: rotation vectors (N, 3) in radians -> (N, 3, 3), smooth (differentiable) at zero."""
    theta_sq = (rotation_vectors ** 2).sum(-1, keepdim=True)[..., None]          # (N, 1, 1)
    theta = theta_sq.clamp_min(1e-12).sqrt()
    small = theta_sq < 1e-8
    a = torch.where(small, 1.0 - theta_sq / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24.0, (1.0 - torch.cos(theta)) / theta_sq.clamp_min(1e-12))
    x, y, z = rotation_vectors.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=rotation_vectors.dtype, device=rotation_vectors.device)
    return eye + a * skew + b * (skew @ skew)


def corrected_world_to_camera(world_to_camera: Tensor, corrections: Tensor, translation_unit: float) -> Tensor:
    """world_to_camera (S, 4, 4) with corrections (S, 6) = (omega, v) applied on the left:
    R <- exp(omega) R, t <- exp(omega) t + v * translation_unit."""
    rotation = rotation_matrices(corrections[:, :3])                               # (S, 3, 3)
    R = rotation @ world_to_camera[:, :3, :3]
    t = (rotation @ world_to_camera[:, :3, 3:])[..., 0] + corrections[:, 3:] * translation_unit
    top = torch.cat([R, t[..., None]], -1)                                         # (S, 3, 4)
    bottom = world_to_camera[:, 3:, :]                                             # (S, 1, 4)
    return torch.cat([top, bottom], 1)


def frame_pairs(frames: int, offsets: tuple[int, ...]) -> np.ndarray:
    """(E, 2) int64 (source, target) pairs: (i, i + k) and (i + k, i) for every k in offsets inside the sequence."""
    pairs = [(i, i + k) for k in offsets for i in range(frames - k)]
    pairs += [(j, i) for i, j in pairs]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def pyramid_level(images: Tensor, depth: Tensor, weight: Tensor, K: Tensor, level: int):
    """Level ``level`` of the pyramid: images (S, C, H, W) area-averaged; depth (S, H, W) averaged over its valid
    (> 0) pixels, 0 where a block has none; weight (S, H, W) the block minimum (a block with one disallowed pixel
    is disallowed); K (S, 3, 3) scaled (pixel corners at integers, so halving is exact)."""
    if level == 0:
        return images, depth, weight, K
    factor = 2 ** level
    images = F.avg_pool2d(images, factor, ceil_mode=True)
    valid = (depth > 0).to(depth.dtype)[:, None]
    depth_sum = F.avg_pool2d(depth[:, None] * valid, factor, ceil_mode=True)
    count = F.avg_pool2d(valid, factor, ceil_mode=True)
    depth = torch.where(count > 0, depth_sum / count.clamp_min(1e-12), torch.zeros_like(count))[:, 0]
    weight = -F.max_pool2d(-weight[:, None], factor, ceil_mode=True)[:, 0]
    scale = torch.tensor([1.0 / factor, 1.0 / factor, 1.0], dtype=K.dtype, device=K.device)
    return images, depth, weight, K * scale[None, :, None]


def select_pixels(images: Tensor, depth: Tensor, weight: Tensor, count: int,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(S, n) flat pixel indices per frame: a random draw (fixed by ``generator``) among the pixels that are allowed
    (weight > 0, depth > 0) and whose image gradient is above their frame's median over allowed pixels; frames with
    fewer such pixels repeat some (their loss is a mean, so repeats only reweight). Also (S,) bool: the frame has
    allowed pixels at all (a frame without any is no source; its indices are placeholders)."""
    S, _, H, W = images.shape
    gray = images.mean(1, keepdim=True)                                            # (S, 1, H, W)
    gx = F.pad(gray[..., :, 2:] - gray[..., :, :-2], (1, 1, 0, 0))
    gy = F.pad(gray[..., 2:, :] - gray[..., :-2, :], (0, 0, 1, 1))
    gradient = (gx ** 2 + gy ** 2).sqrt()[:, 0].reshape(S, -1)                     # (S, H*W)
    allowed = ((weight > 0) & (depth > 0)).reshape(S, -1)
    chosen = []
    for k in range(S):
        candidates = torch.nonzero(allowed[k]).flatten()
        if len(candidates) == 0:
            chosen.append(torch.zeros(count, dtype=torch.long, device=images.device))
            continue
        g = gradient[k, candidates]
        strong = candidates[g >= g.median()]
        draw = torch.randint(len(strong), (count,), generator=generator).to(images.device)
        chosen.append(strong[draw])
    return torch.stack(chosen), allowed.any(1)                                     # (S, n), (S,)


def sample_bilinear(images_flat: Tensor, frame: Tensor, u: Tensor, v: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Bilinear samples of many frames at once.

    images_flat (S*H*W, C); frame (E, n) int64; u, v (E, n) continuous pixel coordinates (pixel corners at
    integers, centres at k + 0.5). Returns colours (E, n, C) and inside (E, n) bool (all four neighbours exist).
    Differentiable in u and v (the weights carry the gradient).
    """
    x = u - 0.5
    y = v - 0.5
    inside = (x >= 0) & (y >= 0) & (x <= W - 1) & (y <= H - 1)             # False for NaN too
    x = torch.where(inside, x, torch.zeros_like(x))
    y = torch.where(inside, y, torch.zeros_like(y))
    x0 = x.detach().floor().clamp(max=W - 2).long()
    y0 = y.detach().floor().clamp(max=H - 2).long()
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    base = frame * (H * W) + y0 * W + x0                                           # (E, n)

    def at(offset: int) -> Tensor:
        return images_flat.index_select(0, (base + offset).flatten()).reshape(*base.shape, -1)

    top = at(0) * (1 - fx) + at(1) * fx
    bottom = at(W) * (1 - fx) + at(W + 1) * fx
    return top * (1 - fy) + bottom * fy, inside


def photometric_residuals(world_to_camera: Tensor, exposure: Tensor, images_flat: Tensor, depth: Tensor, K: Tensor,
                          pairs: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Colour residuals of every pair's source pixels seen in its target.

    world_to_camera (S, 4, 4); exposure (S, 2) log gain and bias; images_flat (S*H*W, C) channel-last;
    depth (S, H, W); K (S, 3, 3); pairs (E, 2) (source, target); pixels (S, n) flat indices of each frame's
    source pixels.
    Returns residuals (E, n, C) and valid (E, n) bool (in front of the target camera and inside its image).
    """
    S, H, W = depth.shape
    C = images_flat.shape[1]
    source, target = pairs[:, 0], pairs[:, 1]
    flat_pixels = pixels[source]                                                   # (E, n)
    u = (flat_pixels % W).to(K.dtype) + 0.5
    v = torch.div(flat_pixels, W, rounding_mode="floor").to(K.dtype) + 0.5
    d = depth.reshape(S, -1).gather(1, pixels)[source]                             # (E, n)
    Ks, Kt = K[source], K[target]
    x = (u - Ks[:, 0, 2:3]) / Ks[:, 0, 0:1] * d                                    # (E, n) camera space of source
    y = (v - Ks[:, 1, 2:3]) / Ks[:, 1, 1:2] * d
    points = torch.stack([x, y, d], -1)                                            # (E, n, 3)
    relative = (world_to_camera[target] @ torch.linalg.inv(world_to_camera[source])).to(K.dtype)  # (E, 4, 4) t <- s
    seen = points @ relative[:, :3, :3].transpose(1, 2) + relative[:, None, :3, 3]  # (E, n, 3)
    z = seen[..., 2]
    in_front = z > 1e-3 * d.detach().clamp_min(1e-6)
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    u_t = Kt[:, 0, 0:1] * seen[..., 0] / z_safe + Kt[:, 0, 2:3]
    v_t = Kt[:, 1, 1:2] * seen[..., 1] / z_safe + Kt[:, 1, 2:3]
    colour_t, inside = sample_bilinear(images_flat, target[:, None].expand_as(u_t), u_t, v_t, H, W)
    colour_s = images_flat.index_select(0, (source[:, None] * (H * W) + flat_pixels).flatten()).reshape(*u.shape, C)
    # symmetric in the two frames: sqrt(a_t / a_s) I_t - sqrt(a_s / a_t) I_s. A one-sided a_t I_t - a_s I_s would let
    # noise pull each gain below its predecessor's (a least-squares slope under noise is < 1), compounding.
    half_log_ratio = (exposure[target, 0] - exposure[source, 0])[:, None, None] / 2       # (E, 1, 1)
    bias = exposure[:, 1]
    residual = (half_log_ratio.exp() * colour_t - (-half_log_ratio).exp() * colour_s
                + (bias[target] - bias[source])[:, None, None])
    return residual, in_front & inside


OUTLIER_RESIDUAL = 0.25      # a source pixel that leaves the target image costs as much as a residual this large


def robust_loss(residual: Tensor, valid: Tensor, scale: float) -> Tensor:
    """Mean Cauchy cost log(1 + (r / scale)^2) over all pairs, pixels and channels, where a pixel that does not land
    in its target (behind it, outside its image) costs as much as a residual of ``OUTLIER_RESIDUAL``: otherwise
    moving a camera away until nothing overlaps would cost nothing. (That constant has no gradient: it makes the
    values of different poses comparable, as the choice of a starting pose and the final check need.)"""
    cost = torch.log1p((residual / scale) ** 2).mean(-1)                           # (E, n)
    outside = math.log1p((OUTLIER_RESIDUAL / scale) ** 2)
    return torch.where(valid, cost, torch.full_like(cost, outside)).mean()


def scaled_focal(K: Tensor, log_focal: Tensor) -> Tensor:
    """K (S, 3, 3) with fx and fy multiplied by exp(log_focal) (a () or (1,) tensor); principal points kept."""
    factor = log_focal.reshape(()).exp().to(K.dtype)
    scaled = K.clone()
    scaled[:, 0, 0] = K[:, 0, 0] * factor
    scaled[:, 1, 1] = K[:, 1, 1] * factor
    return scaled


class _Unknowns:
    """The quantities solved for, one row per frame; frame 0's rows stay zero (it is the world, its exposure the
    reference). corrections (S, 6) as in :func:`corrected_world_to_camera`; exposure (S, 2) log gain and bias;
    log_focal (1,): the log of one factor on every frame's focal length (0 unless ``PhotometricParams.focal``)."""

    def __init__(self, frames: int, device) -> None:
        self.corrections = torch.zeros(frames, 6, device=device)
        self.exposure = torch.zeros(frames, 2, device=device)
        self.log_focal = torch.zeros(1, device=device)

    def tensors(self) -> list[Tensor]:
        return [self.corrections, self.exposure, self.log_focal]


class _Problem:
    """The photometric cost of given pairs at one pyramid level, for the unknowns of all frames."""

    def __init__(self, images, depth, weight, K, initial: Tensor, unit: float, params: PhotometricParams,
                 generator: torch.Generator, level: int) -> None:
        self.images, self.depth, weight_level, self.K = pyramid_level(images, depth, weight, K, level)
        self.pixels, self.has_source = select_pixels(self.images, self.depth, weight_level, params.pixels_per_frame,
                                                     generator)
        S, C, H, W = self.images.shape
        self.images_flat = self.images.permute(0, 2, 3, 1).reshape(S * H * W, C).contiguous()   # (S*H*W, C)
        self.initial, self.unit, self.params, self.level = initial, unit, params, level

    def loss(self, corrections: Tensor, exposure: Tensor, log_focal: Tensor, pairs: Tensor) -> Tensor:
        """The cost of ``pairs`` with every frame's correction (S, 6), exposure (S, 2) and the focal factor (1,)."""
        return self.loss_posed(self.posed(corrections), exposure, log_focal, pairs)

    def posed(self, corrections: Tensor, frames: Tensor | None = None) -> Tensor:
        """world_to_camera (S, 4, 4) float64 of all frames (or (n, 4, 4) of ``frames``) with their corrections."""
        initial = self.initial if frames is None else self.initial[frames]
        return corrected_world_to_camera(initial, corrections.double(), self.unit)

    def loss_posed(self, world_to_camera: Tensor, exposure: Tensor, log_focal: Tensor, pairs: Tensor) -> Tensor:
        residual, valid = photometric_residuals(
            world_to_camera, exposure if self.params.exposure else torch.zeros_like(exposure), self.images_flat,
            self.depth, scaled_focal(self.K, log_focal), pairs, self.pixels)
        return robust_loss(residual, valid & self.has_source[pairs[:, 0], None], self.params.robust_scale)


def _solve(problem: _Problem, unknowns: _Unknowns, frames: Tensor, pairs: Tensor, iterations: int,
           learning_rate: float) -> tuple[float, float]:
    """Adam on the rows ``frames`` of the corrections and exposures (the other rows and the focal factor held),
    over the cost of ``pairs``; the unknowns are updated in place. Returns the cost before and after. The held
    frames' poses are composed once."""
    held = problem.posed(unknowns.corrections)                                     # (S, 4, 4), no gradient
    corrections, exposure = (t[frames].clone().requires_grad_(True)
                             for t in (unknowns.corrections, unknowns.exposure))

    def cost() -> Tensor:
        world_to_camera = held.index_put((frames,), problem.posed(corrections, frames))
        data = problem.loss_posed(world_to_camera, unknowns.exposure.index_put((frames,), exposure),
                                  unknowns.log_focal, pairs)
        if not problem.params.exposure:
            return data
        return data + problem.params.exposure_prior * (exposure ** 2).sum(-1).mean()

    with torch.no_grad():
        before = float(cost())
    solved = [corrections] + ([exposure] if problem.params.exposure else [])
    optimizer = torch.optim.Adam(solved, lr=learning_rate)
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        cost().backward()
        optimizer.step()
    with torch.no_grad():
        if not all(bool(torch.isfinite(t).all()) for t in solved):
            return before, before                                                  # keep the start
        unknowns.corrections[frames] = corrections
        unknowns.exposure[frames] = exposure
        return before, float(cost())


def _start_frame(problem: _Problem, unknowns: _Unknowns, frame: int, linked: Tensor, initial: Tensor,
                 unit: float) -> None:
    """Set frame ``frame``'s unknowns to the better (at the coarsest level) of two starts, each a motion from the
    frame before applied to its refined pose: the network's motion between the two frames, or the motion between
    the two frames before that, repeated (constant velocity; a camera that pans faster than the network says)."""
    with torch.no_grad():
        unknowns.exposure[frame] = unknowns.exposure[frame - 1]
        posed = corrected_world_to_camera(initial, unknowns.corrections.double(), unit)      # (S, 4, 4)
        motions = [initial[frame] @ torch.linalg.inv(initial[frame - 1])]
        if frame >= 2:
            motions.append(posed[frame - 1] @ torch.linalg.inv(posed[frame - 2]))
        best, best_cost = None, math.inf
        for motion in motions:
            wanted = motion @ posed[frame - 1] @ torch.linalg.inv(initial[frame])    # exp(correction) of the frame
            if not bool(torch.isfinite(wanted).all()):
                continue
            rotation = Rotation.from_matrix(wanted[:3, :3].cpu().numpy()).as_rotvec()
            candidate = torch.cat([torch.as_tensor(rotation), (wanted[:3, 3] / unit).cpu()]).to(
                unknowns.corrections)
            unknowns.corrections[frame] = candidate
            cost = float(problem.loss(*unknowns.tensors(), linked))
            if cost < best_cost:
                best, best_cost = candidate, cost
        unknowns.corrections[frame] = best if best is not None else unknowns.corrections[frame - 1]


class RefinedCameras(NamedTuple):
    """What :func:`refine_cameras` returns: world_to_camera (S, 4, 4) float64 OpenCV; intrinsics (S, 3, 3) float64
    in pixels of the images it was given (the input's, with fx and fy scaled by ``record["focal_scale"]``); record."""
    world_to_camera: np.ndarray
    intrinsics: np.ndarray
    record: dict


def _joint(problems: list[_Problem], unknowns: _Unknowns, frames: Tensor, pairs: Tensor,
           params: PhotometricParams) -> list[dict]:
    """The joint pass: all ``frames`` and all ``pairs`` at once, coarse to fine (the unknowns updated in place).
    Returns each level's cost at its start and end."""
    costs = []
    for problem in problems:
        if not params.joint_iterations:
            break
        before, after = _solve(problem, unknowns, frames, pairs, params.joint_iterations,
                               params.joint_learning_rate)
        costs.append({"level": problem.level, "size": list(problem.images.shape[2:]), "cost_start": before,
                      "cost_end": after})
    return costs


def _track(problem: _Problem, unknowns: _Unknowns, pairs: Tensor, initial: Tensor, unit: float,
           params: PhotometricParams) -> list[float]:
    """The tracking pass: frames 1, 2, ... in turn, each solved alone against the earlier frames it is paired
    with, from the better of two starts (:func:`_start_frame`). Returns each frame's final cost."""
    costs = []
    for frame in range(1, len(initial)):
        linked = pairs[(pairs.max(1).values == frame)]                            # with earlier frames only
        _start_frame(problem, unknowns, frame, linked, initial, unit)
        _, after = _solve(problem, unknowns, torch.tensor([frame], device=initial.device), linked,
                          params.iterations, params.learning_rate)
        costs.append(after)
    return costs


def _search_focal(problems: list[_Problem], unknowns: _Unknowns, pairs: Tensor, initial: Tensor, unit: float,
                  params: PhotometricParams) -> dict:
    """The focal factor by profiling the cost. For a factor held, the whole refinement (tracking, then the joint
    pass) runs, and its final cost is the profile's value there. Factors 1 and ``focal_step`` above and below are
    tried, then further steps downhill until the cost rises again or ``focal_range`` ends; a parabola in log factor
    through the cheapest and its two neighbours gives the factor. The unknowns are left at the cheapest trial's
    solution, which a last joint pass on the finest level moves to that factor. (The gradient alone barely moves
    the focal length: the cost falls by a few per cent over a 20 % change, and only once the poses have followed
    it. Poses tracked under one factor bias the profile towards it, and the coarsest level alone does not tell the
    factors apart: docs/geometry.md.) Returns the factors tried, their costs, the factor, and the cheapest trial's
    tracking and joint records."""
    everything = torch.arange(1, len(initial), device=initial.device)
    step = math.log(params.focal_step)
    low, high = (math.log(f) for f in params.focal_range)
    trials: dict[int, tuple] = {}                   # k -> (cost, tracking, joint, unknowns) at factor step^k

    def trial(k: int) -> float:
        if k not in trials:
            for tensor in unknowns.tensors():
                tensor.zero_()
            unknowns.log_focal.fill_(k * step)
            tracking = _track(problems[0], unknowns, pairs, initial, unit, params)
            joint = _joint(problems, unknowns, everything, pairs, params)
            trials[k] = (joint[-1]["cost_end"], tracking, joint, [t.clone() for t in unknowns.tensors()])
        return trials[k][0]

    best = min((0, 1, -1), key=trial)
    while best != 0 and low <= (best + np.sign(best)) * step <= high and trial(best + np.sign(best)) < trial(best):
        best += int(np.sign(best))
    cost, tracking, joint, solution = trials[best]
    for tensor, value in zip(unknowns.tensors(), solution):
        tensor.copy_(value)
    if best - 1 in trials and best + 1 in trials:   # vertex of the parabola through the three (log factor, cost)
        x = np.array([best - 1, best, best + 1]) * step
        a, b, _ = np.polyfit(x, [trials[k][0] for k in (best - 1, best, best + 1)], 2)
        if a > 0:
            unknowns.log_focal.fill_(float(np.clip(-b / (2 * a), x[0], x[2])))
            joint = joint + _joint(problems[-1:], unknowns, everything, pairs, params)
    return {"factors": [math.exp(k * step) for k in sorted(trials)], "costs": [trials[k][0] for k in sorted(trials)],
            "factor": float(unknowns.log_focal.exp()), "tracking": tracking, "joint": joint}


def refine_cameras(images: Tensor, depth: Tensor, weight: Tensor, K: Tensor, world_to_camera: np.ndarray,
                   params: PhotometricParams = PhotometricParams()) -> RefinedCameras:
    """Refine the cameras of a frame sequence by direct photometric alignment (module docstring).

    images (S, C, H, W) float in [0, 1]; depth (S, H, W) (> 0 where valid); weight (S, H, W): > 0 where a pixel may
    serve as a source (confident depth, static); K (S, 3, 3) in pixels of these images; world_to_camera (S, 4, 4)
    OpenCV, frame 0's stays as it is. All tensors on one device; computed in float32 (poses composed in float64).
    Returns the refined cameras (:class:`RefinedCameras`; the input's where the refinement is not kept) and a
    record (costs per pass and level, seconds, cost before / after on the finest level, kept or not, rotation
    changes, exposure gains, the focal factor).
    """
    S = images.shape[0]
    device = images.device
    initial = torch.as_tensor(world_to_camera, dtype=torch.float64, device=device)
    offsets = tuple(k for k in params.offsets if 0 < k < S)
    pairs = torch.as_tensor(frame_pairs(S, offsets), device=device)
    record = {"frames": S, "pairs": len(pairs), "params": {k: (list(v) if isinstance(v, tuple) else v)
                                                           for k, v in params.__dict__.items()}}

    def unchanged(reason: str) -> RefinedCameras:
        return RefinedCameras(np.asarray(world_to_camera, dtype=np.float64), K.detach().double().cpu().numpy(),
                              {**record, "kept": False, "focal_scale": 1.0, "reason": reason})

    if len(pairs) == 0:
        return unchanged("no frame pairs (fewer than 2 frames)")
    if not all(bool(torch.isfinite(t).all()) for t in (initial, K)):
        return unchanged("non-finite cameras or intrinsics")
    if min(images.shape[2:]) < 2:
        return unchanged("images smaller than 2 x 2 pixels")
    if not bool(((weight > 0) & (depth > 0)).any()):
        return unchanged("no pixel may serve as a source (all masked or without depth)")
    valid_depth = depth[depth > 0]
    unit = float(valid_depth.median()) if valid_depth.numel() else 1.0
    generator = torch.Generator().manual_seed(params.seed)
    levels = max(1, min(params.levels, int(math.log2(max(1, min(images.shape[2:]) // 8))) + 1))
    problems = [_Problem(images, depth, weight, K.to(images.dtype), initial, unit, params, generator, level)
                for level in reversed(range(levels))]              # coarse to fine; the coarsest >= 8 px a side
    unknowns = _Unknowns(S, device)

    everything = torch.arange(1, S, device=device)
    if params.focal and params.joint_iterations:
        began = time.perf_counter()
        record["focal_search"] = _search_focal(problems, unknowns, pairs, initial, unit, params)
        record["tracking"], record["joint"] = (record["focal_search"].pop(key) for key in ("tracking", "joint"))
        record["focal_search_s"] = time.perf_counter() - began
    else:
        began = time.perf_counter()
        record["tracking"] = _track(problems[0], unknowns, pairs, initial, unit, params)
        record["tracking_s"] = time.perf_counter() - began
        began = time.perf_counter()
        record["joint"] = _joint(problems, unknowns, everything, pairs, params)
        record["joint_s"] = time.perf_counter() - began
    finest = problems[-1]
    with torch.no_grad():
        after = float(finest.loss(*unknowns.tensors(), pairs))
        # the network's cameras with either exposure (none, or the one fitted here): the poses must win, not the
        # exposure alone
        zero, no_focal = torch.zeros_like(unknowns.corrections), torch.zeros_like(unknowns.log_focal)
        before = min(float(finest.loss(zero, torch.zeros_like(unknowns.exposure), no_focal, pairs)),
                     float(finest.loss(zero, unknowns.exposure, no_focal, pairs)))
        refined = corrected_world_to_camera(initial, unknowns.corrections.double(), unit)
    kept = after < before
    result = refined.cpu().numpy() if kept else np.asarray(world_to_camera, dtype=np.float64)
    focal_scale = float(unknowns.log_focal.exp()) if kept else 1.0
    intrinsics = scaled_focal(K.detach().double(), torch.tensor(math.log(focal_scale), dtype=torch.float64,
                                                                device=K.device))
    original = np.asarray(world_to_camera, np.float64)
    rotation_change = np.array([rotation_angle_deg(new[:3, :3] @ old[:3, :3].T) for new, old in zip(result, original)])
    record.update({"cost_before": before, "cost_after": after, "kept": kept, "translation_unit": unit,
                   "rotation_change_deg": {"mean": float(rotation_change.mean()),
                                           "max": float(rotation_change.max())},
                   "exposure_gain": (unknowns.exposure[:, 0].exp().tolist() if params.exposure else None),
                   "focal_scale": focal_scale})
    return RefinedCameras(result, intrinsics.cpu().numpy(), record)
