"""Camera paths: geometry of each path checked against what it must be by construction."""

import math

import numpy as np
import pytest

from pipeline.cameras import look_at_w2c
from pipeline.scene.model import Camera
from stages.render.paths import (InputCamera, bullet_path, camera_path, focus_point, input_path, resized,
                                 scene_layout, spiral_path, sweep_path)
from tests.render.fake_run import ring_cameras

K = np.array([[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]])


def cams(w2cs, times=None):
    times = np.linspace(0, 1, len(w2cs)) if times is None else times
    return [InputCamera(w, K, 64, 48, float(t)) for w, t in zip(w2cs, times)]


def pixel_of(point, view):
    uv, z = Camera(view.K, view.world_to_camera, view.width, view.height).project(point[None])
    return uv[0], z[0]


def forward_facing(n=7):
    """Cameras on a short horizontal line at y = -3, looking at the point (0, 0, 0.5) (z up)."""
    target = np.array([0.0, 0.0, 0.5])
    return [look_at_w2c(np.array([x, -3.0, 0.6]), target) for x in np.linspace(-0.4, 0.4, n)], target


def test_focus_point_from_depths_and_from_axes():
    ring = cams(ring_cameras(8, radius=3.0, height=1.2))
    distance = math.hypot(3.0, 1.2)
    assert np.allclose(focus_point(ring, [distance] * 8), 0.0, atol=1e-9)
    assert np.allclose(focus_point(ring), 0.0, atol=1e-9)          # the optical axes meet at the origin
    line, target = forward_facing()
    assert np.allclose(focus_point(cams(line)), target, atol=1e-9)


def test_layout_up_and_surrounding():
    ring = scene_layout(cams(ring_cameras(8)))
    assert ring.surrounding and np.allclose(ring.up, [0, 0, 1], atol=0.2) and ring.up @ [0, 0, 1] > 0.95
    line, _ = forward_facing()
    assert not scene_layout(cams(line)).surrounding


def test_input_path_replays_and_resamples():
    ring = cams(ring_cameras(6))
    replay = input_path(ring)
    assert len(replay) == 6 and all(np.array_equal(v.world_to_camera, c.world_to_camera) for v, c in zip(replay, ring))
    resampled = input_path(ring, 11)        # every second sample lands on an input frame
    for k in range(0, 11, 2):
        assert np.allclose(resampled[k].world_to_camera, ring[k // 2].world_to_camera, atol=1e-9)
        assert resampled[k].time == pytest.approx(ring[k // 2].time)
    mid = resampled[1]                      # halfway: centre on the chord between frames 0 and 1
    centre = -mid.world_to_camera[:3, :3].T @ mid.world_to_camera[:3, 3]
    assert np.allclose(centre, (ring[0].center + ring[1].center) / 2, atol=1e-9)


def test_orbit_and_spiral_look_at_the_focus():
    ring = cams(ring_cameras(8, radius=3.0, height=1.2))
    layout = scene_layout(ring)
    orbit = spiral_path(ring, layout, 12, time=0.25)
    for v in orbit:
        uv, z = pixel_of(layout.focus, v)
        assert np.allclose(uv, K[:2, 2], atol=1e-6) and v.time == 0.25
        centre = -v.world_to_camera[:3, :3].T @ v.world_to_camera[:3, 3]
        assert math.hypot(*centre[:2]) == pytest.approx(3.0, rel=1e-6)
    line, target = forward_facing()
    layout = scene_layout(cams(line))
    spiral = spiral_path(cams(line), layout, 16, time=None)
    assert [v.time for v in spiral] == pytest.approx(np.linspace(0, 1, 16))
    centres = np.stack([-v.world_to_camera[:3, :3].T @ v.world_to_camera[:3, 3] for v in spiral])
    assert np.allclose(centres.mean(0), np.mean([c.center for c in cams(line)], 0), atol=1e-9)
    assert np.ptp(centres[:, 0]) == pytest.approx(2 * np.percentile(np.abs(np.linspace(-0.4, 0.4, 7)), 90), rel=1e-3)
    for v in spiral:
        assert np.allclose(pixel_of(target, v)[0], K[:2, 2], atol=1e-6)


def test_bullet_time_swings_about_the_focus_at_a_frozen_time():
    ring = cams(ring_cameras(8))
    layout = scene_layout(ring)
    views = bullet_path(ring, layout, 8, time=0.5, arc_deg=60.0)
    ref = min(ring, key=lambda c: abs(c.time - 0.5))
    ref_pixel, ref_depth = pixel_of(layout.focus, views[0])
    assert np.allclose(views[0].world_to_camera, ref.world_to_camera, atol=1e-12)       # starts at the input camera
    angles = []
    for v in views:
        assert v.time == 0.5
        uv, z = pixel_of(layout.focus, v)          # a rigid swing about the focus keeps its image fixed
        assert np.allclose(uv, ref_pixel, atol=1e-6) and z == pytest.approx(ref_depth, rel=1e-9)
        centre = -v.world_to_camera[:3, :3].T @ v.world_to_camera[:3, 3]
        angles.append(math.degrees(math.atan2(centre[1], centre[0]) - math.atan2(ref.center[1], ref.center[0])))
    angles = (np.array(angles) + 180) % 360 - 180
    assert max(angles) == pytest.approx(30.0, abs=1e-6) and min(angles) == pytest.approx(-30.0, abs=1e-6)


def test_sweep_holds_the_middle_camera_while_time_runs():
    ring = cams(ring_cameras(5))
    views = sweep_path(ring, 6)
    assert all(np.array_equal(v.world_to_camera, ring[2].world_to_camera) for v in views)
    assert [v.time for v in views] == pytest.approx(np.linspace(0, 1, 6))
    assert len(camera_path("spiral-time", ring, scene_layout(ring), None, 0.5, 60, default_views=9)) == 9
    with pytest.raises(ValueError, match="unknown camera path"):
        camera_path("zoom", ring, scene_layout(ring), 4, 0.5, 60, default_views=9)


def test_resized_views_are_even_and_project_consistently():
    view = input_path(cams(ring_cameras(2)))[0]
    small = resized(view._replace(width=65, height=49), 33)
    assert (small.width, small.height) == (32, 24)
    point = np.array([0.1, -0.2, 0.3])
    uv_big, _ = pixel_of(point, view._replace(width=65, height=49))
    uv_small, _ = pixel_of(point, small)
    assert np.allclose(uv_small, uv_big * [32 / 65, 24 / 49], atol=1e-9)
    assert resized(view, 0).width == 64
