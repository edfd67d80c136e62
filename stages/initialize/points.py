"""Point clouds from depth maps: unprojection, per-pixel filters, voxel downsampling to a budget.

Conventions: OpenCV cameras, ``K`` in pixels with pixel (row i, column j) centred at (j + 0.5, i + 0.5),
``world_to_camera`` 4x4, depth = camera-space z (not ray length).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def unproject_depth(depth: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    """World points of every pixel centre.

    depth: (H, W) z-depth; K: (3, 3); world_to_camera: (4, 4).  Returns (H, W, 3) float64.
    """
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W, dtype=np.float64) + 0.5, np.arange(H, dtype=np.float64) + 0.5)  # (H, W)
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1)                       # (H, W, 3) homogeneous
    rays = pixels @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T          # (H, W, 3), z = 1
    points_cam = rays * depth.astype(np.float64)[..., None]                   # (H, W, 3)
    camera_to_world = np.linalg.inv(np.asarray(world_to_camera, dtype=np.float64))
    return points_cam @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]


def depth_edge_mask(depth: np.ndarray, max_relative_jump: float) -> np.ndarray:
    """(H, W) bool: True where no 4-neighbour's depth differs by more than ``max_relative_jump`` x depth.

    Pixels next to an invalid (<= 0) neighbour are kept; 0 disables the filter.
    """
    keep = np.ones(depth.shape, dtype=bool)
    if max_relative_jump <= 0:
        return keep
    d = depth.astype(np.float64)
    for a, b, a_index, b_index in (
            (d[:-1, :], d[1:, :], np.s_[:-1, :], np.s_[1:, :]),       # vertical neighbours
            (d[:, :-1], d[:, 1:], np.s_[:, :-1], np.s_[:, 1:])):      # horizontal neighbours
        both_valid = (a > 0) & (b > 0)
        jump = np.abs(a - b)
        keep[a_index] &= ~(both_valid & (jump > max_relative_jump * a))
        keep[b_index] &= ~(both_valid & (jump > max_relative_jump * b))
    return keep


def confidence_mask(confidence: np.ndarray, min_confidence: float = 0.0, percentile: float = 0.0,
                    valid: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) bool: confidence >= max(min_confidence, the given percentile of this map's ``valid`` pixels).

    valid: (H, W) bool, the pixels the percentile is taken over (those with a depth: a frame that is mostly
    background would otherwise drop few or none of its points); None = all."""
    threshold = min_confidence
    if percentile > 0:
        values = confidence if valid is None else confidence[valid]
        if values.size:
            threshold = max(threshold, float(np.percentile(values, percentile)))
    return confidence >= threshold


def voxel_keys(points: np.ndarray, voxel_size: float,
               bounds: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """(N,) int64 id of the cubic voxel of edge ``voxel_size`` holding each point (N, 3); equal ids = same voxel.

    The grid starts at the points' lowest corner (not at the world origin), so a voxel larger than the points'
    extent holds them all: a grid fixed to the origin splits points that straddle x = 0, y = 0 or z = 0 into 2-8
    voxels at any size, and a budget below that could never be met (the budget search did not end).

    bounds: the points' per-axis (min (3,), max (3,)), when the caller has them (a bisection over voxel sizes reuses
    them instead of two column reductions over all points per size). A subsample given its group's bounds gets the
    group's grid.
    """
    lo, hi = bounds if bounds is not None else (points.min(axis=0), points.max(axis=0))
    # offsets in float64: float32 points far apart keep distinct cells (p - lo is exact there, not in float32)
    cells = np.floor(np.subtract(points, lo, dtype=np.float64) / voxel_size).astype(np.int64)      # (N, 3), >= 0
    dims = np.floor(np.subtract(hi, lo, dtype=np.float64) / voxel_size).astype(np.int64) + 1      # (3,)
    if float(dims[0]) * float(dims[1]) * float(dims[2]) < 2.0**62:
        return (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    return np.unique(cells, axis=0, return_inverse=True)[1].reshape(-1)   # huge grids: rank the rows instead


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Average the points (N, 3) and colours (N, C) that fall into the same cubic voxel of edge ``voxel_size``.

    Returns (M, 3) and (M, C), one row per occupied voxel (sorted by voxel id).
    """
    if len(points) == 0 or voxel_size <= 0:
        return points, colors
    _, inverse, counts = np.unique(voxel_keys(points, voxel_size), return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    m = len(counts)

    def mean(values: np.ndarray) -> np.ndarray:                       # (N, C) -> (M, C) per-voxel means
        return np.stack([np.bincount(inverse, weights=values[:, c], minlength=m) for c in range(values.shape[1])],
                        axis=1) / counts[:, None]

    return mean(points.astype(np.float64)), mean(colors.astype(np.float64))


def count_voxels(points: np.ndarray, voxel_size: float,
                 bounds: Optional[tuple[np.ndarray, np.ndarray]] = None) -> int:
    """Number of occupied voxels. Sorting the ids and counting changes is ~50x faster than np.unique's hash table
    (NumPy 2.x) on millions of points, and this runs a few dozen times per bisection of the budget."""
    if len(points) == 0:
        return 0
    keys = np.sort(voxel_keys(points, voxel_size, bounds))
    return 1 + int(np.count_nonzero(keys[1:] != keys[:-1]))


def point_bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis (min (3,), max (3,)) of (N, 3) points, N > 0: what :func:`voxel_keys` takes as ``bounds``."""
    return points.min(axis=0), points.max(axis=0)


def voxel_size_for_budget(groups: np.ndarray | Sequence[np.ndarray], budget: int, tolerance: float = 1.02,
                          bounds: Optional[Sequence[tuple[np.ndarray, np.ndarray]]] = None) -> float:
    """The smallest voxel edge (to within a factor ``tolerance``) at which downsampling every group of points (each
    (N_g, 3), downsampled on its own) leaves at most ``budget`` points in total; 0 if the groups already fit.
    bounds: each group's :func:`point_bounds` when the caller has them (one pair per group, empty groups included).

    A bisection over log(size); each trial size is a pass over all points. With many points per voxel (a video's
    frames give tens of millions for a budget of tens of thousands) a strided subsample of about 32 points per
    budgeted voxel is searched first: it occupies nearly the same voxels, and never more, so its answer is a lower
    bound, a few per cent low, that brackets the full search to a few trials.
    """
    groups = [groups] if isinstance(groups, np.ndarray) else list(groups)
    if bounds is not None:
        bounds = [b for g, b in zip(groups, bounds) if len(g)]
    groups = [g for g in groups if len(g)]
    n_points = sum(len(g) for g in groups)
    if n_points <= budget:
        return 0.0
    if budget < len(groups):
        raise ValueError(f"a budget of {budget} cannot hold one point for each of {len(groups)} groups")
    if bounds is None:
        bounds = [point_bounds(g) for g in groups]

    def fits(size: float) -> bool:
        return sum(count_voxels(g, size, b) for g, b in zip(groups, bounds)) <= budget

    stride = n_points // (32 * budget)
    if stride >= 4:
        # a subsample's points lie inside its group's bounds: the same cells, fewer of them occupied
        lo = voxel_size_for_budget([g[::stride] for g in groups], budget, tolerance, bounds) / tolerance
        hi = lo * 1.1
        while not fits(hi):             # ends: a voxel wider than every group's extent is one voxel per group
            lo, hi = hi, hi * 1.5
    else:
        extent = max(float(np.max(hi - lo)) for lo, hi in bounds)
        hi = max(extent, 1e-12) * 2.0   # one voxel per group, within the budget (checked above)
        lo = hi * 1e-6
    while hi / lo >= tolerance:             # invariant: hi fits; lo does not (or is the search's lower end)
        mid = math.sqrt(lo * hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def downsample_to_budget(points: np.ndarray, colors: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-downsample (N, 3) points with their (N, C) colours to at most ``budget`` points."""
    if budget <= 0 or len(points) == 0:
        return points[:0], colors[:0]
    return voxel_downsample(points, colors, voxel_size_for_budget(points, budget))
