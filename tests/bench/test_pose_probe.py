"""bench.pose_probe: its rotation error and unprojection against known values."""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.pose_probe import camera_points, rotation_error_deg


def _rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def test_rotation_error_is_the_geodesic_distance():
    a = _rotation([0.3, -1.0, 0.2], 17.0)
    assert abs(rotation_error_deg(a, _rotation([0.3, -1.0, 0.2], 42.0)) - 25.0) < 1e-9
    assert abs(rotation_error_deg(a, _rotation([1.0, 0.0, 0.0], 0.0)) - 17.0) < 1e-9
    assert rotation_error_deg(a, a) < 1e-6


def test_camera_points_unproject_pixel_centres():
    K = torch.tensor([[100.0, 0, 2.0], [0, 50.0, 1.0], [0, 0, 1]], dtype=torch.float64)
    depth = torch.full((2, 4), 3.0, dtype=torch.float64)
    points = camera_points(depth, K).reshape(2, 4, 3)
    # pixel (row 1, column 3): centre (3.5, 1.5) -> x = (3.5 - 2) / 100 * 3, y = (1.5 - 1) / 50 * 3
    assert torch.allclose(points[1, 3], torch.tensor([0.045, 0.03, 3.0], dtype=torch.float64))
