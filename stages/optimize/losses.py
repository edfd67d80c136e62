"""Training losses: L1, SSIM (pure PyTorch), scale-and-shift-invariant depth, motion and scale regularisers.

SSIM: Gaussian window 11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, per channel, population statistics. ``padding="valid"``
drops the 5-pixel border (= fused-ssim ``padding="valid"`` = skimage ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``); ``padding="same"`` zero-pads and averages the full map
(3DGS's ``ssim``). See ``shared/spec/metrics-and-data.md`` section 2.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

_WINDOWS: dict[tuple, torch.Tensor] = {}


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian taps (kept per size, sigma, device and dtype; inside a torch.compile graph,
    a constant of the graph instead)."""
    def taps() -> torch.Tensor:       # made on the device: inside a compiled graph, no host-to-device copy
        k = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
        g = torch.exp(-(k**2) / (2 * sigma**2))
        return (g / g.sum()).to(device=device, dtype=dtype)

    if torch.compiler.is_compiling():
        return taps()
    key = (size, sigma, str(device), dtype)
    if key not in _WINDOWS:
        _WINDOWS[key] = taps()
    return _WINDOWS[key]


def _filter(x: torch.Tensor, window: torch.Tensor, padding: int) -> torch.Tensor:
    """Separable depthwise filtering of (B, C, H, W) with a 1-D window."""
    c = x.shape[1]
    size = window.numel()
    wx = window.view(1, 1, 1, size).expand(c, 1, 1, size)
    wy = window.view(1, 1, size, 1).expand(c, 1, size, 1)
    x = F.conv2d(x, wx, padding=(0, padding), groups=c)
    return F.conv2d(x, wy, padding=(padding, 0), groups=c)


def _filter_adjoint(x: torch.Tensor, window: torch.Tensor, padding: int) -> torch.Tensor:
    """The adjoint (transpose) of :func:`_filter`: maps a gradient of its output to one of its input."""
    c = x.shape[1]
    size = window.numel()
    wx = window.view(1, 1, 1, size).expand(c, 1, 1, size)
    wy = window.view(1, 1, size, 1).expand(c, 1, size, 1)
    x = F.conv_transpose2d(x, wy, padding=(padding, 0), groups=c)
    return F.conv_transpose2d(x, wx, padding=(0, padding), groups=c)


C1, C2 = 0.01**2, 0.03**2


def _ssim_parts(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, pad: int) -> tuple[torch.Tensor, ...]:
    """(mu_a, mu_b, numerator factors (2 mu_a mu_b + C1, 2 cov + C2), denominator factors (mu_a^2 + mu_b^2 + C1,
    var_a + var_b + C2)), each (B, C, H', W'); SSIM = n1 n2 / (d1 d2)."""
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)               # (B, 5C, H, W): one filtering pass
    mu_a, mu_b, e_aa, e_bb, e_ab = _filter(stacked, window, pad).chunk(5, dim=1)
    mu_aa, mu_bb, mu_ab = mu_a**2, mu_b**2, mu_a * mu_b
    var_a, var_b, cov = e_aa - mu_aa, e_bb - mu_bb, e_ab - mu_ab
    return mu_a, mu_b, 2 * mu_ab + C1, 2 * cov + C2, mu_aa + mu_bb + C1, var_a + var_b + C2


def _window_and_pad(a: torch.Tensor, padding: str, size: int = 11, sigma: float = 1.5) -> tuple[torch.Tensor, int]:
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    return gaussian_window(size, sigma, a.device, a.dtype), size // 2 if padding == "same" else 0


def ssim_map(a: torch.Tensor, b: torch.Tensor, padding: str = "valid", size: int = 11,
             sigma: float = 1.5) -> torch.Tensor:
    """SSIM map of images a, b (B, C, H, W) in [0, 1]: (B, C, H', W')."""
    window, pad = _window_and_pad(a, padding, size, sigma)
    _, _, n1, n2, d1, d2 = _ssim_parts(a, b, window, pad)
    return (n1 * n2) / (d1 * d2)


class _MeanSSIM(torch.autograd.Function):
    """Mean of :func:`ssim_map`, with its gradient written out: about half the operators of autograd's, which
    matters for a training step whose cost is the number of operators it launches.

    With S = n1 n2 / (d1 d2) per window and the filtered maps mu_a, E[a^2], E[ab] (mu_b, E[b^2] alike):
    dS/dmu_a = 2 S (mu_b / n1 - mu_b / n2 - mu_a / d1 + mu_a / d2), dS/dE[a^2] = -S / d2, dS/dE[ab] = 2 S / n2;
    the filter is linear, so dL/da = F^T(dL/dmu_a) + 2 a F^T(dL/dE[a^2]) + b F^T(dL/dE[ab]) with F^T its adjoint.
    """

    @staticmethod
    def forward(ctx, a, b, window, pad: int):
        mu_a, mu_b, n1, n2, d1, d2 = _ssim_parts(a, b, window, pad)
        s = (n1 * n2) / (d1 * d2)
        ctx.pad = pad
        ctx.save_for_backward(a, b, window, mu_a, mu_b, n1, n2, d1, d2, s)
        return s.mean()

    @staticmethod
    def backward(ctx, grad):
        a, b, window, mu_a, mu_b, n1, n2, d1, d2, s = ctx.saved_tensors
        g = grad * (2.0 / s.numel()) * s                                  # 2 dL/dS
        d_e_ab = g / n2                                                    # dL/dE[ab]
        d_e_sq = -0.5 * g / d2                                             # dL/dE[a^2] = dL/dE[b^2]
        inv_n, inv_d = 1 / n1 - 1 / n2, 1 / d2 - 1 / d1
        maps = [g * (mu_b * inv_n + mu_a * inv_d), d_e_sq, d_e_ab]         # dL/dmu_a, dL/dE[a^2], dL/dE[ab]
        want_b = ctx.needs_input_grad[1]
        if want_b:
            maps.append(g * (mu_a * inv_n + mu_b * inv_d))                 # dL/dmu_b
        back = _filter_adjoint(torch.cat(maps, dim=1), window, ctx.pad).chunk(len(maps), dim=1)
        grad_a = torch.addcmul(torch.addcmul(back[0], a, back[1], value=2), b, back[2])
        grad_b = torch.addcmul(torch.addcmul(back[3], b, back[1], value=2), a, back[2]) if want_b else None
        return grad_a, grad_b, None, None


def ssim(a: torch.Tensor, b: torch.Tensor, padding: str = "valid") -> torch.Tensor:
    """Mean SSIM of (B, C, H, W) or (H, W, C) images (scalar)."""
    if a.dim() == 3:
        a, b = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    window, pad = _window_and_pad(a, padding)
    return _MeanSSIM.apply(a, b, window, pad)


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_lambda: float) -> tuple[torch.Tensor, ...]:
    """(1 - w) L1 + w (1 - SSIM_valid) for (H, W, 3) images. Returns (loss, l1, ssim); ssim is NaN for w = 0."""
    l1 = (render - target).abs().mean()
    if ssim_lambda == 0:
        return l1, l1, torch.full_like(l1, float("nan"))     # filled on the device: no host-to-device copy
    s = ssim(render, target)
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - s), l1, s


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


class _Anisotropy(torch.autograd.Function):
    """:func:`anisotropy_loss` as one autograd node with its gradient written out (the same values: +g to each
    Gaussian's largest log-scale, -g to its smallest, g = dL/dratio x ratio)."""

    @staticmethod
    def forward(ctx, log_scales, max_ratio: float):
        largest, hi = log_scales.max(dim=-1)
        smallest, lo = log_scales.min(dim=-1)
        ratio = torch.exp(largest - smallest)
        excess = F.relu(ratio - max_ratio)
        ctx.save_for_backward(hi, lo, ratio, excess)
        ctx.shape = log_scales.shape
        return excess.mean()

    @staticmethod
    def backward(ctx, grad):
        hi, lo, ratio, excess = ctx.saved_tensors
        g = (grad / excess.numel() * ratio * (excess > 0))[:, None]                       # (N, 1)
        grad_log_scales = g.new_zeros(ctx.shape).scatter_(-1, hi[:, None], g)
        return grad_log_scales.scatter_add_(-1, lo[:, None], -g), None


def anisotropy_loss(log_scales: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """mean(relu(max scale / min scale - max_ratio)) over Gaussians; log_scales (N, 3)."""
    return _Anisotropy.apply(log_scales, max_ratio)


def residual_loss(displacement: torch.Tensor, scene_scale: float) -> torch.Tensor:
    """Mean over Gaussians of the squared displacement their own motion-bases coefficients give them; displacement
    (M, D) with the position channels (the first 3, world units) divided by ``scene_scale`` and the rest
    (quaternion, log-scale, opacity offsets) as they are. The hybrids' (planes_bases, mlp_bases, rigid_bases) hold
    on their per-Gaussian part: a displacement, not the coefficients, so that scaling the shared curves up and the
    coefficients down (the same motion) does not evade it."""
    position = displacement[:, :3].square().sum(1) / scene_scale ** 2
    rest = displacement[:, 3:].square().sum(1)
    return (position + rest).mean() if displacement.shape[0] else displacement.sum()


def opacity_loss(opacity_logits: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean opacity, sigmoid(logit), over Gaussians; opacity_logits (N,). Its gradient is 1/N in every Gaussian's
    opacity: a steady pull towards transparency that only Gaussians the renders need resist. weights (N,), if
    given, scale each Gaussian's term (and pull) and are not differentiated; the mean still divides by N."""
    opacity = torch.sigmoid(opacity_logits)
    return opacity.mean() if weights is None else (opacity * weights.detach()).mean()


def temporal_weights(times: Sequence[float], centers: torch.Tensor, log_scales: torch.Tensor,
                     is_dynamic: torch.Tensor) -> torch.Tensor:
    """Each Gaussian's temporal window (the factor :func:`~stages.optimize.model.temporal_opacity` applies to its
    opacity) averaged over ``times`` (on the renders' time axis); 1 for static Gaussians. centers, log_scales,
    is_dynamic (N,); returns (N,) in [0, 1], without gradient."""
    from stages.optimize.model import temporal_opacity

    with torch.no_grad():
        ones = torch.ones_like(centers)
        return torch.stack([temporal_opacity(ones, t, centers, log_scales, is_dynamic) for t in times]).mean(0)


def alpha_loss(rendered_alpha: torch.Tensor, target_alpha: torch.Tensor) -> torch.Tensor:
    """Mask loss: mean absolute difference of the rendered alpha and the dataset's alpha, both (H, W) in [0, 1].
    Penalises semi-transparent floaters over the background (target 0) and holes in the object (target 1)
    directly, where a random background only does so through the colours."""
    return (rendered_alpha - target_alpha).abs().mean()


def silhouette_loss(points_camera: torch.Tensor, K: torch.Tensor, outside: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """Silhouette loss: how far moving points project outside a view's object mask. points_camera (M, 3) in the
    view's camera frame (OpenCV, z forward); K (3, 3) in pixels; outside (H, W) the distance in pixels from each
    pixel centre to the nearest pixel inside the mask (0 inside, a Euclidean distance transform); weights (M,) >= 0.
    Each point's distance is read at its projection (bilinear, pixel centres at integer + 0.5), a projection off
    the image at the nearest point of the image plus its distance from there; in image widths, squared; the loss
    is their weighted mean. Points less than 1e-3 in front of the camera are left out. Unlike the photometric
    loss, whose pull on a misplaced point vanishes beyond its own footprint, the distance keeps pulling it towards
    the nearest part of the object from anywhere."""
    height, width = outside.shape
    depth = points_camera[:, 2]
    ahead = depth > 1e-3
    pixels = (points_camera @ K[:2].T) / depth.clamp_min(1e-3)[:, None]                        # (M, 2) x, y
    size = pixels.new_full((2,), float(width))                      # (W, H) filled on the device: no host copy
    size[1:].fill_(height)
    on_image = torch.minimum(pixels.clamp_min(0), size)                                         # (M, 2)
    beyond = (pixels - on_image).norm(dim=-1)                                                   # (M,) pixels
    grid = on_image * (2 / size) - 1                                                            # (M, 2) in [-1, 1]
    distance = F.grid_sample(outside[None, None].to(grid.dtype), grid[None, None], mode="bilinear",
                             padding_mode="border", align_corners=False)[0, 0, 0] + beyond     # (M,) pixels
    weights = weights * ahead
    return (weights * (distance / width).square()).sum() / weights.sum().clamp_min(1e-12)


def psnr(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of images in [0, 1] (scalar tensor)."""
    mse = (render - target).pow(2).mean()
    return -10.0 * torch.log10(mse.clamp_min(1e-20))


def psnr_from_mse(mse: float) -> float:
    """PSNR (dB) of images in [0, 1] from their mean squared error, on the host (NaN stays NaN)."""
    return -10.0 * math.log10(max(mse, 1e-20)) if mse == mse else float("nan")


def acceleration_loss(acceleration: torch.Tensor, scene_scale: float) -> torch.Tensor:
    """Motion smoothness: mean squared second difference x(t - h) - 2 x(t) + x(t + h) of trajectories (M, 3) (see
    ``GaussianModel4D.accelerations``), in units of scene_scale^2 per (time step h)^2."""
    return acceleration.pow(2).sum() / (scene_scale**2 * len(acceleration))


def coherence_loss(velocity: torch.Tensor, neighbor_velocity: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Local coherence of motion: the squared difference of each Gaussian's velocity and its neighbours', weighted
    by exp(-d^2 / (2 r^2)) with r the median neighbour distance, relative to the weighted mean squared velocity of
    the Gaussians and their neighbours (detached: a scale-free measure that cannot be lowered by slowing
    everything). 0 when every group moves as one translation.

    velocity (M, 3), neighbor_velocity (M, k, 3): displacements over one time step; distance (M, k) to each
    neighbour at the time they were taken (no gradient flows through it).
    """
    distance = distance.detach()
    radius = distance.median().clamp_min(1e-12)
    weight = torch.exp(-0.5 * (distance / radius) ** 2)                                  # (M, k)
    mismatch = (neighbor_velocity - velocity[:, None]).square().sum(-1)                  # (M, k)
    speed = 0.5 * (velocity[:, None].square().sum(-1) + neighbor_velocity.square().sum(-1)).detach()
    return (weight * mismatch).sum() / (weight * speed).sum().clamp_min(1e-20)


def rigidity_loss(deformed: torch.Tensor, deformed_neighbors: torch.Tensor, canonical: torch.Tensor,
                  canonical_neighbors: torch.Tensor) -> torch.Tensor:
    """Local isometry: sum of squared changes of the distances between each Gaussian and its neighbours, relative
    to the sum of the squared canonical distances (a scale-free relative stretch; 0 for any rigid motion).

    deformed (M, 3), deformed_neighbors (M, k, 3) at one time; canonical, canonical_neighbors at the anchor time.
    """
    d_t = (deformed[:, None] - deformed_neighbors).norm(dim=-1)          # (M, k)
    d_0 = (canonical[:, None] - canonical_neighbors).norm(dim=-1)
    return (d_t - d_0).pow(2).sum() / d_0.pow(2).sum().clamp_min(1e-20)
