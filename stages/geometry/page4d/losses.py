"""PAGE-4D / VGGT training losses (spec ``page4d.md`` §12.3), plus an optional supervised dynamic-mask loss.

    L = w_cam * L_cam + w_depth * L_depth + w_point * L_point [+ w_mask * L_mask]

with the official weights w_cam = 5, w_depth = w_point = 1 and no mask loss. Every function takes plain tensors
(predictions in the normalised frame of the ground truth, see :mod:`stages.geometry.page4d.normalize`) and computes
in their dtype; :func:`objective` first widens half-precision network outputs to float32.

Shapes: B sequences, S frames, H x W pixels, h x w patches.

Two choices that differ from the official code, both documented where they are made:
- the camera loss gates **frames** with more than 100 valid points (the spec's reading); the official code gates
  whole sequences on the count of their first frame. The two agree whenever every frame has > 100 valid points.
- the mask loss does not exist in the official recipe; see :func:`mask_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.config import option

HARD_MAX = 100.0            # element clamp of the official losses (translation errors, per-pixel terms, gradients)
QUANTILE_MIN_ELEMENTS = 1000
QUANTILE_SUBSAMPLE_ABOVE = 100_000_000
QUANTILE_SUBSAMPLE_TO = 1_000_000
MIN_VALID_POINTS = 100      # fewer valid pixels in the whole batch: depth/point losses are zero
MIN_FRAME_POINTS = 100      # camera loss: frames need more than this many valid pixels
NORMAL_COS_EPS = 1e-8
CONF_EPS = 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Outlier filter


def quantile_nearest(values: Tensor, q: float) -> Tensor:
    """The ``q`` quantile of a 1-D tensor with 'nearest' interpolation: the element of rank round(q * (n - 1)).

    Python's ``round`` (half to even) is used on purpose; this is what the official ``torch_quantile`` does.
    """
    n = values.numel()
    k = int(round(q * (n - 1)))
    return torch.kthvalue(values.reshape(-1), k + 1).values


def filter_by_quantile(values: Tensor, quantile: float, min_elements: int = QUANTILE_MIN_ELEMENTS,
                       hard_max: float = HARD_MAX) -> Tensor:
    """Per-element loss values (N,) -> the kept values (M,), M <= N.

    If N > ``min_elements``: more than 1e8 values are first randomly subsampled to 1e6; values are clamped at
    ``hard_max``; those strictly below the ``quantile`` (threshold also capped at ``hard_max``) are kept, provided
    more than ``min_elements`` remain, else all clamped values are kept. With N <= ``min_elements`` the values are
    returned unchanged.
    """
    if values.numel() <= min_elements:
        return values
    if values.numel() > QUANTILE_SUBSAMPLE_ABOVE:
        keep = torch.randperm(values.numel(), device=values.device)[:QUANTILE_SUBSAMPLE_TO]
        values = values.reshape(-1)[keep]
    values = values.clamp(max=hard_max)
    threshold = torch.clamp(quantile_nearest(values.detach(), quantile), max=hard_max)
    below = values < threshold
    if int(below.sum()) > min_elements:
        return values[below]
    return values


# ----------------------------------------------------------------------------------------------------------------
# Camera


def quaternion_product(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of quaternions (..., 4) in ``[x, y, z, w]`` order (the rotation b, then a)."""
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack([aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw,
                        aw * bw - ax * bx - ay * by - az * bz], dim=-1)


def relative_rotations(quaternions: Tensor) -> Tensor:
    """Rotation from each frame's camera to the next one's: q_{s+1} * conj(q_s) for unit-normalised world-to-camera
    quaternions (B, S, 4) ``[x, y, z, w]`` -> (B, S-1, 4)."""
    q = F.normalize(quaternions, dim=-1)
    conjugate = q * q.new_tensor([-1.0, -1.0, -1.0, 1.0])
    return quaternion_product(q[:, 1:], conjugate[:, :-1])


def relative_rotation_error(pred_quaternions: Tensor, gt_quaternions: Tensor, pair_valid: Tensor) -> Tensor:
    """Mean absolute error of the consecutive frames' relative rotations, as quaternions (the per-frame drift that
    RPE-rot measures, which the per-frame term leaves free).

    pred_quaternions, gt_quaternions: (B, S, 4) ``[x, y, z, w]``; pair_valid: (B, S-1) bool, pairs (s, s+1) whose
    frames are both valid. The prediction's sign is taken to agree with the truth's (q and -q are one rotation);
    the mean runs over the valid pairs and the 4 components.
    """
    pred = relative_rotations(pred_quaternions)[pair_valid]                # (P, 4)
    gt = relative_rotations(gt_quaternions)[pair_valid]                    # (P, 4)
    sign = torch.where((pred * gt).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(pred.dtype)
    return (pred * sign - gt).abs().mean()


def camera_loss(pose_enc_list: list[Tensor], gt_pose_enc: Tensor, frame_valid: Tensor, stage_decay: float = 0.6,
                weight_translation: float = 1.0, weight_rotation: float = 1.0,
                weight_fov: float = 0.5, weight_relative_rotation: float = 0.0) -> dict[str, Tensor]:
    """L1 pose-encoding loss over the refinement iterations of the camera head.

    pose_enc_list: K tensors (B, S, 9) ``[t (3), q_xyzw (4), fov_h, fov_w]``, iteration 1 first.
    gt_pose_enc: (B, S, 9) with q_w >= 0. frame_valid: (B, S) bool, frames that enter the loss.

    L_cam = (1/K) sum_k decay^(K-k) (wt * L_T^k + wr * L_R^k + wf * L_FoV^k [+ wrr * L_Rrel^k]), where each term is
    the mean absolute error over the valid frames and the components (translation errors clamped at 100 per
    element). L_Rrel (only where ``weight_relative_rotation`` > 0; not in the official recipe) is
    :func:`relative_rotation_error` over consecutive valid frames.
    Returns ``loss_camera`` and the stage-averaged ``loss_T``, ``loss_R``, ``loss_FoV`` (and ``loss_Rrel``).
    """
    gt = gt_pose_enc[frame_valid]                                     # (F, 9)
    pair_valid = frame_valid[:, 1:] & frame_valid[:, :-1]             # (B, S-1)
    relative = weight_relative_rotation > 0
    has_pairs = relative and gt_pose_enc.shape[1] > 1 and bool(pair_valid.any())   # one host sync per batch
    K = len(pose_enc_list)
    terms = {"loss_T": 0.0, "loss_R": 0.0, "loss_FoV": 0.0, **({"loss_Rrel": 0.0} if relative else {})}
    for k, pose_enc in enumerate(pose_enc_list):
        weight = stage_decay ** (K - 1 - k)
        # A term without frames (or pairs) is a zero that keeps the graph (and unused-parameter checks) alive.
        zero = pose_enc.sum() * 0.0 if gt.shape[0] == 0 or (relative and not has_pairs) else None
        if gt.shape[0] == 0:
            errors = (zero, zero, zero)
        else:
            error = (pose_enc[frame_valid] - gt).abs()                # (F, 9)
            errors = (error[:, :3].clamp(max=HARD_MAX).mean(), error[:, 3:7].mean(), error[:, 7:].mean())
        if relative:
            errors += (relative_rotation_error(pose_enc[..., 3:7], gt_pose_enc[..., 3:7], pair_valid)
                       if has_pairs else zero,)
        for name, value in zip(terms, errors):
            terms[name] = terms[name] + weight * value
    terms = {name: value / K for name, value in terms.items()}
    total = (weight_translation * terms["loss_T"] + weight_rotation * terms["loss_R"]
             + weight_fov * terms["loss_FoV"])
    if relative:
        total = total + weight_relative_rotation * terms["loss_Rrel"]
    return {"loss_camera": total, **terms}


# ----------------------------------------------------------------------------------------------------------------
# Confidence-weighted regression (depth and points)


def confidence_regression(error: Tensor, confidence: Tensor, gamma: float, alpha: float,
                          quantile: float) -> tuple[Tensor, Tensor]:
    """Per-pixel errors e (N,) >= 0 and confidences c (N,) -> (L_conf, L_reg), two scalars.

    e is clamped at 100 and c at >= 1e-6; L_conf = mean_Q(gamma * e * c - alpha * log c) (per-element values
    clamped to [-100, 100], as the official code does) and L_reg = mean_Q(e), where mean_Q is the mean after
    :func:`filter_by_quantile` (skipped when ``quantile`` <= 0).
    """
    error = error.clamp(max=HARD_MAX)
    conf = confidence.clamp(min=CONF_EPS)
    conf_term = (gamma * error * conf - alpha * torch.log(conf)).clamp(-HARD_MAX, HARD_MAX)
    if quantile > 0:
        conf_term = filter_by_quantile(conf_term, quantile)
        error = filter_by_quantile(error, quantile)
    return conf_term.mean(), error.mean()


def gradient_loss(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Gradient-matching loss at one scale. pred, gt: (N, H, W, C); valid: (N, H, W) bool -> scalar.

    With r = valid * (pred - gt), the sum over horizontal and vertical neighbour pairs whose two pixels are valid
    of |r_a - r_b| (each clamped at 100), divided by the number of valid entries (valid pixels x C). Zero if none.
    """
    C = pred.shape[-1]
    mask = valid[..., None].to(pred.dtype).expand(-1, -1, -1, C)            # (N, H, W, C)
    residual = mask * (pred - gt)
    grad_x = (residual[:, :, 1:] - residual[:, :, :-1]).abs() * (mask[:, :, 1:] * mask[:, :, :-1])
    grad_y = (residual[:, 1:] - residual[:, :-1]).abs() * (mask[:, 1:] * mask[:, :-1])
    count = mask.sum()
    if count == 0:
        return pred.sum() * 0.0
    return (grad_x.clamp(max=HARD_MAX).sum() + grad_y.clamp(max=HARD_MAX).sum()) / count


def point_map_normals(points: Tensor, valid: Tensor, eps: float = NORMAL_COS_EPS) -> tuple[Tensor, Tensor]:
    """Normals of a point map from the 4 neighbour cross products.

    points: (N, H, W, 3); valid: (N, H, W) bool -> normals (4, N, H, W, 3) unit (or zero where degenerate),
    normal_valid (4, N, H, W). With u, l, d, r the vectors from a pixel to its up/left/down/right neighbour, the
    four normals are u x l, l x d, d x r, r x u; each needs the pixel and both neighbours valid (outside the image
    counts as invalid).
    """
    points = points
    padded = F.pad(points.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)   # (N, H+2, W+2, 3)
    pmask = F.pad(valid, (1, 1, 1, 1), value=False)                               # (N, H+2, W+2)
    center = padded[:, 1:-1, 1:-1]
    up, left = padded[:, :-2, 1:-1] - center, padded[:, 1:-1, :-2] - center
    down, right = padded[:, 2:, 1:-1] - center, padded[:, 1:-1, 2:] - center
    m_c, m_u, m_l = pmask[:, 1:-1, 1:-1], pmask[:, :-2, 1:-1], pmask[:, 1:-1, :-2]
    m_d, m_r = pmask[:, 2:, 1:-1], pmask[:, 1:-1, 2:]
    normals = torch.stack([torch.cross(up, left, dim=-1), torch.cross(left, down, dim=-1),
                           torch.cross(down, right, dim=-1), torch.cross(right, up, dim=-1)])
    normal_valid = torch.stack([m_u & m_c & m_l, m_l & m_c & m_d, m_d & m_c & m_r, m_r & m_c & m_u])
    return F.normalize(normals, dim=-1, eps=eps), normal_valid


def normal_loss(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Mean of 1 - cos(n_pred, n_gt) over the valid normals of :func:`point_map_normals`, the cosine clamped to
    [-1 + 1e-8, 1 - 1e-8]. pred, gt: (N, H, W, 3); valid: (N, H, W) -> scalar; zero with fewer than 10 normals."""
    pred_normals, pred_valid = point_map_normals(pred, valid)
    gt_normals, gt_valid = point_map_normals(gt, valid)
    both = pred_valid & gt_valid
    if int(both.sum()) < 10:
        return pred.sum() * 0.0
    cos = (pred_normals[both] * gt_normals[both]).sum(-1).clamp(-1 + NORMAL_COS_EPS, 1 - NORMAL_COS_EPS)
    return (1.0 - cos).mean()


def multi_scale(loss_fn, pred: Tensor, gt: Tensor, valid: Tensor, scales: int) -> Tensor:
    """Mean over s = 0..scales-1 of ``loss_fn`` on every 2^s-th row and column (plain subsampling)."""
    total = 0.0
    for s in range(scales):
        step = 2 ** s
        total = total + loss_fn(pred[:, ::step, ::step], gt[:, ::step, ::step], valid[:, ::step, ::step])
    return total / scales


def _zero_terms(pred: Tensor, suffix: str) -> dict[str, Tensor]:
    zero = pred.sum() * 0.0
    return {f"loss_conf_{suffix}": zero, f"loss_reg_{suffix}": zero, f"loss_grad_{suffix}": zero}


def depth_loss(depth: Tensor, depth_conf: Tensor, gt_depth: Tensor, valid: Tensor, gamma: float = 0.3,
               alpha: float = 0.06, quantile: float = 0.98, grad_scales: int = 4) -> dict[str, Tensor]:
    """Depth loss L_depth = L_conf + L_reg + L_grad (returned as three terms).

    depth: (B, S, H, W, 1) or (B, S, H, W); depth_conf, gt_depth: (B, S, H, W); valid: (B, S, H, W) bool.
    e_p = |d_pred - d_gt|; L_grad is the gradient-matching loss averaged over ``grad_scales`` scales, not
    confidence-weighted. All three are zero when the batch has fewer than 100 valid pixels.
    """
    B, S, H, W = gt_depth.shape
    pred = depth.reshape(B, S, H, W, 1)
    if int(valid.sum()) < MIN_VALID_POINTS:
        return _zero_terms(pred, "depth")
    gt = gt_depth[..., None]
    error = (pred[valid] - gt[valid]).norm(dim=-1)                            # (N,)
    loss_conf, loss_reg = confidence_regression(error, depth_conf[valid], gamma, alpha, quantile)
    loss_grad = multi_scale(gradient_loss, pred.reshape(B * S, H, W, 1), gt.reshape(B * S, H, W, 1),
                            valid.reshape(B * S, H, W), grad_scales)
    return {"loss_conf_depth": loss_conf, "loss_reg_depth": loss_reg, "loss_grad_depth": loss_grad}


def point_loss(points: Tensor, points_conf: Tensor, gt_points: Tensor, valid: Tensor, gamma: float = 1.0,
               alpha: float = 0.2, quantile: float = 0.98, normal_scales: int = 3) -> dict[str, Tensor]:
    """Point-map loss L_point = L_conf + L_reg + L_grad (returned as three terms).

    points, gt_points: (B, S, H, W, 3) in the frame-0 camera; points_conf: (B, S, H, W); valid: (B, S, H, W).
    e_p = ||X_pred - X_gt||_2; L_grad is :func:`normal_loss` averaged over ``normal_scales`` scales.
    """
    B, S, H, W, _ = gt_points.shape
    pred = points
    if int(valid.sum()) < MIN_VALID_POINTS:
        return _zero_terms(pred, "point")
    gt = gt_points
    error = (pred[valid] - gt[valid]).norm(dim=-1)                            # (N,)
    loss_conf, loss_reg = confidence_regression(error, points_conf[valid], gamma, alpha, quantile)
    loss_grad = multi_scale(normal_loss, pred.reshape(B * S, H, W, 3), gt.reshape(B * S, H, W, 3),
                            valid.reshape(B * S, H, W), normal_scales)
    return {"loss_conf_point": loss_conf, "loss_reg_point": loss_reg, "loss_grad_point": loss_grad}


# ----------------------------------------------------------------------------------------------------------------
# Dynamic mask (our addition; not in the official recipe)


def mask_loss(mask_logits: Tensor, gt_dynamic: Tensor, pos_weight: float = 1.0) -> Tensor:
    """Supervised dynamic-mask loss on the spatial mask head.

    mask_logits: (B, S, h, w) pre-sigmoid logits of the mask head, at patch resolution. The head's score is
    m = sigmoid(logit) - 0.5 and we read p = m + 0.5 = sigmoid(logit) as the probability that the pixel moves (the
    geometry stage's reading, ``stages/geometry/stage.py``). The official head is unsupervised and its sign has no
    established meaning; with this convention, switching the attention bias on would make the camera tokens favour
    moving patches, so a supervised tiny model keeps the bias off.
    gt_dynamic: (B, S, H, W) bool, True = moving. pos_weight: weight of the (rarer) moving pixels.

    The logits are upsampled bilinearly (align_corners=False) to (H, W) and the loss is the per-pixel binary cross
    entropy of p against the ground truth, averaged over all pixels. Upsampling the logits (rather than pooling the
    masks to patches) trains the full-resolution masks whose IoU we evaluate; the geometry stage upsamples the score
    the same way (bilinear), and the evaluation thresholds p at 0.5.
    """
    B, S, h, w = mask_logits.shape
    H, W = gt_dynamic.shape[-2:]
    logits = F.interpolate(mask_logits.reshape(B * S, 1, h, w), size=(H, W), mode="bilinear",
                           align_corners=False).reshape(B, S, H, W)
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, gt_dynamic.to(logits.dtype), pos_weight=weight)


# ----------------------------------------------------------------------------------------------------------------
# The objective


@dataclass
class LossConfig:
    """Loss weights and parameters; the defaults are the official PAGE-4D values (spec §12.3), mask loss off."""

    camera_weight: float = option(5.0, "Weight of the camera loss.")
    depth_weight: float = option(1.0, "Weight of the depth loss (confidence + regression + gradient terms).")
    point_weight: float = option(1.0, "Weight of the point-map loss (confidence + regression + normal terms).")
    mask_weight: float = option(0.0, "Weight of the supervised dynamic-mask loss (0 = off, as in the official "
                                "recipe; needs ground-truth masks).")
    camera_stage_decay: float = option(0.6, "Camera loss weight of refinement iteration k of K: decay^(K-k).")
    camera_translation_weight: float = option(1.0, "Camera loss: weight of the translation term.")
    camera_rotation_weight: float = option(1.0, "Camera loss: weight of the quaternion term.")
    camera_fov_weight: float = option(0.5, "Camera loss: weight of the field-of-view term.")
    camera_relative_rotation_weight: float = option(
        0.0, "Camera loss: weight of the consecutive frames' relative-rotation term (0 = off, as in the official "
        "recipe): L1 of the quaternions of q_{s+1} q_s^-1 against the truth's, the frame-to-frame drift that "
        "RPE-rot measures.")
    depth_gamma: float = option(0.3, "Depth: weight gamma of the confidence-weighted error gamma*e*c.")
    depth_alpha: float = option(0.06, "Depth: weight alpha of the confidence regulariser -alpha*log(c).")
    depth_grad_scales: int = option(4, "Depth: number of scales of the gradient-matching term.")
    point_gamma: float = option(1.0, "Points: weight gamma of the confidence-weighted error.")
    point_alpha: float = option(0.2, "Points: weight alpha of the confidence regulariser.")
    point_normal_scales: int = option(3, "Points: number of scales of the normal term.")
    quantile: float = option(0.98, "Outlier filter: per-pixel terms at or above this quantile are dropped "
                             "(when more than 1000 remain); <= 0 disables it.")
    mask_pos_weight: float = option(1.0, "Mask loss: weight of moving pixels in the binary cross entropy.")


def _widen(value):
    """float16/bfloat16 tensors (and lists of them) -> float32; anything else unchanged."""
    if isinstance(value, (list, tuple)):
        return [_widen(v) for v in value]
    if torch.is_tensor(value) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def objective(predictions: dict[str, Tensor], targets: dict[str, Tensor],
              config: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted total loss and its terms.

    predictions: the network's dict (``pose_enc_list``, ``depth``, ``depth_conf``, ``world_points``,
    ``world_points_conf`` and, for the mask loss, ``mask_logits`` (B, S, h, w)).
    targets (normalised, :func:`stages.geometry.page4d.normalize.normalize_targets`): ``pose_enc`` (B, S, 9),
    ``depth`` (B, S, H, W), ``world_points`` (B, S, H, W, 3), ``valid`` (B, S, H, W) bool and, for the mask loss,
    ``dynamic_mask`` (B, S, H, W) bool.
    Returns (total, terms) where terms holds every logged component (detached is up to the caller).
    """
    predictions = {key: _widen(value) for key, value in predictions.items()}
    valid = targets["valid"]
    terms: dict[str, Tensor] = {}
    total = predictions["depth"].sum() * 0.0
    if config.camera_weight:
        frame_valid = valid.flatten(2).sum(-1) > MIN_FRAME_POINTS                  # (B, S)
        terms.update(camera_loss(predictions["pose_enc_list"], targets["pose_enc"], frame_valid,
                                 config.camera_stage_decay, config.camera_translation_weight,
                                 config.camera_rotation_weight, config.camera_fov_weight,
                                 config.camera_relative_rotation_weight))
        total = total + config.camera_weight * terms["loss_camera"]
    if config.depth_weight:
        d = depth_loss(predictions["depth"], predictions["depth_conf"], targets["depth"], valid, config.depth_gamma,
                       config.depth_alpha, config.quantile, config.depth_grad_scales)
        terms.update(d)
        terms["loss_depth"] = d["loss_conf_depth"] + d["loss_reg_depth"] + d["loss_grad_depth"]
        total = total + config.depth_weight * terms["loss_depth"]
    if config.point_weight:
        p = point_loss(predictions["world_points"], predictions["world_points_conf"], targets["world_points"],
                       valid, config.point_gamma, config.point_alpha, config.quantile, config.point_normal_scales)
        terms.update(p)
        terms["loss_point"] = p["loss_conf_point"] + p["loss_reg_point"] + p["loss_grad_point"]
        total = total + config.point_weight * terms["loss_point"]
    if config.mask_weight:
        if "dynamic_mask" not in targets:
            raise ValueError("mask loss is on (mask_weight > 0) but the batch has no ground-truth dynamic masks")
        terms["loss_mask"] = mask_loss(predictions["mask_logits"], targets["dynamic_mask"], config.mask_pos_weight)
        total = total + config.mask_weight * terms["loss_mask"]
    terms["loss"] = total
    return total, terms
