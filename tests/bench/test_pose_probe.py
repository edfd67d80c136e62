"""bench.pose_probe: its rotation angle and Procrustes fit against known transforms."""

from __future__ import annotations

import math

import torch

from bench.pose_probe import camera_points, procrustes_rotation, rotation_angle_deg


def _rotation(axis, degrees) -> torch.Tensor:
    axis = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
    cross = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
                         dtype=torch.float64)
    angle = math.radians(degrees)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def test_rotation_angle_is_the_geodesic_distance():
    a = _rotation([0.3, -1.0, 0.2], 17.0)
    b = _rotation([0.3, -1.0, 0.2], 17.0 + 25.0)
    assert abs(float(rotation_angle_deg(a, b)) - 25.0) < 1e-6
    assert abs(float(rotation_angle_deg(a, a))) < 1e-5


def test_procrustes_recovers_a_similarity_with_outliers_down_weighted():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(500, 3, generator=g, dtype=torch.float64)
    rotation = _rotation([1.0, 2.0, -0.5], 40.0)
    target = 2.5 * source @ rotation.T + torch.tensor([0.3, -1.0, 4.0], dtype=torch.float64)
    weight = torch.ones(500, dtype=torch.float64)
    target[:50] += 10 * torch.randn(50, 3, generator=g, dtype=torch.float64)   # outliers, weight ~0
    weight[:50] = 1e-9
    assert float(rotation_angle_deg(procrustes_rotation(source, target, weight), rotation)) < 1e-4


def test_camera_points_unproject_pixel_centres():
    K = torch.tensor([[100.0, 0, 2.0], [0, 50.0, 1.0], [0, 0, 1]], dtype=torch.float64)
    depth = torch.full((2, 4), 3.0, dtype=torch.float64)
    points = camera_points(depth, K).reshape(2, 4, 3)
    # pixel (row 1, column 3): centre (3.5, 1.5) -> x = (3.5 - 2) / 100 * 3, y = (1.5 - 1) / 50 * 3
    assert torch.allclose(points[1, 3], torch.tensor([0.045, 0.03, 3.0], dtype=torch.float64))
