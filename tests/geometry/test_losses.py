"""PAGE-4D training losses and ground-truth normalisation against values worked out by hand (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.geometry.page4d import losses
from stages.geometry.page4d.losses import LossConfig
from stages.geometry.page4d.normalize import invert_rigid, normalize_targets

f64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# Quantile filter


def test_quantile_filter_leaves_small_tensors_alone_even_above_the_clamp():
    values = torch.tensor([1.0, 500.0, 3.0], dtype=f64)
    assert torch.equal(losses.filter_by_quantile(values, 0.98), values)


def test_quantile_filter_drops_the_top_two_percent():
    values = torch.arange(3000, dtype=f64) * 0.01                 # 0.00 .. 29.99, shuffled below
    values = values[torch.randperm(3000, generator=torch.Generator().manual_seed(0))]
    kept = losses.filter_by_quantile(values, 0.98)
    # rank round(0.98 * 2999) = 2939 -> threshold 29.39; the 2939 values 0.00 .. 29.38 lie strictly below it.
    assert kept.numel() == 2939
    assert kept.mean().item() == pytest.approx(0.01 * 2938 / 2, rel=1e-12)


def test_quantile_filter_keeps_everything_when_too_few_would_remain():
    values = torch.arange(2000, dtype=f64) * 0.1                  # 0.0 .. 199.9
    kept = losses.filter_by_quantile(values, 0.98)
    # Clamped at 100: the threshold is 100 and only the 1000 values 0.0 .. 99.9 lie below it (not > 1000), so the
    # clamped tensor is kept whole.
    assert kept.numel() == 2000
    expected = (sum(0.1 * i for i in range(1000)) + 1000 * 100.0) / 2000
    assert kept.mean().item() == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Camera


def test_camera_loss_hand_computed():
    gt = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.2],
                        [1.0, 2.0, 3.0, 0.1, 0.2, 0.3, 0.9, 0.8, 0.9]]], dtype=f64)            # (1, 2, 9)
    stage1 = gt.clone()
    stage1[0, 0, 0] += 300.0          # translation error 300 -> clamped to 100
    stage1[0, 0, 3] -= 0.4            # quaternion error 0.4
    stage1[0, 1] += 50.0              # frame 1 is invalid: ignored whatever its error
    stage2 = gt.clone()
    stage2[0, 0, 7] += 0.2            # FoV error 0.2
    stage2[0, 0, 1] -= 0.3            # translation error 0.3
    valid = torch.tensor([[True, False]])
    out = losses.camera_loss([stage1, stage2], gt, valid, stage_decay=0.6)
    # Stage 1 (weight 0.6): L_T = 100 / 3, L_R = 0.4 / 4, L_FoV = 0. Stage 2 (weight 1): L_T = 0.3 / 3, L_R = 0,
    # L_FoV = 0.2 / 2. Averaged over the 2 stages.
    loss_T = (0.6 * 100 / 3 + 0.3 / 3) / 2
    loss_R = (0.6 * 0.1) / 2
    loss_fov = 0.1 / 2
    assert out["loss_T"].item() == pytest.approx(loss_T, rel=1e-12)
    assert out["loss_R"].item() == pytest.approx(loss_R, rel=1e-12)
    assert out["loss_FoV"].item() == pytest.approx(loss_fov, rel=1e-12)
    assert out["loss_camera"].item() == pytest.approx(loss_T + loss_R + 0.5 * loss_fov, rel=1e-12)


def test_camera_loss_with_no_valid_frame_is_a_differentiable_zero():
    pred = torch.randn(1, 3, 9, dtype=f64, requires_grad=True)
    out = losses.camera_loss([pred] * 4, torch.zeros(1, 3, 9, dtype=f64), torch.zeros(1, 3, dtype=torch.bool))
    out["loss_camera"].backward()
    assert out["loss_camera"].item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def _z_rotation(degrees: float) -> list[float]:
    """Quaternion [x, y, z, w] of a rotation about z."""
    half = math.radians(degrees) / 2
    return [0.0, 0.0, math.sin(half), math.cos(half)]


def test_relative_rotation_error_hand_computed():
    # Truth: the camera turns 10 degrees about z per frame; prediction: 12 then 8 (right at the end, wrong between).
    gt = torch.tensor([[_z_rotation(0), _z_rotation(10), _z_rotation(20)]], dtype=f64)       # (1, 3, 4)
    pred = torch.tensor([[_z_rotation(0), _z_rotation(12), _z_rotation(20)]], dtype=f64)
    pairs = torch.tensor([[True, True]])
    s5, c5 = math.sin(math.radians(5)), math.cos(math.radians(5))
    s6, c6 = math.sin(math.radians(6)), math.cos(math.radians(6))
    s4, c4 = math.sin(math.radians(4)), math.cos(math.radians(4))
    expected = (abs(s6 - s5) + abs(c6 - c5) + abs(s4 - s5) + abs(c4 - c5)) / 8        # 2 pairs x 4 components
    assert losses.relative_rotation_error(pred, gt, pairs).item() == pytest.approx(expected, rel=1e-12)
    # q and -q are one rotation, and the prediction is normalised first.
    flipped = pred.clone()
    flipped[0, 1] *= -3.0
    assert losses.relative_rotation_error(flipped, gt, pairs).item() == pytest.approx(expected, rel=1e-12)
    # Only valid pairs count: the second pair alone.
    second = (abs(s4 - s5) + abs(c4 - c5)) / 4
    only_second = torch.tensor([[False, True]])
    assert losses.relative_rotation_error(pred, gt, only_second).item() == pytest.approx(second, rel=1e-12)


def test_relative_rotation_error_ignores_a_rotation_of_the_world():
    generator = torch.Generator().manual_seed(0)
    gt = torch.nn.functional.normalize(torch.randn(2, 5, 4, dtype=f64, generator=generator), dim=-1)
    world = torch.nn.functional.normalize(torch.randn(4, dtype=f64, generator=generator), dim=0)
    pred = losses.quaternion_product(gt, world.expand(2, 5, 4))   # world-to-camera after turning the world
    assert (pred - gt).abs().mean() > 0.01                       # the per-frame term sees the turn ...
    assert losses.relative_rotation_error(pred, gt, torch.ones(2, 4, dtype=torch.bool)).item() < 1e-12  # ... not this


def test_camera_loss_adds_the_weighted_relative_term_over_the_stages():
    gt = torch.zeros(1, 3, 9, dtype=f64)
    gt[0, :, 3:7] = torch.tensor([_z_rotation(0), _z_rotation(10), _z_rotation(20)], dtype=f64)
    stage1, stage2 = gt.clone(), gt.clone()
    stage1[0, 1, 3:7] = torch.tensor(_z_rotation(12), dtype=f64)
    valid = torch.tensor([[True, True, False]])             # frame 2 invalid: only the pair (0, 1) counts
    out = losses.camera_loss([stage1, stage2], gt, valid, stage_decay=0.6, weight_relative_rotation=3.0)
    s5, c5 = math.sin(math.radians(5)), math.cos(math.radians(5))
    s6, c6 = math.sin(math.radians(6)), math.cos(math.radians(6))
    relative = 0.6 * (abs(s6 - s5) + abs(c6 - c5)) / 4 / 2           # stage 1 only (weight 0.6), 2 stages
    absolute = 0.6 * (abs(s6 - s5) + abs(c6 - c5)) / 8 / 2            # frames 0 and 1, 4 components each
    assert out["loss_Rrel"].item() == pytest.approx(relative, rel=1e-12)
    assert out["loss_R"].item() == pytest.approx(absolute, rel=1e-12)
    assert out["loss_camera"].item() == pytest.approx(absolute + 3.0 * relative, rel=1e-12)
    assert "loss_Rrel" not in losses.camera_loss([stage1, stage2], gt, valid)      # off by default
    # A single valid frame has no pair: the term is a differentiable zero.
    pred = gt.clone().requires_grad_(True)
    lone = losses.camera_loss([pred], gt, torch.tensor([[True, False, False]]), weight_relative_rotation=1.0)
    lone["loss_camera"].backward()
    assert lone["loss_Rrel"].item() == 0.0 and torch.isfinite(pred.grad).all()


# ----------------------------------------------------------------------------------------------------------------
# Depth and points


def test_confidence_regression_hand_computed():
    error = torch.tensor([1.0, 2.0, 150.0], dtype=f64)
    conf = torch.tensor([1.0, math.e, 1e-9], dtype=f64)
    loss_conf, loss_reg = losses.confidence_regression(error, conf, gamma=0.3, alpha=0.06, quantile=0.98)
    # Errors clamp at 100, confidences at 1e-6; 3 elements: no quantile filtering.
    terms = [0.3 * 1 * 1 - 0.06 * 0.0, 0.3 * 2 * math.e - 0.06 * 1.0, 0.3 * 100 * 1e-6 - 0.06 * math.log(1e-6)]
    assert loss_conf.item() == pytest.approx(sum(terms) / 3, rel=1e-12)
    assert loss_reg.item() == pytest.approx((1 + 2 + 100) / 3, rel=1e-12)


def test_gradient_loss_single_scale_with_invalid_pixel():
    gt = torch.zeros(1, 2, 3, 1, dtype=f64)
    pred = torch.tensor([[1.0, 2.0, 4.0], [0.0, 5.0, 1.0]], dtype=f64).reshape(1, 2, 3, 1)
    valid = torch.tensor([[[True, True, True], [True, False, True]]])
    # Residual r = pred (gt is 0) with the invalid pixel zeroed. Horizontal pairs with both pixels valid:
    # (1,2) -> 1, (2,4) -> 2; row 2 has none. Vertical: col 0 (1,0) -> 1, col 2 (4,1) -> 3. 5 valid pixels.
    assert losses.gradient_loss(pred, gt, valid).item() == pytest.approx((1 + 2 + 1 + 3) / 5, rel=1e-12)


def test_depth_loss_on_a_ramp_residual():
    H = W = 10
    a = 0.05
    gt = torch.linspace(1.0, 3.0, H * W, dtype=f64).reshape(1, 1, H, W)
    col = torch.arange(W, dtype=f64).expand(H, W)
    pred = (gt + a * col).unsqueeze(-1)                                       # (1, 1, H, W, 1)
    conf = torch.full((1, 1, H, W), 2.0, dtype=f64)
    valid = torch.ones(1, 1, H, W, dtype=torch.bool)
    out = losses.depth_loss(pred, conf, gt, valid, gamma=0.3, alpha=0.06, quantile=0.98, grad_scales=4)
    # e = a * col, mean 4.5 a; 100 pixels, so no quantile filtering.
    assert out["loss_reg_depth"].item() == pytest.approx(4.5 * a, rel=1e-12)
    assert out["loss_conf_depth"].item() == pytest.approx(0.3 * 2 * 4.5 * a - 0.06 * math.log(2), rel=1e-12)
    # Scale s keeps every 2^s-th row/column: n = 10, 5, 3, 2 pixels a side; n rows x (n-1) horizontal pairs of
    # |difference| a * 2^s, divided by n^2 valid pixels; vertical differences are 0.
    per_scale = [n * (n - 1) * a * 2**s / n**2 for s, n in enumerate([10, 5, 3, 2])]
    assert out["loss_grad_depth"].item() == pytest.approx(sum(per_scale) / 4, rel=1e-12)


def test_depth_loss_needs_100_valid_pixels():
    pred = torch.rand(1, 1, 10, 10, 1, dtype=f64, requires_grad=True)
    valid = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    valid[0, 0, 0, 0] = False
    out = losses.depth_loss(pred, torch.ones(1, 1, 10, 10, dtype=f64), torch.zeros(1, 1, 10, 10, dtype=f64), valid)
    assert all(v.item() == 0.0 for v in out.values())


def _plane(H, W, slope):
    """Points (x, y, slope * x) on a pixel grid x = column, y = row: (1, H, W, 3)."""
    y, x = torch.meshgrid(torch.arange(H, dtype=f64), torch.arange(W, dtype=f64), indexing="ij")
    return torch.stack([x, y, slope * x], dim=-1)[None]


def test_normals_of_a_plane_and_their_validity():
    normals, valid = losses.point_map_normals(_plane(3, 3, 0.0), torch.ones(1, 3, 3, dtype=torch.bool))
    # up = (0,-1,0), left = (-1,0,0): up x left = (0,0,-1); the four products agree on a plane.
    assert torch.allclose(normals[valid], torch.tensor([0.0, 0.0, -1.0], dtype=f64).expand(16, 3))
    # Each of the 4 products needs two neighbours inside the image: 2 x 2 pixels each on a 3 x 3 grid.
    assert valid.sum().item() == 16 and valid[0, 0, 1:, 1:].all() and not valid[0, 0, 0].any()


def test_normal_loss_between_tilted_planes():
    slope = 0.75
    gt, pred = _plane(16, 16, 0.0), _plane(16, 16, slope)
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    # The tilted plane's normal is (slope, 0, -1)/sqrt(1 + slope^2) at every scale: cos = 1/sqrt(1 + slope^2).
    expected = 1.0 - 1.0 / math.sqrt(1.0 + slope**2)
    assert losses.normal_loss(pred, gt, valid).item() == pytest.approx(expected, rel=1e-12)
    assert losses.multi_scale(losses.normal_loss, pred, gt, valid, 3).item() == pytest.approx(expected, rel=1e-12)


def test_point_loss_hand_computed():
    gt = _plane(10, 10, 0.0).unsqueeze(0)                                     # (1, 1, 10, 10, 3)
    offset = torch.tensor([0.3, 0.0, 0.4], dtype=f64)                         # |offset| = 0.5
    conf = torch.full((1, 1, 10, 10), 3.0, dtype=f64)
    valid = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    out = losses.point_loss(gt + offset, conf, gt, valid, gamma=1.0, alpha=0.2)
    assert out["loss_reg_point"].item() == pytest.approx(0.5, rel=1e-12)
    assert out["loss_conf_point"].item() == pytest.approx(1.0 * 0.5 * 3 - 0.2 * math.log(3), rel=1e-12)
    # A translated plane has the same normals: 1 - cos is 0, up to the cosine clamp at 1 - 1e-8.
    assert out["loss_grad_point"].item() == pytest.approx(1e-8, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Mask


def test_mask_loss_hand_computed():
    logit = 0.7
    logits = torch.full((1, 1, 1, 1), logit, dtype=f64)                      # upsampled to a constant 2 x 2 map
    gt = torch.tensor([[[[True, False], [False, False]]]])
    # p(moving) = sigmoid(logit); BCE averaged over the 4 pixels, moving pixels weighted by 2.
    p = 1.0 / (1.0 + math.exp(-logit))
    expected = (-2.0 * math.log(p) - 3.0 * math.log(1.0 - p)) / 4
    assert losses.mask_loss(logits, gt, pos_weight=2.0).item() == pytest.approx(expected, rel=1e-12)


def test_mask_loss_upsamples_bilinearly():
    logits = torch.tensor([[[[-4.0, 4.0]]]], dtype=f64)                      # (1, 1, 1, 2) -> (1, 1, 1, 4)
    gt = torch.tensor([[[[True, True, False, False]]]])
    # align_corners=False, 2 -> 4: output x samples input at (x + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25, i.e.
    # -4, -2, 2, 4 after edge clamping and linear interpolation.
    up = torch.tensor([-4.0, -2.0, 2.0, 4.0], dtype=f64)
    p = 1.0 / (1.0 + torch.exp(-up))                                          # sigmoid(logit)
    expected = -(torch.log(p[:2]).sum() + torch.log(1 - p[2:]).sum()) / 4
    assert losses.mask_loss(logits, gt).item() == pytest.approx(expected.item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Objective


def test_objective_weights_and_widens_half_precision():
    torch.manual_seed(0)
    B, S, H, W = 1, 2, 12, 12
    targets = {"pose_enc": torch.randn(B, S, 9), "depth": torch.rand(B, S, H, W) + 1,
               "world_points": torch.randn(B, S, H, W, 3), "valid": torch.ones(B, S, H, W, dtype=torch.bool),
               "dynamic_mask": torch.rand(B, S, H, W) > 0.7}
    predictions = {"pose_enc_list": [torch.randn(B, S, 9).bfloat16() for _ in range(4)],
                   "depth": (torch.rand(B, S, H, W, 1) + 1).bfloat16(), "depth_conf": torch.rand(B, S, H, W) + 1,
                   "world_points": torch.randn(B, S, H, W, 3), "world_points_conf": torch.rand(B, S, H, W) + 1,
                   "mask_logits": torch.randn(B, S, 3, 3)}
    config = LossConfig(mask_weight=0.5)
    total, terms = losses.objective(predictions, targets, config)
    assert total.dtype == torch.float32
    expected = 5.0 * terms["loss_camera"] + terms["loss_depth"] + terms["loss_point"] + 0.5 * terms["loss_mask"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    depth_terms = losses.depth_loss(predictions["depth"].float(), predictions["depth_conf"], targets["depth"],
                                    targets["valid"])
    assert terms["loss_depth"].item() == pytest.approx(sum(v.item() for v in depth_terms.values()), rel=1e-6)
    with pytest.raises(ValueError, match="dynamic masks"):
        losses.objective(predictions, {k: v for k, v in targets.items() if k != "dynamic_mask"}, config)


# ----------------------------------------------------------------------------------------------------------------
# Ground-truth normalisation


def _random_w2c(rng, n):
    out = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        out[i, :3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                          [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                          [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
        out[i, :3, 3] = rng.normal(size=3) * 3
    return torch.from_numpy(out)


def test_normalize_targets_frame0_world_unit_mean_distance_and_consistency(rng):
    B, S, H, W = 2, 3, 4, 5
    w2c = torch.stack([_random_w2c(rng, S) for _ in range(B)])                # (B, S, 4, 4)
    points = torch.from_numpy(rng.normal(size=(B, S, H, W, 3)) * 4)
    valid = torch.from_numpy(rng.random((B, S, H, W)) > 0.3)
    cam = torch.einsum("bsij,bshwj->bshwi", w2c[..., :3, :3], points) + w2c[:, :, None, None, :3, 3]
    depth = cam[..., 2]
    out = normalize_targets(w2c, points, depth, valid)

    assert torch.allclose(out.world_to_camera[:, 0], torch.eye(4, dtype=f64).expand(B, 4, 4), atol=1e-12)
    # Points are in the frame-0 camera, divided by the mean distance of the valid ones (slow reference).
    for b in range(B):
        in_cam0 = points[b] @ w2c[b, 0, :3, :3].T + w2c[b, 0, :3, 3]
        dists = [in_cam0[s, i, j].norm().item() for s in range(S) for i in range(H) for j in range(W)
                 if valid[b, s, i, j]]
        scale = sum(dists) / (len(dists) + 1e-3)
        assert out.scale[b].item() == pytest.approx(scale, rel=1e-12)
        assert torch.allclose(out.world_points[b], in_cam0 / scale, atol=1e-12)
    # The normalised cameras see the normalised points where the original cameras saw the original ones, scaled.
    cam_norm = torch.einsum("bsij,bshwj->bshwi", out.world_to_camera[..., :3, :3], out.world_points) \
        + out.world_to_camera[:, :, None, None, :3, 3]
    assert torch.allclose(cam_norm, cam / out.scale.view(B, 1, 1, 1, 1), atol=1e-10)
    assert torch.allclose(out.depth, cam_norm[..., 2], atol=1e-10)
    # Rotations stay rotations: the last row is untouched and R R^T = I.
    R = out.world_to_camera[..., :3, :3]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=f64).expand_as(R), atol=1e-12)


def test_normalize_targets_is_invariant_to_a_similarity_of_the_world(rng):
    S, H, W = 3, 4, 4
    w2c = _random_w2c(rng, S)[None]
    points = torch.from_numpy(rng.normal(size=(1, S, H, W, 3)))
    valid = torch.ones(1, S, H, W, dtype=torch.bool)
    cam = torch.einsum("bsij,bshwj->bshwi", w2c[..., :3, :3], points) + w2c[:, :, None, None, :3, 3]
    reference = normalize_targets(w2c, points, cam[..., 2], valid)
    # World x' = k Q x + u: cameras become R Q^T, k t - R Q^T u (see pipeline.cameras.Sim3.transform_w2c).
    k, Q, u = 7.0, _random_w2c(rng, 1)[0, :3, :3], torch.tensor([1.0, -2.0, 0.5], dtype=f64)
    w2c2 = w2c.clone()
    w2c2[..., :3, :3] = w2c[..., :3, :3] @ Q.T
    w2c2[..., :3, 3] = k * w2c[..., :3, 3] - torch.einsum("bsij,j->bsi", w2c2[..., :3, :3], u)
    moved = normalize_targets(w2c2, k * points @ Q.T + u, k * cam[..., 2], valid)
    assert moved.scale.item() == pytest.approx(k * reference.scale.item(), rel=1e-12)
    for a, b in zip(moved[:3], reference[:3]):
        assert torch.allclose(a, b, atol=1e-10)


def test_invert_rigid(rng):
    w2c = _random_w2c(rng, 4)
    assert torch.allclose(invert_rigid(w2c), torch.linalg.inv(w2c), atol=1e-12)
