"""Time-conditioned deformation of the dynamic Gaussians.

Every model is an *offset function* ``offsets(x, t) -> (M, D)`` over a Gaussian's canonical position x (its position
at its anchor time t_a, the time it was seen) and a time t, with D = 10 channels: position (3, world units),
quaternion (4, added to the raw quaternion), log-scale (3), plus 1 opacity-logit channel when enabled. A Gaussian at
time t is its canonical state plus

    displacement(x, t, t_a) = offsets(x, t) - offsets(x, t_a),

so at its anchor time every Gaussian is exactly where the geometry stage saw it. For the explicit model the offsets
are per-Gaussian (a Lagrangian trajectory: exact for any motion). For the neural fields they are an Eulerian field
over (x, t); the difference is then the integral of the field's time derivative, a velocity field, which is exact to
first order in t - t_a (and temporal opacity keeps dynamic Gaussians near their anchor time).

Models:
* :class:`MotionBases` (``bases``): B shared basis curves phi_b(t) (uniform cubic B-splines, learned), per-Gaussian
  coefficients c (N, B, D) in the parameter dict: offsets = sum_b c_b phi_b(t).
* :class:`MLPField` (``mlp``): positional-encoded MLP over (x normalised to the dynamic points' box, t).
* :class:`PlanesField` (``planes``): multi-resolution space-time planes (xy, xz, yz, xt, yt, zt; features multiplied
  across planes, concatenated across resolutions, K-planes style) and a small MLP head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

POSITION, QUAT, SCALE, OPACITY = slice(0, 3), slice(3, 7), slice(7, 10), slice(10, 11)


def output_channels(with_opacity: bool) -> int:
    return 11 if with_opacity else 10


class Deformation(nn.Module):
    """Base class. Subclasses implement :meth:`offsets`; :meth:`displacement` anchors them."""

    kind: str = ""

    def __init__(self, with_opacity: bool = False):
        super().__init__()
        self.with_opacity = with_opacity
        self.channels = output_channels(with_opacity)

    def per_gaussian_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-Gaussian parameters this model needs in the parameter dict (trailing shapes)."""
        return {}

    def spec(self) -> dict[str, Any]:
        """Constructor arguments, saved with the model (see :func:`build_deformation`)."""
        raise NotImplementedError

    def offsets(self, means: torch.Tensor, times: torch.Tensor, coefs: dict[str, torch.Tensor]) -> torch.Tensor:
        """means (M, 3), times (M,), coefs: per-Gaussian entries (M, ...) -> (M, D)."""
        raise NotImplementedError

    def displacement(self, means: torch.Tensor, time: float | torch.Tensor, anchor_times: torch.Tensor,
                     coefs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(M, D): offsets at ``time`` (scalar or (M,)) minus offsets at each Gaussian's anchor time (M,)."""
        m = means.shape[0]
        times = torch.as_tensor(time, dtype=means.dtype, device=means.device).expand(m)
        both = self.offsets(torch.cat([means, means]), torch.cat([times, anchor_times]),
                            {k: torch.cat([v, v]) for k, v in coefs.items()})   # (2M, D)
        return both[:m] - both[m:]

    def regularization(self) -> torch.Tensor | None:
        """Model-specific regulariser (None if the model has none)."""
        return None


# ----------------------------------------------------------------------------------------------------------------
# Explicit: shared motion bases


def cubic_bspline_weights(s: torch.Tensor) -> torch.Tensor:
    """Uniform cubic B-spline blending weights (..., 4) for local coordinates s in [0, 1]."""
    s2, s3 = s * s, s * s * s
    return torch.stack([(1 - s) ** 3, 3 * s3 - 6 * s2 + 4, -3 * s3 + 3 * s2 + 3 * s + 1, s3], dim=-1) / 6.0


class MotionBases(Deformation):
    """offsets(x, t) = sum_b c_b phi_b(t): B shared curves, per-Gaussian coefficients ``motion_coefs`` (N, B, D).

    phi (B curves) are uniform cubic B-splines with ``knots`` control points over t in [0, 1], initialised to the
    cosines cos(pi b t), b = 1..B (a DCT basis), and learned. Positions are in world units (the coefficients carry
    them); anchoring cancels any constant part of phi.
    """

    kind = "bases"

    def __init__(self, count: int = 12, knots: int = 16, with_opacity: bool = False):
        super().__init__(with_opacity)
        if knots < 4:
            raise ValueError("a cubic B-spline needs at least 4 control points")
        self.count, self.knots = count, knots
        tau = (torch.arange(knots, dtype=torch.float32) - 1.0) / (knots - 3)       # control-point times
        b = torch.arange(1, count + 1, dtype=torch.float32)[:, None]
        self.control = nn.Parameter(torch.cos(math.pi * b * tau[None, :]))         # (B, knots)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "knots": self.knots, "with_opacity": self.with_opacity}

    def per_gaussian_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"motion_coefs": (self.count, self.channels)}

    def basis(self, times: torch.Tensor) -> torch.Tensor:
        """phi at times (M,) -> (M, B)."""
        u = times.clamp(0.0, 1.0) * (self.knots - 3)
        segment = u.floor().clamp(max=self.knots - 4)                      # (M,)
        weights = cubic_bspline_weights(u - segment)                       # (M, 4)
        index = segment.long()[:, None] + torch.arange(4, device=times.device)   # (M, 4)
        # The weights as a dense (M, knots) matrix, so that phi and its gradient for the control points are matrix
        # products (a gather of control[:, index] would scatter-add M * 4 gradients into B * knots entries).
        dense = weights.new_zeros(times.shape[0], self.knots).scatter(1, index, weights)   # (M, knots)
        return dense @ self.control.t()                                    # (M, B)

    def offsets(self, means, times, coefs):
        return torch.einsum("mbd,mb->md", coefs["motion_coefs"], self.basis(times))

    def displacement(self, means, time, anchor_times, coefs):
        times = torch.as_tensor(time, dtype=means.dtype, device=means.device)
        if times.dim() == 0:          # one time for every Gaussian (rendering): phi(t) once, broadcast
            times = times.reshape(1)
        phi = self.basis(times) - self.basis(anchor_times)                 # (M, B)
        return torch.einsum("mbd,mb->md", coefs["motion_coefs"], phi)


# ----------------------------------------------------------------------------------------------------------------
# Neural fields


class Box(nn.Module):
    """Maps world positions into [-1, 1]^3 by an axis-aligned box (centre, half size), saved with the model."""

    def __init__(self, center: torch.Tensor | None = None, half_size: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("center", torch.zeros(3) if center is None else center.detach().float().clone())
        self.register_buffer("half_size", torch.ones(3) if half_size is None else half_size.detach().float().clone())

    @staticmethod
    def around(points: torch.Tensor, margin: float = 0.2) -> "Box":
        lo, hi = points.min(0).values, points.max(0).values
        half = ((hi - lo) / 2 * (1 + margin)).clamp_min(1e-6)
        return Box((lo + hi) / 2, torch.full_like(half, float(half.max())))   # a cube: isotropic encoding

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / self.half_size

    @property
    def scale(self) -> torch.Tensor:
        """World units per normalised unit (scalar)."""
        return self.half_size.max()


def positional_encoding(x: torch.Tensor, octaves: int) -> torch.Tensor:
    """(M, C) -> (M, C (1 + 2 octaves)): x, sin(2^k pi x), cos(2^k pi x), k < octaves."""
    if octaves == 0:
        return x
    freqs = math.pi * 2.0 ** torch.arange(octaves, dtype=x.dtype, device=x.device)   # (L,)
    angles = (x[..., None] * freqs).flatten(-2)                                      # (M, C L)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


def _zero_last(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _to_offsets(raw: torch.Tensor, box: Box) -> torch.Tensor:
    """A network's raw output (M, D) -> offsets: positions scaled from normalised to world units."""
    return torch.cat([raw[:, POSITION] * box.scale, raw[:, 3:]], dim=1)


class MLPField(Deformation):
    """offsets(x, t) = MLP([PE(x_normalised), PE(2t - 1)]), ReLU, one skip connection into the middle layer; the
    last layer starts at zero (no motion)."""

    kind = "mlp"

    def __init__(self, box: Box | None = None, width: int = 128, depth: int = 4, position_octaves: int = 8,
                 time_octaves: int = 6, with_opacity: bool = False):
        super().__init__(with_opacity)
        self.box = box or Box()
        self.width, self.depth = width, depth
        self.position_octaves, self.time_octaves = position_octaves, time_octaves
        in_dim = 3 * (1 + 2 * position_octaves) + (1 + 2 * time_octaves)
        self.skip = depth // 2
        layers = []
        for i in range(depth):
            fan_in = in_dim if i == 0 else width + (in_dim if i == self.skip and i > 0 else 0)
            layers.append(nn.Linear(fan_in, width))
        self.layers = nn.ModuleList(layers)
        self.out = _zero_last(nn.Linear(width, self.channels))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.width, "depth": self.depth,
                "position_octaves": self.position_octaves, "time_octaves": self.time_octaves,
                "with_opacity": self.with_opacity}

    def offsets(self, means, times, coefs):
        encoded = torch.cat([positional_encoding(self.box.normalize(means), self.position_octaves),
                             positional_encoding(times[:, None] * 2 - 1, self.time_octaves)], dim=-1)
        h = encoded
        for i, layer in enumerate(self.layers):
            if i == self.skip and i > 0:
                h = torch.cat([h, encoded], dim=-1)
            h = F.relu(layer(h))
        return _to_offsets(self.out(h), self.box)


PLANE_AXES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))   # xy xz yz xt yt zt (axis 3 = time)


class PlanesField(Deformation):
    """Multi-resolution space-time planes (HexPlane / K-planes layout) and a small MLP head.

    For each spatial resolution r: six feature planes (F channels) over (x, y), (x, z), (y, z) at r x r and
    (x, t), (y, t), (z, t) at r x T. Bilinear samples are multiplied across the six planes; the products of all
    resolutions are concatenated and decoded by Linear-ReLU-Linear (last layer zero: no motion at the start).
    Spatial planes start uniform in [0.1, 0.5], time planes at 1 (time-independent features).
    """

    kind = "planes"

    def __init__(self, box: Box | None = None, resolutions: tuple[int, ...] = (32, 64), time_resolution: int = 16,
                 features: int = 16, head_width: int = 64, with_opacity: bool = False):
        super().__init__(with_opacity)
        self.box = box or Box()
        self.resolutions, self.time_resolution = tuple(int(r) for r in resolutions), int(time_resolution)
        self.features, self.head_width = features, head_width
        planes = []
        for r in self.resolutions:
            for a, b in PLANE_AXES:
                h = self.time_resolution if b == 3 else r              # rows index the second axis
                if b == 3:
                    planes.append(nn.Parameter(torch.ones(1, features, h, r)))
                else:
                    planes.append(nn.Parameter(torch.empty(1, features, h, r).uniform_(0.1, 0.5)))
        self.planes = nn.ParameterList(planes)
        self.hidden = nn.Linear(features * len(self.resolutions), head_width)
        self.out = _zero_last(nn.Linear(head_width, self.channels))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "resolutions": list(self.resolutions), "time_resolution": self.time_resolution,
                "features": self.features, "head_width": self.head_width, "with_opacity": self.with_opacity}

    def offsets(self, means, times, coefs):
        coords = torch.cat([self.box.normalize(means), times[:, None] * 2 - 1], dim=-1).clamp(-1, 1)   # (M, 4)
        axes = coords.unbind(-1)                                                        # x, y, z, t: (M,) each
        # One grid_sample for the three spatial planes of a level and one for its three time planes: the planes of
        # a kind share a shape, so they go as a batch of 3 with one grid each.
        grids = [torch.stack([torch.stack((axes[a], axes[b]), dim=-1) for a, b in pairs])[:, :, None]
                 for pairs in (PLANE_AXES[:3], PLANE_AXES[3:])]                         # 2 x (3, M, 1, 2)
        per_resolution = []
        for level in range(len(self.resolutions)):
            first = level * len(PLANE_AXES)
            product = None
            for kind, grid in enumerate(grids):
                planes = torch.cat(list(self.planes[first + 3 * kind:first + 3 * kind + 3]), dim=0)   # (3, F, H, W)
                sample = F.grid_sample(planes, grid, mode="bilinear", align_corners=True)   # (3, F, M, 1)
                part = sample[0] * sample[1] * sample[2]                                # (F, M, 1)
                product = part if product is None else product * part
            per_resolution.append(product[:, :, 0].t())                                 # (M, F)
        features = torch.cat(per_resolution, dim=-1)                                   # (M, F L)
        return _to_offsets(self.out(F.relu(self.hidden(features))), self.box)

    def regularization(self) -> torch.Tensor:
        """Total variation of the spatial planes (mean squared neighbour difference)."""
        terms = []
        for level in range(len(self.resolutions)):
            for p, (a, b) in enumerate(PLANE_AXES[:3]):
                plane = self.planes[level * len(PLANE_AXES) + p]
                terms.append((plane[..., 1:, :] - plane[..., :-1, :]).pow(2).mean()
                             + (plane[..., :, 1:] - plane[..., :, :-1]).pow(2).mean())
        return torch.stack(terms).mean()


# ----------------------------------------------------------------------------------------------------------------


def build_deformation(spec: dict[str, Any] | None, box: Box | None = None) -> Deformation | None:
    """A deformation model from its :meth:`Deformation.spec` (None or kind 'none' = static)."""
    if spec is None or spec.get("kind") in (None, "none"):
        return None
    args = {k: v for k, v in spec.items() if k != "kind"}
    kind = spec["kind"]
    if kind == "bases":
        return MotionBases(**args)
    if kind == "mlp":
        return MLPField(box=box, **args)
    if kind == "planes":
        args["resolutions"] = tuple(args.get("resolutions", (32, 64)))
        return PlanesField(box=box, **args)
    raise ValueError(f"unknown deformation kind {kind!r}")


def deformation_spec_from_config(cfg, n_times: int) -> dict[str, Any] | None:
    """The deformation spec an :class:`~stages.optimize.config.OptimizeConfig` asks for."""
    kind = cfg.deformation
    if kind == "none":
        return None
    if kind == "bases":
        return {"kind": "bases", "count": cfg.bases_count, "knots": cfg.bases_knots, "with_opacity": cfg.deform_opacity}
    if kind == "mlp":
        return {"kind": "mlp", "width": cfg.mlp_width, "depth": cfg.mlp_depth,
                "position_octaves": cfg.mlp_position_frequencies, "time_octaves": cfg.mlp_time_frequencies,
                "with_opacity": cfg.deform_opacity}
    if kind == "planes":
        time_res = cfg.planes_time_resolution or max(4, n_times // 2)
        return {"kind": "planes", "resolutions": list(cfg.planes_resolution), "time_resolution": time_res,
                "features": cfg.planes_features, "head_width": cfg.planes_head_width,
                "with_opacity": cfg.deform_opacity}
    raise ValueError(f"unknown deformation {kind!r}")
