"""Thin wrapper around ``gsplat.rasterization`` (CUDA only, packed=False). gsplat is imported lazily, and its CUDA
extension is only ever touched when CUDA is available (spec gsplat.md §1.5)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from pipeline.log import get_logger

log = get_logger("optimize.rasterize")

# Errors that mean "gsplat's CUDA extension cannot be used here" (missing toolkit, failed JIT build, missing .so).
EXTENSION_ERRORS = (ImportError, OSError, AttributeError)


@functools.lru_cache(maxsize=None)
def gsplat_available() -> bool:
    """True when CUDA is available and gsplat's CUDA extension loads (this may JIT-build it once, minutes)."""
    if not torch.cuda.is_available():
        return False
    try:
        from gsplat.cuda._backend import _C
    except EXTENSION_ERRORS as error:
        log.warning("gsplat's CUDA extension is unavailable (%s: %s); using the PyTorch rasterizer",
                    type(error).__name__, error)
        return False
    return _C is not None


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near_plane: float, far_plane: float,
                     eps2d: float, sh_degree: int | None, backgrounds: Tensor | None, render_mode: str,
                     rasterize_mode: str, absgrad: bool) -> tuple[Tensor, Tensor, dict]:
    """``gsplat.rasterization`` with packed=False and our argument names; CUDA tensors only."""
    if not means.is_cuda:
        raise ValueError("the gsplat backend needs CUDA tensors")
    import gsplat

    render_colors, render_alphas, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
        far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, packed=False, backgrounds=backgrounds,
        render_mode=render_mode, rasterize_mode=rasterize_mode, absgrad=absgrad)
    meta["backend"] = "gsplat"
    return render_colors, render_alphas, meta
