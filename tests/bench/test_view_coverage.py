"""bench/view_coverage.py: angles to the nearest training camera within a time window, and their rank correlation
with per-view PSNR."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import view_coverage
from bench.view_coverage import analyse_run, nearest_angles, spearman


def test_spearman_matches_hand_computed_values_with_ties():
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))         # a constant side has no ranks to correlate


def test_nearest_angles_only_count_training_views_inside_the_window():
    directions = np.eye(3)                                      # cameras on x, y, z
    times = np.array([0.0, 0.5, 1.0])
    test = np.array([math.cos(math.radians(30)), math.sin(math.radians(30)), 0.0])   # 30 deg from x, 60 from y
    angles = nearest_angles(directions, times, test, time=0.9, gap=0.5, windows=(0.1, 0.5, 1.0, math.inf))
    assert angles[0.1] == 180.0                                 # no training time within 0.05
    assert angles[0.5] == pytest.approx(90.0)                   # only t = 1 (z)
    assert angles[1.0] == pytest.approx(60.0)                   # t = 0.5 (y) joins
    assert angles[math.inf] == pytest.approx(30.0)              # any time: x


def write_scene(folder, train, test):
    """D-NeRF transforms with camera centres at the given (position, time) pairs (rotations irrelevant here)."""
    def frames(items, split):
        return [{"file_path": f"./{split}/r_{i:03d}", "time": t,
                 "transform_matrix": [[1, 0, 0, p[0]], [0, 1, 0, p[1]], [0, 0, 1, p[2]], [0, 0, 0, 1]]}
                for i, (p, t) in enumerate(items)]
    folder.mkdir()
    (folder / "transforms_train.json").write_text(json.dumps({"frames": frames(train, "train")}))
    (folder / "transforms_test.json").write_text(json.dumps({"frames": frames(test, "test")}))


def test_a_run_whose_quality_follows_the_near_in_time_views_correlates_in_the_narrow_window(tmp_path):
    # Training cameras circle the equator, one per time; the test views at the same times look from 0-80 deg of
    # elevation above the training camera of their time. Their moving PSNR falls with that elevation, so it falls
    # with the angle to the nearest view of their time; at any time the equator's nearest camera is equally far,
    # except that neighbouring cameras are also close in azimuth.
    n = 8
    train = [((math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n), 0.0), i / (n - 1)) for i in range(n)]
    test, views = [], []
    for i in range(n):
        elevation = math.radians(10 * i)
        azimuth = 2 * math.pi * i / n
        test.append(((math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation),
                      math.sin(elevation)), i / (n - 1)))
        views.append({"name": f"r_{i:03d}", "psnr": 30.0 - i, "psnr_moving": 25.0 - 2 * i})
    write_scene(tmp_path / "scene", train, test)
    result = analyse_run({"id": "object-s0-x", "seed": 0, "metrics": {"moving": {"views": views}}}, tmp_path / "scene",
                         windows=(0.5, math.inf))
    assert result["frame_gap"] == pytest.approx(1 / 7)
    assert [v["angles"]["0.5"] for v in result["views"]] == pytest.approx([10.0 * i for i in range(n)])
    assert result["correlations"]["0.5"]["moving"] == pytest.approx(-1.0)
    assert result["correlations"]["any"]["median_angle"] <= result["correlations"]["0.5"]["median_angle"]


def test_a_missing_result_file_is_a_one_line_error(capsys):
    assert view_coverage.main(["sweeps/no_such_result_file"]) == 2
    assert "no result file" in capsys.readouterr().err
