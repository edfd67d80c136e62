"""Image metrics: PSNR, SSIM (3DGS and "valid" conventions), DyCheck's masked mPSNR / mSSIM, and where the squared
error lies relative to the moving pixels (:func:`moving_region_errors`).

Definitions follow ``../shared/spec/metrics-and-data.md`` §1, §2 and §5. Every function takes images as float arrays
(H, W, 3) in [0, 1] (NumPy or torch) and returns a Python float. Renders are quantised to 8 bit before scoring
(:func:`quantize_8bit`), as 3DGS does by writing and re-reading PNGs and DyCheck does explicitly; PNG renders read
back from disk are already on that grid.

SSIM: per channel, local statistics under a normalised 11x11 Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2,
population (co)variances E[xy] - mu_x mu_y, averaged over channels and pixels.

* :func:`ssim_3dgs` - zero padding of 5 pixels, mean over the full map (3DGS / 4DGaussians ``loss_utils.ssim``, the
  convention of their tables; borders are biased by the zeros).
* :func:`ssim_valid` - only windows that lie inside the image ("valid" convolution, the 5-pixel border dropped);
  equals scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from scipy import ndimage

Image = Union[np.ndarray, torch.Tensor]

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def quantize_8bit(image: Image) -> np.ndarray:
    """round(255 x) / 255, clipped to [0, 1], as float64 (H, W, C)."""
    array = _numpy(image)
    return np.clip(np.round(array * 255.0), 0.0, 255.0) / 255.0


def psnr(prediction: Image, target: Image) -> float:
    """PSNR in dB of two images in [0, 1]: -10 log10(MSE), MSE over all H*W*C values (float64)."""
    a, b = _numpy(prediction), _numpy(target)
    _check_pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def masked_psnr(prediction: Image, target: Image, mask: Image) -> float:
    """DyCheck mPSNR: -10 log10(sum m (a - b)^2 / sum m), the (H, W) mask broadcast over the 3 channels."""
    a, b = _numpy(prediction), _numpy(target)
    _check_pair(a, b)
    m = _mask(mask, a)
    weight = float(m.sum()) * a.shape[-1]
    if weight == 0.0:
        return math.nan
    mse = float((((a - b) ** 2) * m[..., None]).sum() / weight)
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def moving_region_errors(prediction: Image, target: Image, moving: Image, border_px: int = 3) -> dict[str, float]:
    """Where a view's squared error lies, for a ground-truth dynamic mask ``moving`` (H, W; True = moving): the
    summed squared error (over the 3 channels, float64) on the moving pixels, on the ``border_px``-pixel border
    outside them (Chebyshev distance 1 to ``border_px`` from the mask: silhouettes drawn in the wrong place) and
    over the whole image, with the pixel counts of the first two. Keys: ``sse_moving``, ``sse_border``,
    ``sse_total``, ``moving_pixels``, ``border_pixels``."""
    a, b = _numpy(prediction), _numpy(target)
    _check_pair(a, b)
    m = _mask(moving, a) > 0.5
    near = ndimage.binary_dilation(m, structure=np.ones((3, 3), bool), iterations=border_px) if border_px else m
    border = near & ~m
    squared = ((a - b) ** 2).sum(-1)                                              # (H, W)
    return {"sse_moving": float(squared[m].sum()), "sse_border": float(squared[border].sum()),
            "sse_total": float(squared.sum()), "moving_pixels": int(m.sum()), "border_pixels": int(border.sum())}


def gaussian_window_1d(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """(size,) float64 normalised Gaussian g_k ~ exp(-(k - size // 2)^2 / (2 sigma^2))."""
    k = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(k**2) / (2.0 * sigma**2))
    return g / g.sum()


def _blur(x: np.ndarray) -> np.ndarray:
    """Gaussian filter of x (H, W, C) per channel with zero padding ("same" size), float64.

    The 11x11 window is the outer product of the 1-D one, so two 1-D passes equal the 2-D correlation exactly, also
    at zero-padded borders; the "valid" map is this one with the 5-pixel border cropped."""
    g = gaussian_window_1d()
    x = ndimage.correlate1d(x, g, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(x, g, axis=1, mode="constant", cval=0.0)


def ssim_map(prediction: np.ndarray, target: np.ndarray, valid: bool) -> np.ndarray:
    """Per-pixel, per-channel SSIM of two (H, W, C) float64 images in [0, 1].

    valid=False: the 3DGS map (H, W) with zero padding; valid=True: windows inside the image only (H-10, W-10)."""
    x, y = prediction, target
    mu_x, mu_y = _blur(x), _blur(y)
    var_x = _blur(x * x) - mu_x**2
    var_y = _blur(y * y) - mu_y**2
    cov_xy = _blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    ssim = numerator / denominator
    border = WINDOW_SIZE // 2
    return ssim[border:-border, border:-border] if valid else ssim


def ssim_3dgs(prediction: Image, target: Image) -> float:
    """SSIM, 3DGS convention: zero padding 5, mean over the full (H, W) map and the channels."""
    x, y = _pair(prediction, target)
    return float(ssim_map(x, y, valid=False).mean())


def ssim_valid(prediction: Image, target: Image) -> float:
    """SSIM over the windows that lie inside the image (scikit-image Gaussian convention)."""
    x, y = _pair(prediction, target)
    if min(x.shape[:2]) < WINDOW_SIZE:
        raise ValueError(f"ssim_valid needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE}")
    return float(ssim_map(x, y, valid=True).mean())


def masked_ssim(prediction: Image, target: Image, mask: Image) -> float:
    """DyCheck mSSIM (tf.image.ssim style with a partial-convolution mask), ``dycheck/core/metrics/image.py``.

    Every filtering of a quantity z is z~ = valid_conv(z m, g) * 11 / valid_conv(m, 1) where the window holds a valid
    pixel, else 0; first along x, then along y with the first pass's "window has a valid pixel" mask. Variances are
    clipped at 0 and the covariance to +-sqrt(var_x var_y). As in DyCheck, the result is the plain mean of the SSIM map
    over all output pixels (windows without valid pixels have mu = sigma = 0 and count as SSIM 1)."""
    x, y = _pair(prediction, target)                      # (H, W, C) float64
    m = _mask(mask, x)[..., None]                         # (H, W, 1)
    g = gaussian_window_1d()
    border = WINDOW_SIZE // 2

    def partial_filter(z: np.ndarray, valid: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """One "valid" 1-D pass along ``axis``: (filtered z, window-has-a-valid-pixel mask)."""
        crop = [slice(None)] * 3
        crop[axis] = slice(border, z.shape[axis] - border)
        filtered = ndimage.correlate1d(z * valid, g, axis=axis, mode="constant")[tuple(crop)]
        count = ndimage.correlate1d(valid, np.ones(WINDOW_SIZE), axis=axis, mode="constant")[tuple(crop)]
        has_valid = count > 0.5                                       # counts are sums of 0/1 values
        out = np.where(has_valid, filtered * WINDOW_SIZE / np.maximum(count, 1.0), 0.0)
        return out, has_valid.astype(np.float64)

    def blur(z: np.ndarray) -> np.ndarray:
        z, valid = partial_filter(z, m, axis=1)           # along x
        z, _ = partial_filter(z, valid, axis=0)           # along y
        return z

    mu_x, mu_y = blur(x), blur(y)
    var_x = np.maximum(blur(x * x) - mu_x**2, 0.0)
    var_y = np.maximum(blur(y * y) - mu_y**2, 0.0)
    cov_xy = blur(x * y) - mu_x * mu_y
    cov_xy = np.sign(cov_xy) * np.minimum(np.sqrt(var_x * var_y), np.abs(cov_xy))
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return float((numerator / denominator).mean())


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _numpy(image: Image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return np.asarray(image, dtype=np.float64)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")


def _mask(mask: Image, like: np.ndarray) -> np.ndarray:
    """(H, W) float64 mask in {0, 1} from an (H, W) or (H, W, 1) array."""
    m = _numpy(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != like.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match the image {like.shape[:2]}")
    return (m > 0.5).astype(np.float64)


def _pair(prediction: Image, target: Image) -> tuple[np.ndarray, np.ndarray]:
    """Two images -> two (H, W, C) float64 arrays of the same shape."""
    a, b = _numpy(prediction), _numpy(target)
    _check_pair(a, b)
    return (a[..., None], b[..., None]) if a.ndim == 2 else (a, b)
