"""Gaussian rasterization: gsplat on CUDA, our pure-PyTorch rasterizer with gsplat's rules everywhere else.

``rasterization`` has the meaning of ``gsplat.rasterization`` (1.5.3) with ``packed=False``; its ``meta`` carries what
gsplat's ``DefaultStrategy`` reads, whichever backend ran. See docs/rasterizer.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gsplat_backend import EXTENSION_ERRORS, gsplat_available, log, rasterize_gsplat
from .projection import camera_centers, project_gaussians
from .sh import sh_to_color
from .torch_backend import RasterSettings, rasterize_to_pixels

BACKENDS = ("auto", "gsplat", "torch")
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")

_gsplat_first_call_ok: bool | None = None   # None until the first gsplat call; False after it failed to load
_warned: set[str] = set()


def rasterization(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                  viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near_plane: float = 0.01,
                  far_plane: float = 1e10, eps2d: float = 0.3, sh_degree: int | None = None,
                  backgrounds: Tensor | None = None, render_mode: str = "RGB", rasterize_mode: str = "classic",
                  absgrad: bool = False, backend: str = "auto",
                  settings: RasterSettings | None = None) -> tuple[Tensor, Tensor, dict]:
    """Render N Gaussians into C cameras.

    Args:
        means: [N, 3] world positions. quats: [N, 4] (w, x, y, z), unnormalised. scales: [N, 3] standard deviations
            (post-activation). opacities: [N] in (0, 1) (post-sigmoid).
        colors: [N, D] or [C, N, D] post-activation values, or with ``sh_degree`` SH coefficients [N, K, 3] or
            [C, N, K, 3] (colour = max(SH(direction from the camera centre) + 0.5, 0)).
        viewmats: [C, 4, 4] world-to-camera, OpenCV axes. Ks: [C, 3, 3] pixel intrinsics (pixel centres at +0.5).
        width, height: image size. near_plane, far_plane: camera-z culling range. eps2d: 2D blur (pixels^2).
        backgrounds: [C, D] colour behind the Gaussians (depth channels get 0).
        render_mode: "RGB"; "D" (sum of w z); "ED" (D / alpha); "RGB+D" / "RGB+ED" (depth as the last channel).
        rasterize_mode: "classic" or "antialiased" (opacity x compensation, Mip-Splatting).
        absgrad: after backward, ``meta["means2d"].absgrad`` holds the AbsGS gradient.
        backend: "gsplat" (CUDA), "torch" (any device) or "auto" (gsplat for CUDA tensors when it loads).
        settings: work decomposition of the torch backend (tile size, chunking); does not change results.
    Returns:
        render_colors [C, H, W, X], render_alphas [C, H, W, 1], meta (means2d [C, N, 2] non-leaf, radii int32
        [C, N, 2], depths [C, N], conics [C, N, 3], opacities [C, N], width, height, n_cameras, gaussian_ids=None,
        backend).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, backgrounds)
    kwargs = dict(near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree,
                  backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode, absgrad=absgrad)

    if _wants_gsplat(backend, means):
        global _gsplat_first_call_ok
        if _gsplat_first_call_ok is None:
            try:
                result = rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                          **kwargs)
            except EXTENSION_ERRORS as error:
                _gsplat_first_call_ok = False
                log.warning("gsplat failed on its first call (%s: %s); using the PyTorch rasterizer from now on",
                            type(error).__name__, error)
            else:
                _gsplat_first_call_ok = True
                return result
        elif _gsplat_first_call_ok:
            return rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs)
    return _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                            settings=settings, **kwargs)


def _wants_gsplat(backend: str, means: Tensor) -> bool:
    if backend == "torch" or _gsplat_first_call_ok is False:
        return False
    if backend == "auto":
        return means.is_cuda and gsplat_available()
    if means.is_cuda and gsplat_available():                                    # backend == "gsplat"
        return True
    _warn_once("gsplat-unusable", "backend 'gsplat' needs CUDA tensors and gsplat's CUDA extension; "
               "using the PyTorch rasterizer")
    return False


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _rasterize_torch(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near_plane: float, far_plane: float,
                     eps2d: float, sh_degree: int | None, backgrounds: Tensor | None, render_mode: str,
                     rasterize_mode: str, absgrad: bool,
                     settings: RasterSettings | None) -> tuple[Tensor, Tensor, dict]:
    n_cameras, n_gaussians = len(viewmats), len(means)
    projection = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane,
                                   far_plane, eps2d, antialiased=rasterize_mode == "antialiased")

    if sh_degree is None:
        colors = colors.expand(n_cameras, n_gaussians, colors.shape[-1]) if colors.dim() == 2 else colors
    else:
        directions = means[None] - camera_centers(viewmats)[:, None]                        # [C, N, 3]
        coeffs = colors.expand(n_cameras, *colors.shape) if colors.dim() == 3 else colors    # [C, N, K, 3]
        colors = sh_to_color(sh_degree, directions, coeffs)                                  # [C, N, 3]

    depths = projection.depths
    if render_mode in ("D", "ED"):
        colors = depths[..., None]
        backgrounds = None if backgrounds is None else backgrounds.new_zeros(n_cameras, 1)
    elif render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(n_cameras, 1)], dim=-1)

    render_colors, render_alphas = rasterize_to_pixels(
        projection.means2d, projection.conics, colors, projection.opacities, projection.radii, depths, width,
        height, backgrounds=backgrounds, absgrad=absgrad, settings=settings)
    if render_mode in ("ED", "RGB+ED"):
        expected_depth = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected_depth], dim=-1)

    meta = {
        "means2d": projection.means2d, "radii": projection.radii, "depths": depths, "conics": projection.conics,
        "opacities": projection.opacities, "compensations": projection.compensations, "width": width,
        "height": height, "n_cameras": n_cameras, "n_batches": 1, "gaussian_ids": None, "camera_ids": None,
        "batch_ids": None, "backend": "torch",
    }
    return render_colors, render_alphas, meta


def _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, backgrounds) -> None:
    n, c = means.shape[0], viewmats.shape[0]
    expected = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)),
                "opacities": (opacities, (n,)), "viewmats": (viewmats, (c, 4, 4)), "Ks": (Ks, (c, 3, 3))}
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
    if sh_degree is None:
        ok = colors.dim() in (2, 3) and tuple(colors.shape[:-1]) in ((n,), (c, n))
        if not ok:
            raise ValueError(f"colors must be [N, D] or [C, N, D] (N={n}, C={c}), got {list(colors.shape)}")
    else:
        ok = colors.dim() in (3, 4) and tuple(colors.shape[:-2]) in ((n,), (c, n)) and colors.shape[-1] == 3
        if not ok or colors.shape[-2] < (sh_degree + 1) ** 2:
            raise ValueError(f"SH colors must be [N, K, 3] or [C, N, K, 3] with K >= {(sh_degree + 1) ** 2}, "
                             f"got {list(colors.shape)}")
    if backgrounds is not None and tuple(backgrounds.shape[:1]) != (c,):
        raise ValueError(f"backgrounds must be [C, D] with C={c}, got {list(backgrounds.shape)}")


__all__ = ["BACKENDS", "RasterSettings", "gsplat_available", "rasterization"]
