"""Pose (ATE, RPE), depth (Abs Rel, delta < 1.25 with per-sequence scale) and dynamic-mask IoU metrics."""

import math

import numpy as np
import pytest
from scipy.optimize import least_squares, minimize_scalar
from scipy.spatial.transform import Rotation

from pipeline.cameras import Sim3, look_at_w2c
from stages.evaluate.depth_metrics import depth_errors, fit_scale
from stages.evaluate.mask_metrics import mask_iou
from stages.evaluate.pose_metrics import camera_to_world, pose_errors, rotation_angle_rad


def trajectory(n=24):
    angles = np.linspace(0.0, 2.5, n)
    return np.stack([look_at_w2c(np.array([3 * np.cos(a), 3 * np.sin(a), 1 + 0.4 * np.sin(3 * a)]), np.zeros(3))
                     for a in angles])


def test_sim3_transformed_trajectory_has_zero_error():
    reference = trajectory()
    sim3 = Sim3(2.7, Rotation.from_rotvec([0.3, -1.1, 0.5]).as_matrix(), np.array([1.0, -2.0, 0.5]))
    estimate = np.stack([sim3.transform_w2c(w) for w in reference])  # the same cameras in another world
    errors = pose_errors(estimate, reference)
    assert errors.ate < 1e-12 and errors.rpe_trans < 1e-12 and errors.rpe_rot_deg < 1e-9
    assert errors.alignment.scale == pytest.approx(1 / 2.7, rel=1e-12)


def test_ate_equals_brute_force_sim3_minimum(rng):
    reference = trajectory()
    sim3 = Sim3(0.5, Rotation.from_rotvec([0.2, 0.1, -0.7]).as_matrix(), np.array([0.3, 0.2, -1.0]))
    estimate = np.stack([sim3.transform_w2c(w) for w in reference])
    c2w = camera_to_world(estimate)
    c2w[:, :3, 3] += 0.05 * rng.standard_normal((len(c2w), 3))
    estimate = np.linalg.inv(c2w)
    ref_centres = camera_to_world(reference)[:, :3, 3]

    def residual(params):
        s, rotvec, t = math.exp(params[0]), params[1:4], params[4:]
        return (s * c2w[:, :3, 3] @ Rotation.from_rotvec(rotvec).as_matrix().T + t - ref_centres).ravel()

    init = np.concatenate([[math.log(2.0)], Rotation.from_matrix(sim3.rotation.T).as_rotvec(), np.zeros(3)])
    best = least_squares(residual, init, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    brute_ate = math.sqrt(np.mean(np.sum(best.fun.reshape(-1, 3) ** 2, axis=1)))
    assert pose_errors(estimate, reference).ate == pytest.approx(brute_ate, rel=1e-7)
    assert brute_ate > 0.01


def test_rpe_of_a_known_rotation_perturbation():
    """Rotating one camera about its own centre by theta leaves the centres (so the alignment and ATE) unchanged;
    the two pairs touching it get rotation error theta, and pair (k, k+1) a translation error |(R_d^T - I) b|."""
    reference = trajectory(12)
    c2w = camera_to_world(reference)
    k, theta = 5, math.radians(3.0)
    delta = Rotation.from_rotvec(theta * np.array([0.0, 0.6, 0.8])).as_matrix()
    perturbed = c2w.copy()
    perturbed[k, :3, :3] = c2w[k, :3, :3] @ delta
    errors = pose_errors(np.linalg.inv(perturbed), reference)
    assert errors.ate < 1e-12
    n_pairs = len(reference) - 1
    assert errors.rpe_rot_deg == pytest.approx(math.degrees(math.sqrt(2 * theta**2 / n_pairs)), rel=1e-9)
    b = (np.linalg.inv(c2w[k]) @ c2w[k + 1])[:3, 3]                   # relative translation k -> k+1
    expected = np.linalg.norm((delta.T - np.eye(3)) @ b)
    assert errors.rpe_trans == pytest.approx(math.sqrt(expected**2 / n_pairs), rel=1e-9)


def test_rotation_angle_is_accurate_near_zero_and_pi():
    for angle in (1e-9, 1e-4, 0.5, math.pi - 1e-7):
        R = Rotation.from_rotvec(angle * np.array([0.0, 0.0, 1.0])).as_matrix()
        assert rotation_angle_rad(R) == pytest.approx(angle, rel=1e-6)


def test_depth_scale_alignment_recovers_a_known_scale(rng):
    gt = [rng.uniform(1.0, 5.0, (6, 8)) for _ in range(3)]
    gt[0][0, :3] = 0.0                                       # invalid pixels are ignored
    prediction = [d / 3.0 for d in gt]
    prediction[0][0, :3] = 123.0
    for method in ("scale", "median"):
        result = depth_errors(prediction, gt, method)
        assert result["scale"] == pytest.approx(3.0, rel=1e-9)
        assert result["abs_rel"] < 1e-9 and result["delta_1.25"] == 1.0
        assert result["valid_pixels"] == 3 * 48 - 3


def test_irls_scale_is_the_l1_optimum_and_metrics_follow_the_definition(rng):
    d = rng.uniform(1.0, 4.0, 500)
    d_hat = d / 2.0 * np.exp(0.2 * rng.standard_normal(500))
    d_hat[:20] *= 5.0                                        # outliers: the L1 fit ignores them
    l1 = lambda s: np.abs(s * d_hat - d).sum()
    brute = minimize_scalar(l1, bounds=(0.5, 5.0), method="bounded", options={"xatol": 1e-10}).x
    assert fit_scale(d_hat, d, "scale", iterations=200) == pytest.approx(brute, rel=1e-6)
    # The protocol's 10 iterations stop short of the optimum, but close to it in the objective.
    assert l1(fit_scale(d_hat, d, "scale")) <= 1.01 * l1(brute)
    result = depth_errors([d_hat.reshape(20, 25)], [d.reshape(20, 25)], "median", max_depth=3.5)
    keep = d < 3.5
    s = np.median(d[keep]) / np.median(d_hat[keep])
    assert result["abs_rel"] == pytest.approx(np.mean(np.abs(s * d_hat[keep] - d[keep]) / d[keep]), rel=1e-12)
    ratio = np.maximum(s * d_hat[keep] / d[keep], d[keep] / (s * d_hat[keep]))
    assert result["delta_1.25"] == pytest.approx(np.mean(ratio < 1.25), abs=1e-12)


def test_depth_predictions_are_resized_to_the_ground_truth():
    gt = np.full((8, 12), 2.0)
    result = depth_errors([np.full((4, 6), 1.0)], [gt], "median")
    assert result["scale"] == pytest.approx(2.0) and result["abs_rel"] < 1e-12


def test_one_scale_per_sequence_not_per_frame():
    """Frames off by different factors (2 and 4) share one scale, so the error a per-frame fit would hide remains:
    median scale 1 / median(0.5, 0.25) = 8/3, aligned depths 4/3 and 2/3 of the truth, Abs Rel exactly 1/3, and
    no pixel within 1.25."""
    gt = [np.ones((3, 4)), np.ones((3, 4))]
    prediction = [np.full((3, 4), 0.5), np.full((3, 4), 0.25)]
    result = depth_errors(prediction, gt, "median")
    assert result["scale"] == pytest.approx(8.0 / 3.0, rel=1e-12)
    assert result["abs_rel"] == pytest.approx(1.0 / 3.0, rel=1e-12)
    assert result["delta_1.25"] == 0.0


def _keys_cubic(x, a=-0.75):
    """The cubic convolution kernel of Keys (1981) with OpenCV's a = -0.75."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def test_depth_resize_is_bicubic_with_half_pixel_centres():
    """Interior pixels of a 2x upsampled quadratic against a direct evaluation of the Keys kernel (a = -0.75) at
    half-pixel source coordinates x_src = (x + 0.5) / 2 - 0.5, the convention of cv2.INTER_CUBIC."""
    from stages.evaluate.depth_metrics import resize_bicubic

    columns = np.arange(8, dtype=np.float64)
    source = np.tile(1.0 + 0.3 * columns + 0.05 * columns**2, (4, 1))              # (4, 8), constant per column
    resized = resize_bicubic(source, 4, 16)
    for x in range(4, 12):                                                          # four source taps inside
        x_src = (x + 0.5) / 2 - 0.5
        base = math.floor(x_src)
        taps = range(base - 1, base + 3)
        expected = sum(_keys_cubic(x_src - j) * source[0, j] for j in taps)
        assert resized[1, x] == pytest.approx(expected, rel=1e-12), x
    # Bicubic is not linear interpolation: on a quadratic the two differ inside the image.
    linear = np.interp((np.arange(16) + 0.5) / 2 - 0.5, columns, source[0])
    assert np.abs(resized[1, 4:12] - linear[4:12]).max() > 1e-3


def test_mask_iou_pools_over_frames():
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[0:4, 0:5] = True      # 20 pixels
    b[2:6, 0:5] = True      # 20 pixels, 10 shared -> union 30
    still = np.zeros((10, 10), bool)
    assert mask_iou([a, still], [b, still]) == pytest.approx(10 / 30)
    assert mask_iou([a], [a]) == 1.0
    assert math.isnan(mask_iou([still], [still]))
