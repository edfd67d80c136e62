"""Image metrics: PSNR, SSIM (3DGS and "valid" conventions) and DyCheck's masked mPSNR / mSSIM.

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
import torch.nn.functional as F

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


def gaussian_window_1d(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> torch.Tensor:
    """(size,) float64 normalised Gaussian g_k ~ exp(-(k - size // 2)^2 / (2 sigma^2))."""
    k = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(k**2) / (2.0 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Separable Gaussian filter of x [B, C, H, W] per channel; zero ``padding`` on every side.

    The 11x11 window is the outer product of the 1-D one, so two 1-D passes equal the 2-D convolution exactly (also
    at zero-padded borders)."""
    channels = x.shape[1]
    g = gaussian_window_1d().to(x)
    horizontal = g.view(1, 1, 1, -1).expand(channels, 1, 1, WINDOW_SIZE)
    vertical = g.view(1, 1, -1, 1).expand(channels, 1, WINDOW_SIZE, 1)
    x = F.conv2d(x, horizontal, padding=(0, padding), groups=channels)
    return F.conv2d(x, vertical, padding=(padding, 0), groups=channels)


def ssim_map(prediction: torch.Tensor, target: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-pixel, per-channel SSIM of x, y [B, C, H, W] in [0, 1]; returns [B, C, H', W'].

    padding = WINDOW_SIZE // 2 gives the 3DGS map (H' = H), padding = 0 the "valid" map (H' = H - 10)."""
    x, y = prediction, target
    mu_x, mu_y = _blur(x, padding), _blur(y, padding)
    var_x = _blur(x * x, padding) - mu_x**2
    var_y = _blur(y * y, padding) - mu_y**2
    cov_xy = _blur(x * y, padding) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return numerator / denominator


def ssim_3dgs(prediction: Image, target: Image) -> float:
    """SSIM, 3DGS convention: zero padding 5, mean over the full (H, W) map and the channels."""
    x, y = _nchw_pair(prediction, target)
    return float(ssim_map(x, y, padding=WINDOW_SIZE // 2).mean())


def ssim_valid(prediction: Image, target: Image) -> float:
    """SSIM over the windows that lie inside the image (scikit-image Gaussian convention)."""
    x, y = _nchw_pair(prediction, target)
    if min(x.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"ssim_valid needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE}")
    return float(ssim_map(x, y, padding=0).mean())


def masked_ssim(prediction: Image, target: Image, mask: Image) -> float:
    """DyCheck mSSIM (tf.image.ssim style with a partial-convolution mask), ``dycheck/core/metrics/image.py``.

    Every filtering of a quantity z is z~ = valid_conv(z m, g) * 11 / valid_conv(m, 1) where the window holds a valid
    pixel, else 0; first along x, then along y with the first pass's "window has a valid pixel" mask. Variances are
    clipped at 0 and the covariance to +-sqrt(var_x var_y). As in DyCheck, the result is the plain mean of the SSIM map
    over all output pixels (windows without valid pixels have mu = sigma = 0 and count as SSIM 1)."""
    x, y = _nchw_pair(prediction, target)           # [1, C, H, W] float64
    m = torch.from_numpy(_mask(mask, _numpy(prediction))).to(x)[None, None]  # [1, 1, H, W]
    g = gaussian_window_1d().to(x)

    def partial_filter(z: torch.Tensor, valid: torch.Tensor, kernel_shape: tuple[int, int]):
        """One 1-D pass; z [1, C, H, W], valid [1, 1, H, W] in {0, 1} -> (filtered z, window-has-valid mask)."""
        channels = z.shape[1]
        weights = g.view(1, 1, *kernel_shape)
        filtered = F.conv2d(z * valid, weights.expand(channels, 1, *kernel_shape), groups=channels)
        count = F.conv2d(valid, torch.ones_like(weights))
        has_valid = count != 0
        out = torch.where(has_valid, filtered * WINDOW_SIZE / count.clamp_min(1e-12), torch.zeros_like(filtered))
        return out, has_valid.to(z)

    def blur(z: torch.Tensor) -> torch.Tensor:
        z, valid = partial_filter(z, m, (1, WINDOW_SIZE))        # along x
        z, _ = partial_filter(z, valid, (WINDOW_SIZE, 1))        # along y
        return z

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x**2).clamp_min(0.0)
    var_y = (blur(y * y) - mu_y**2).clamp_min(0.0)
    cov_xy = blur(x * y) - mu_x * mu_y
    cov_xy = torch.sign(cov_xy) * torch.minimum(torch.sqrt(var_x * var_y), cov_xy.abs())
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


def _nchw_pair(prediction: Image, target: Image) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (H, W, C) images -> two [1, C, H, W] float64 tensors."""
    a, b = _numpy(prediction), _numpy(target)
    _check_pair(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    to_nchw = lambda v: torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1)[None]  # (H,W,C) -> [1,C,H,W]
    return to_nchw(a), to_nchw(b)
