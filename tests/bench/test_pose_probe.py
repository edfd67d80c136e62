"""bench.pose_probe: its rotation error against known rotations."""

from __future__ import annotations

import math

import numpy as np

from bench.pose_probe import rotation_error_deg


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

