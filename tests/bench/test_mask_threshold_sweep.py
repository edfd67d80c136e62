"""bench.mask_threshold_sweep: the counts behind its IoU, and the choice of threshold."""

from __future__ import annotations

import numpy as np

from bench.mask_threshold_sweep import best_threshold, iou, threshold_counts


def test_threshold_counts_pool_intersection_and_union_over_frames_by_hand():
    first = np.array([[0.9, 0.4], [0.2, 0.6]])
    second = np.array([[0.3, 0.3], [0.8, 0.1]])
    truth_first = np.array([[True, True], [False, False]])
    truth_second = np.array([[False, True], [True, False]])
    counts = threshold_counts([first, second], [truth_first, truth_second], [0.25, 0.5])
    # 0.25: first moving {0.9, 0.4, 0.6}: 2 in both, 3 in either; second {0.3, 0.3, 0.8}: 2 in both, 3 in either
    # 0.5: first {0.9, 0.6}: 1 in both, 3 in either; second {0.8}: 1 in both, 2 in either
    assert counts.tolist() == [[4, 6], [2, 5]]
    assert iou(counts[0]) == 4 / 6 and np.isnan(iou(np.array([0, 0])))


def test_the_chosen_threshold_maximises_the_mean_over_kinds():
    result = {"room": {"iou": [0.10, 0.30, 0.20]}, "object": {"iou": [0.70, 0.60, 0.75]}}
    assert best_threshold(result, [0.3, 0.4, 0.5]) == 0.5         # means 0.40, 0.45, 0.475
    result["room"]["iou"] = [0.10, 0.50, 0.20]
    assert best_threshold(result, [0.3, 0.4, 0.5]) == 0.4
