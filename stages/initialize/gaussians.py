"""Initial Gaussian attributes and the standard 3DGS PLY layout.

PLY layout (Inria ``save_ply``; gsplat ``export_splats`` without normals): one binary little-endian ``vertex``
element with float properties ``x y z nx ny nz f_dc_0..2 f_rest_0..{3(K-1)-1} opacity scale_0..2 rot_0..3``. Values
are pre-activation: ``opacity`` = logit, ``scale_k`` = log standard deviation, ``rot`` = raw quaternion (w, x, y, z),
``f_dc`` = SH DC term (rgb = SH_C0 * f_dc + 0.5). ``f_rest`` is channel-major: all K-1 higher-order coefficients of R,
then of G, then of B.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.io import atomic_path

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))


def rgb_to_sh_dc(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colours in [0, 1] -> SH DC coefficients (rgb = SH_C0 * dc + 0.5)."""
    return (np.asarray(rgb, dtype=np.float64) - 0.5) / SH_C0


def sh_dc_to_rgb(dc: np.ndarray) -> np.ndarray:
    return np.asarray(dc, dtype=np.float64) * SH_C0 + 0.5


def unblend_background(rgb: np.ndarray, alpha: np.ndarray, background) -> np.ndarray:
    """The surface's own colour of an image composited on a background: rgb (H, W, 3) = a c + (1 - a) background
    with alpha a (H, W) -> c = (rgb - (1 - a) background) / a, clipped to [0, 1], where a > 0 (elsewhere rgb as
    it is). A soft edge (0 < a < 1) would otherwise give its Gaussians the background's tint."""
    a = np.asarray(alpha, dtype=np.float64)[..., None]
    background = np.asarray(background, dtype=np.float64)
    own = (np.asarray(rgb, dtype=np.float64) - (1.0 - a) * background) / np.maximum(a, 1e-6)
    return np.where(a > 0, np.clip(own, 0.0, 1.0), rgb).astype(np.float32)


def logit(p: float | np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def knn_distances(points: np.ndarray, k: int = 3) -> np.ndarray:
    """RMS distance (N,) from every point (N, 3) to its ``k`` nearest other points (scipy cKDTree)."""
    from scipy.spatial import cKDTree

    n = len(points)
    if n < 2:
        return np.ones(n)
    k_eff = min(k, n - 1)
    distances, _ = cKDTree(points).query(points, k=k_eff + 1)   # (N, k+1); column 0 is the point itself
    distances = distances[:, 1:]
    return np.sqrt(np.mean(distances**2, axis=1))


def initial_log_scales(points: np.ndarray, factor: float = 1.0, k: int = 3, max_over_median: float = 3.0) -> np.ndarray:
    """(N, 3) isotropic log standard deviations: log(factor x RMS distance to the k nearest neighbours).

    Coincident points (distance 0) get the smallest positive distance of the cloud; isolated points are capped at
    ``max_over_median`` x the median distance (a lone point would otherwise start as a blob over the scene).
    """
    dist = knn_distances(points, k)
    positive = dist[dist > 0]
    floor = positive.min() if positive.size else 1.0
    dist = np.maximum(dist, floor)
    if len(dist):
        dist = np.minimum(dist, max_over_median * np.median(dist))
    return np.repeat(np.log(factor * dist)[:, None], 3, axis=1)


def ply_property_names(sh_degree: int) -> list[str]:
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_gaussians_ply(path: str | Path, means: np.ndarray, sh: np.ndarray, opacity_logits: np.ndarray,
                        log_scales: np.ndarray, quats: np.ndarray) -> None:
    """Write Gaussians in the standard 3DGS PLY layout (atomically).

    means (N, 3); sh (N, K, 3) SH coefficients, K = (d + 1)^2, DC first; opacity_logits (N,);
    log_scales (N, 3); quats (N, 4) raw (w, x, y, z). Rows with a non-finite value are an error.
    """
    from plyfile import PlyData, PlyElement

    n, K, _ = sh.shape
    degree = int(round(np.sqrt(K))) - 1
    if (degree + 1) ** 2 != K:
        raise ValueError(f"SH coefficient count {K} is not a square")
    f_dc = sh[:, 0, :]                                              # (N, 3)
    f_rest = np.transpose(sh[:, 1:, :], (0, 2, 1)).reshape(n, -1)   # (N, 3 * (K - 1)), channel-major
    columns = [means, np.zeros((n, 3)), f_dc, f_rest, np.asarray(opacity_logits).reshape(n, 1), log_scales, quats]
    table = np.concatenate([np.asarray(c, dtype=np.float32).reshape(n, -1) for c in columns], axis=1)
    if not np.isfinite(table).all():
        raise ValueError("refusing to write non-finite Gaussian attributes")
    names = ply_property_names(degree)
    records = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        records[name] = table[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(records, "vertex")], byte_order="<").write(str(tmp))


def read_gaussians_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a standard 3DGS PLY. Returns means (N, 3), sh (N, K, 3), opacity_logits (N,), log_scales (N, 3),
    quats (N, 4) (w, x, y, z), all float32, and ``sh_degree``."""
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except (OSError, KeyError, ValueError, EOFError, PlyParseError) as err:
        raise UserError(f"not a readable Gaussian PLY ({err})", path) from None
    names = [p.name for p in vertex.properties]
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
              "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [n for n in needed if n not in names]
    if missing:
        raise UserError(f"Gaussian PLY lacks properties {', '.join(missing)}", path)
    n_rest = sum(name.startswith("f_rest_") for name in names)
    K = 1 + n_rest // 3
    degree = int(round(np.sqrt(K))) - 1
    if n_rest % 3 or (degree + 1) ** 2 != K:
        raise UserError(f"Gaussian PLY has {n_rest} f_rest properties, not 3((d+1)^2-1)", path)

    def cols(keys: list[str]) -> np.ndarray:
        return np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], axis=1)

    n = len(vertex["x"])
    sh = np.zeros((n, K, 3), dtype=np.float32)
    sh[:, 0, :] = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    if n_rest:
        rest = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, K - 1)   # channel-major
        sh[:, 1:, :] = np.transpose(rest, (0, 2, 1))
    return {
        "means": cols(["x", "y", "z"]),
        "sh": sh,
        "opacity_logits": np.asarray(vertex["opacity"], dtype=np.float32),
        "log_scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "sh_degree": np.int64(degree),
    }
