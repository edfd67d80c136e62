"""Training losses: L1, SSIM (pure PyTorch), scale-and-shift-invariant depth, motion and scale regularisers.

SSIM: Gaussian window 11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, per channel, population statistics. ``padding="valid"``
drops the 5-pixel border (= fused-ssim ``padding="valid"`` = skimage ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``); ``padding="same"`` zero-pads and averages the full map
(3DGS's ``ssim``). See ``shared/spec/metrics-and-data.md`` section 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_WINDOWS: dict[tuple, torch.Tensor] = {}


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian taps."""
    key = (size, sigma, str(device), dtype)
    if key not in _WINDOWS:
        k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        g = torch.exp(-(k**2) / (2 * sigma**2))
        _WINDOWS[key] = (g / g.sum()).to(device=device, dtype=dtype)
    return _WINDOWS[key]


def _filter(x: torch.Tensor, window: torch.Tensor, padding: int) -> torch.Tensor:
    """Separable depthwise filtering of (B, C, H, W) with a 1-D window."""
    c = x.shape[1]
    size = window.numel()
    wx = window.view(1, 1, 1, size).expand(c, 1, 1, size)
    wy = window.view(1, 1, size, 1).expand(c, 1, size, 1)
    x = F.conv2d(x, wx, padding=(0, padding), groups=c)
    return F.conv2d(x, wy, padding=(padding, 0), groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, padding: str = "valid", size: int = 11,
             sigma: float = 1.5) -> torch.Tensor:
    """SSIM map of images a, b (B, C, H, W) in [0, 1]: (B, C, H', W')."""
    window = gaussian_window(size, sigma, a.device, a.dtype)
    pad = size // 2 if padding == "same" else 0
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    c1, c2 = 0.01**2, 0.03**2
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)               # (B, 5C, H, W): one filtering pass
    mu_a, mu_b, e_aa, e_bb, e_ab = _filter(stacked, window, pad).chunk(5, dim=1)
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, padding: str = "valid") -> torch.Tensor:
    """Mean SSIM of (B, C, H, W) or (H, W, C) images (scalar)."""
    if a.dim() == 3:
        a, b = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    return ssim_map(a, b, padding).mean()


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_lambda: float) -> tuple[torch.Tensor, ...]:
    """(1 - w) L1 + w (1 - SSIM_valid) for (H, W, 3) images. Returns (loss, l1, ssim)."""
    l1 = (render - target).abs().mean()
    s = ssim(render, target) if ssim_lambda > 0 else l1.new_tensor(float("nan"))
    loss = (1 - ssim_lambda) * l1 + (ssim_lambda * (1 - s) if ssim_lambda > 0 else 0.0)
    return loss, l1, s


def fit_scale_shift(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (s, t) minimising sum (s * source + t - target)^2 over 1-D tensors (float64 inside)."""
    x, y = source.double(), target.double()
    n = x.numel()
    sx, sy, sxx, sxy = x.sum(), y.sum(), (x * x).sum(), (x * y).sum()
    det = n * sxx - sx * sx
    if n < 2 or det.abs() < 1e-12 * max(float(n * sxx), 1e-30):
        return torch.ones((), dtype=source.dtype, device=source.device), (y.mean() - x.mean()).to(source.dtype)
    s = (n * sxy - sx * sy) / det
    t = (sy - s * sx) / n
    return s.to(source.dtype), t.to(source.dtype)


def depth_loss(rendered: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant L1 depth loss.

    The target (geometry-stage depth, any scale) is aligned to the rendered z-depth by a least-squares scale and
    shift (fitted with the rendering detached), then L1 over valid pixels, divided by the mean rendered depth so
    the loss has no units. rendered, target (H, W); valid (H, W) bool. Returns 0 with < 16 valid pixels.
    """
    r, d = rendered[valid], target[valid]
    if r.numel() < 16:
        return rendered.sum() * 0.0
    s, t = fit_scale_shift(d, r.detach())
    return (r - (s * d + t)).abs().mean() / r.detach().abs().mean().clamp_min(1e-8)


def anisotropy_loss(log_scales: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """mean(relu(max scale / min scale - max_ratio)) over Gaussians; log_scales (N, 3)."""
    ratio = torch.exp(log_scales.max(dim=-1).values - log_scales.min(dim=-1).values)
    return F.relu(ratio - max_ratio).mean()


def psnr(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of images in [0, 1] (scalar tensor)."""
    mse = (render - target).pow(2).mean()
    return -10.0 * torch.log10(mse.clamp_min(1e-20))


def acceleration_loss(positions: torch.Tensor, scene_scale: float) -> torch.Tensor:
    """Motion smoothness: mean squared second difference of trajectories sampled at t - h, t, t + h.

    positions (3, M, 3); the result is in units of scene_scale^2 per (time step h)^2.
    """
    acceleration = positions[0] - 2 * positions[1] + positions[2]          # (M, 3)
    return (acceleration / scene_scale).pow(2).sum(dim=-1).mean()


def rigidity_loss(deformed: torch.Tensor, deformed_neighbors: torch.Tensor, canonical: torch.Tensor,
                  canonical_neighbors: torch.Tensor) -> torch.Tensor:
    """Local isometry: sum of squared changes of the distances between each Gaussian and its neighbours, relative
    to the sum of the squared canonical distances (a scale-free relative stretch; 0 for any rigid motion).

    deformed (M, 3), deformed_neighbors (M, k, 3) at one time; canonical, canonical_neighbors at the anchor time.
    """
    d_t = (deformed[:, None] - deformed_neighbors).norm(dim=-1)          # (M, k)
    d_0 = (canonical[:, None] - canonical_neighbors).norm(dim=-1)
    return (d_t - d_0).pow(2).sum() / d_0.pow(2).sum().clamp_min(1e-20)
