"""Direct photometric camera refinement (stages/geometry/photometric.py) on the ray-cast room with exact depth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from stages.evaluate.pose_metrics import pose_errors
from stages.geometry.photometric import (PhotometricParams, corrected_world_to_camera, frame_pairs,
                                         photometric_residuals, refine_cameras, rotation_matrices,
                                         scaled_focal)
from tests.geometry.raycast_scene import render

FAST = PhotometricParams(levels=2, iterations=40, joint_iterations=40, pixels_per_frame=768)


def perturbed(world_to_camera: np.ndarray, degrees: float, translation: float, seed: int = 0) -> np.ndarray:
    """Every camera but the first moved by a random rotation of ``degrees`` and a random shift of ``translation``."""
    generator = np.random.default_rng(seed)
    out = world_to_camera.copy()
    for k in range(1, len(out)):
        axis = generator.normal(size=3)
        rotation = Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()
        shift = generator.normal(size=3)
        out[k, :3, :3] = rotation @ out[k, :3, :3]
        out[k, :3, 3] = rotation @ out[k, :3, 3] + translation * shift / np.linalg.norm(shift)
    return out


def smooth_colours(depth: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """(S, H, W, 3) colours of a smooth pattern fixed on the room's walls (the ray-cast room's checker is aliased at
    this size, which no bilinear sampling reproduces), the moving sphere plain red."""
    S, H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W] + 0.5
    rays = np.stack([(u - K[0, 0, 2]) / K[0, 0, 0], (v - K[0, 1, 2]) / K[0, 1, 1], np.ones_like(u)], -1)
    camera_points = rays[None] * depth[..., None]                                  # (S, H, W, 3)
    R, t = world_to_camera[:, :3, :3], world_to_camera[:, :3, 3]
    world = np.einsum("sji,shwj->shwi", R, camera_points - t[:, None, None])      # R^T (x - t)
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    colours = np.stack([0.5 + 0.3 * np.sin(2.1 * x + 1.3 * z) * np.cos(1.7 * y),
                        0.5 + 0.3 * np.cos(1.9 * y - 0.8 * x + 0.5 * z),
                        0.5 + 0.2 * np.sin(1.3 * z + 2.3 * y) + 0.1 * np.cos(3.1 * x)], -1)
    return np.where(moving[..., None], np.array([0.9, 0.15, 0.1]), colours).astype(np.float32)


@pytest.fixture(scope="module")
def room():
    depth, K, world_to_camera, moving, _ = render(frames=8, width=96, height=72)
    rgb = smooth_colours(depth, K, world_to_camera, moving)
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(depth), torch.from_numpy(K).float(), world_to_camera, moving


def test_rotation_matrices_match_scipy():
    vectors = torch.tensor([[0.0, 0.0, 0.0], [1e-5, -2e-5, 3e-5], [0.3, -0.2, 0.5], [2.0, 1.0, -1.5]],
                           dtype=torch.float64)
    expected = Rotation.from_rotvec(vectors.numpy()).as_matrix()
    np.testing.assert_allclose(rotation_matrices(vectors).numpy(), expected, atol=1e-12)


def test_corrections_apply_on_the_left():
    world_to_camera = torch.from_numpy(perturbed(np.tile(np.eye(4), (2, 1, 1)), 10.0, 0.5))
    correction = torch.tensor([[0.0] * 6, [0.1, -0.2, 0.05, 0.3, 0.0, -0.1]], dtype=torch.float64)
    out = corrected_world_to_camera(world_to_camera, correction, translation_unit=2.0).numpy()
    R = Rotation.from_rotvec(correction[1, :3].numpy()).as_matrix()
    expected = np.eye(4)
    expected[:3, :3] = R
    expected[:3, 3] = 2.0 * correction[1, 3:].numpy()
    np.testing.assert_allclose(out[1], expected @ world_to_camera[1].numpy(), atol=1e-12)
    np.testing.assert_allclose(out[0], world_to_camera[0].numpy(), atol=1e-12)


def test_frame_pairs_link_both_directions_inside_the_sequence():
    pairs = frame_pairs(5, (1, 4, 8))
    assert sorted(map(tuple, pairs)) == sorted([(0, 1), (1, 2), (2, 3), (3, 4), (0, 4),
                                                (1, 0), (2, 1), (3, 2), (4, 3), (4, 0)])


def test_true_cameras_give_near_zero_residuals_on_static_pixels(room):
    images, depth, K, world_to_camera, moving = room
    S, C, H, W = images.shape
    pixels = torch.arange(H * W).reshape(1, -1).expand(S, -1)
    flat = images.permute(0, 2, 3, 1).reshape(S * H * W, C)
    pairs = torch.as_tensor(frame_pairs(S, (1,)))
    residual, valid = photometric_residuals(torch.from_numpy(world_to_camera).float(), torch.zeros(S, 2), flat,
                                            depth, K, pairs, pixels)
    static = ~torch.from_numpy(moving).reshape(S, -1)[pairs[:, 0]]
    assert residual.abs().amax(-1)[valid & static].median() < 0.01
    wrong = perturbed(world_to_camera, 3.0, 0.0)
    residual_wrong, valid_wrong = photometric_residuals(torch.from_numpy(wrong).float(), torch.zeros(S, 2), flat,
                                                        depth, K, pairs, pixels)
    assert residual_wrong.abs().amax(-1)[valid_wrong & static].mean() > 3 * residual.abs().amax(-1)[valid & static].mean()


def test_refinement_recovers_perturbed_cameras_despite_a_mover(room):
    images, depth, K, world_to_camera, moving = room
    start = perturbed(world_to_camera, 2.0, 0.05)
    weight = torch.ones_like(depth)                                # the moving sphere is left to the robust cost
    refined, intrinsics, record = refine_cameras(images, depth, weight, K, start, FAST)
    before, after = pose_errors(start, world_to_camera), pose_errors(refined, world_to_camera)
    assert record["focal_scale"] == 1.0 and "focal_search" not in record        # no focal search by default
    np.testing.assert_array_equal(intrinsics, K.double().numpy())
    assert record["kept"] and record["cost_after"] < 0.5 * record["cost_before"]
    assert before.rpe_rot_deg > 2.0
    assert after.rpe_rot_deg < 0.2 and after.ate < 0.2 * before.ate
    np.testing.assert_allclose(refined[0], start[0])               # frame 0 is the world


def test_refinement_leaves_right_cameras_nearly_unchanged(room):
    images, depth, K, world_to_camera, moving = room
    weight = torch.from_numpy(~moving).float()
    refined, _, record = refine_cameras(images, depth, weight, K, world_to_camera, FAST)
    assert record["rotation_change_deg"]["max"] < 0.1
    assert pose_errors(refined, world_to_camera).ate < 0.01


def test_one_frame_is_returned_as_it_is(room):
    images, depth, K, world_to_camera, _ = room
    refined, _, record = refine_cameras(images[:1], depth[:1], torch.ones_like(depth[:1]), K[:1], world_to_camera[:1])
    assert not record["kept"]
    np.testing.assert_array_equal(refined, world_to_camera[:1])


def test_non_finite_intrinsics_leave_the_cameras_as_they_are(room):
    images, depth, K, world_to_camera, _ = room
    broken = K.clone()
    broken[:, 1, 1] = float("inf")                  # a random network's field of view can overflow
    start = perturbed(world_to_camera, 2.0, 0.05)
    refined, _, record = refine_cameras(images, depth, torch.ones_like(depth), broken, start, FAST)
    assert not record["kept"] and "non-finite" in record["reason"]
    np.testing.assert_array_equal(refined, start)


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def test_constant_exposure_keeps_gains_near_one_under_noise(room):
    # a one-sided a_t I_t - a_s I_s residual let noise shrink every gain below its predecessor's (0.87 by frame 7)
    images, depth, K, world_to_camera, _ = room
    _, _, record = refine_cameras(noisy(images, 0.05), depth, torch.ones_like(depth), K,
                               perturbed(world_to_camera, 2.0, 0.05), FAST)
    assert np.allclose(record["exposure_gain"], 1.0, atol=0.03)


def test_exposure_follows_a_brightening_video(room):
    images, depth, K, world_to_camera, _ = room
    brighter = (images * torch.linspace(1.0, 1.35, len(images))[:, None, None, None]).clamp(0, 1)
    start = perturbed(world_to_camera, 2.0, 0.05)
    refined, _, record = refine_cameras(brighter, depth, torch.ones_like(depth), K, start, FAST)
    relative = 1.0 / np.asarray(record["exposure_gain"])             # the gain maps a frame back onto frame 0
    assert relative[-1] > 1.15 and np.all(np.diff(relative[1:]) > 0)
    assert pose_errors(refined, world_to_camera).rpe_rot_deg < 0.2


def test_frames_without_source_pixels(room):
    images, depth, K, world_to_camera, moving = room
    start = perturbed(world_to_camera, 2.0, 0.05)
    weight = torch.ones_like(depth)
    weight[3] = 0.0                                      # frame 3 is no source, but still a target of the others
    refined, _, record = refine_cameras(images, depth, weight, K, start, FAST)
    assert record["kept"] and pose_errors(refined, world_to_camera).rpe_rot_deg < 0.3
    refined, _, record = refine_cameras(images, depth, torch.zeros_like(depth), K, start, FAST)
    assert not record["kept"] and "no pixel" in record["reason"]
    np.testing.assert_array_equal(refined, start)


def test_scaled_focal_scales_fx_and_fy_only():
    K = torch.tensor([[[100.0, 0.5, 40.0], [0.0, 90.0, 30.0], [0.0, 0.0, 1.0]]]).expand(2, 3, 3)
    out = scaled_focal(K, torch.tensor([np.log(1.25)], dtype=torch.float32))
    expected = K.clone()
    expected[:, 0, 0] *= 1.25
    expected[:, 1, 1] *= 1.25
    torch.testing.assert_close(out, expected)


def test_focal_search_recovers_a_wrong_focal_length(room):
    # the network's field of view is off by several degrees (page4d-tiny: 8.5 on rooms); here every focal length
    # is 20 % too long and the poses are perturbed: the search finds the factor, and the poses follow
    images, depth, K, world_to_camera, _ = room
    wrong = K.clone()
    wrong[:, :2, :2] *= 1.2
    start = perturbed(world_to_camera, 2.0, 0.05)
    params = dataclasses.replace(FAST, focal=True, iterations=20, joint_iterations=20, pixels_per_frame=512)
    refined, intrinsics, record = refine_cameras(images, depth, torch.ones_like(depth), wrong, start, params)
    assert record["kept"] and 1.0 in [round(f, 6) for f in record["focal_search"]["factors"]]
    assert abs(record["focal_scale"] * 1.2 - 1.0) < 0.05                      # 1/1.2 = 0.833 wanted
    np.testing.assert_allclose(intrinsics[:, 0, 0], K[:, 0, 0].double().numpy() * 1.2 * record["focal_scale"],
                               rtol=1e-6)
    np.testing.assert_allclose(intrinsics[:, :2, 2], K[:, :2, 2].double().numpy())
    assert pose_errors(refined, world_to_camera).rpe_rot_deg < 0.5

