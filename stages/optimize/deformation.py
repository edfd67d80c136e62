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
* :class:`RigidBases` (``rigid``): K shared rigid motions (rotation about a pivot and a shift, B-splines in t,
  learned) blended per Gaussian by softmax weights ``rigid_logits`` (N, K) (linear blend skinning; Shape of
  Motion's SE(3) bases): the motion itself is shared, not only the curves' shapes.
* :class:`MLPField` (``mlp``): positional-encoded MLP over (x normalised to the dynamic points' box, t).
* :class:`PlanesField` (``planes``): multi-resolution space-time planes (xy, xz, yz, xt, yt, zt; features multiplied
  across planes, concatenated across resolutions, K-planes style) and a small MLP head.
* :class:`PlanesWithBases` (``planes_bases``), :class:`MLPWithBases` (``mlp_bases``), :class:`RigidWithBases`
  (``rigid_bases``): a shared model (the planes field, the mlp field, the rigid motions) plus per-Gaussian motion
  bases (hybrids: the shared part for the bulk of the motion, the coefficients for what it cannot follow).

Both fields can also read a per-Gaussian latent code ``field_embedding`` (N, E) beside (x, t) (``embedding`` > 0;
per-Gaussian embeddings as in E-D3DGS): Gaussians at nearby positions may then move differently, as with the
explicit model, while the network still shares what they have in common.

Both fields can also read each Gaussian's anchor time (``anchor_time``; its per-Gaussian input ``anchor_times``,
:meth:`Deformation.per_gaussian_inputs`): offsets(x, t | t_a) = g(x, t_a, t), so the displacement
g(x, t_a, t) - g(x, t_a, t_a) is a flow map from the anchor time, exact for any motion, as the explicit model's
trajectories are. Without it, two Gaussians at one place seen at different times (a moving part and what it left
behind) share one velocity field there.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stages.optimize.plane_sampler import PlaneLayout, sample_plane_products

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

    def per_gaussian_inputs(self) -> tuple[str, ...]:
        """Per-Gaussian entries of the parameter dict that the model reads but does not own (not learned by it):
        ``anchor_times`` for an anchor-conditioned field. They reach :meth:`offsets` in ``coefs`` like the
        parameters."""
        return ()

    def spec(self) -> dict[str, Any]:
        """Constructor arguments, saved with the model (see :func:`build_deformation`)."""
        raise NotImplementedError

    def offsets(self, means: torch.Tensor, times: torch.Tensor, coefs: dict[str, torch.Tensor]) -> torch.Tensor:
        """means (M, 3), times (M,), coefs: per-Gaussian entries (M, ...) -> (M, D)."""
        raise NotImplementedError

    def displacement(self, means: torch.Tensor, time: float | torch.Tensor, anchor_times: torch.Tensor,
                     coefs: dict[str, torch.Tensor], cache: bool = True) -> torch.Tensor:
        """(M, D): offsets at ``time`` (a float, or a tensor () or (M,)) minus offsets at each Gaussian's anchor time
        (M,). cache: the model may keep what it derives from the times between calls (False under torch.compile,
        whose graphs must not depend on Python-side state)."""
        m = means.shape[0]
        times = _times_like(time, anchor_times)
        both = self.offsets(torch.cat([means, means]), torch.cat([times, anchor_times]),
                            {k: torch.cat([v, v]) for k, v in coefs.items()})   # (2M, D)
        return both[:m] - both[m:]

    def second_difference(self, means: torch.Tensor, times: torch.Tensor, step: float,
                          coefs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(M, D): offsets(x, t - h) - 2 offsets(x, t) + offsets(x, t + h) at per-Gaussian times t (M,), h = ``step``.

        This is the second difference in time of the displacement, and so of each Gaussian's trajectory: its
        canonical state and its anchor-time offsets cancel, so neither is evaluated.
        """
        m = means.shape[0]
        three = self.offsets(means.repeat(3, 1), torch.cat([times - step, times, times + step]),
                             {k: v.repeat(3, *[1] * (v.dim() - 1)) for k, v in coefs.items()})   # (3M, D)
        before, now, after = three.view(3, m, -1).unbind(0)
        return before - 2 * now + after

    def displacement_and_second_difference(self, means: torch.Tensor, time: float | torch.Tensor,
                                           anchor_times: torch.Tensor, coefs: dict[str, torch.Tensor], cache: bool,
                                           other_means: torch.Tensor, other_times: torch.Tensor, step: float,
                                           other_coefs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`displacement` of ``means`` (M, 3) ..., :meth:`second_difference` of ``other_means`` (K, 3) at
        ``other_times`` (K,) ...): (M, D), (K, D). Here, where both are offsets, one evaluation of :meth:`offsets`
        over the 2M + 3K rows: a training step that renders and regularises the motion launches a network's
        operators once instead of twice (the launches bound a step on a GPU). A model that defines either method
        itself (and not this one) gets the two calls, so that its own definitions hold on every path."""
        if (type(self).displacement is not Deformation.displacement
                or type(self).second_difference is not Deformation.second_difference):
            return (self.displacement(means, time, anchor_times, coefs, cache),
                    self.second_difference(other_means, other_times, step, other_coefs))
        m, k = means.shape[0], other_means.shape[0]
        times = _times_like(time, anchor_times)
        rows = self.offsets(torch.cat([means, means, other_means, other_means, other_means]),
                            torch.cat([times, anchor_times, other_times - step, other_times, other_times + step]),
                            {key: torch.cat([v, v, *[other_coefs[key]] * 3]) for key, v in coefs.items()})
        before, now, after = rows[2 * m:].view(3, k, -1).unbind(0)                     # (K, D) each
        return rows[:m] - rows[m:2 * m], before - 2 * now + after

    def regularization(self) -> torch.Tensor | None:
        """Model-specific regulariser (None if the model has none)."""
        return None

    def initialize(self, means: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fit what the model derives from the dynamic Gaussians' initial positions means (M, 3) (its buffers) and
        return initial values (M, ...) of its per-Gaussian parameters; those not returned start at zero."""
        return {}


# ----------------------------------------------------------------------------------------------------------------
# Explicit: shared motion bases


def _times_like(time: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``time`` as an (M,) tensor like ``like`` (M,). A float is filled in on the device (``torch.full``), not copied
    from the host: making a CUDA tensor from Python data is a blocking copy that waits for the GPU."""
    if isinstance(time, torch.Tensor):
        return time.to(like.dtype).expand(like.shape[0])
    return torch.full(like.shape, float(time), dtype=like.dtype, device=like.device)


def cubic_bspline(x: torch.Tensor) -> torch.Tensor:
    """The uniform cubic B-spline centred at 0, elementwise: ((2 - |x|)+^3 - 4 (1 - |x|)+^3) / 6, support (-2, 2).

    Its integer shifts sum to 1; on [0, 1] the four non-zero shifts B(s + 1), B(s), B(s - 1), B(s - 2) are the
    blending weights (1 - s)^3 / 6, (3 s^3 - 6 s^2 + 4) / 6, (-3 s^3 + 3 s^2 + 3 s + 1) / 6, s^3 / 6.
    """
    a = x.abs()
    return ((2 - a).clamp_min(0) ** 3 - 4 * (1 - a).clamp_min(0) ** 3) / 6


def spline_weights(times: torch.Tensor, knot_positions: torch.Tensor) -> torch.Tensor:
    """B-spline weights W (M, knots) at times (M,) in [0, 1] (clamped) for control points at knot_positions (knots,)
    = -1, 0, ..., knots - 2 in the knot coordinate u = t (knots - 3): a pure function (what torch.compile traces)."""
    u = times.clamp(0.0, 1.0) * (knot_positions.shape[0] - 3)                    # (M,)
    return cubic_bspline(u[:, None] - knot_positions)                            # (M, knots)


class SplineInTime(Deformation):
    """Shared base of the models whose learned curves are uniform cubic B-splines over t in [0, 1] with ``knots``
    control points: the control points' weights W(t) (M, knots) at the anchor times and at each render time depend on
    no learned value, so they are kept until their inputs change."""

    _CACHED_TIMES = 4096         # render times whose weights are kept (training uses one per training frame)

    def __init__(self, knots: int, with_opacity: bool = False):
        super().__init__(with_opacity)
        if knots < 4:
            raise ValueError("a cubic B-spline needs at least 4 control points")
        self.knots = knots
        # Control point j sits at u = j - 1 in the knot coordinate u = t (knots - 3).
        self.register_buffer("knot_positions", torch.arange(knots, dtype=torch.float32) - 1.0, persistent=False)
        self._time_weights: dict[tuple, torch.Tensor] = {}            # (time, device, dtype) -> (1, knots)
        self._anchor_weights: tuple[torch.Tensor, int, torch.Tensor] | None = None   # (anchors, version, (M, knots))

    def displacement_and_second_difference(self, means, time, anchor_times, coefs, cache, other_means, other_times,
                                           step, other_coefs):
        """The two separately: neither is a network evaluation here."""
        return (self.displacement(means, time, anchor_times, coefs, cache),
                self.second_difference(other_means, other_times, step, other_coefs))

    def basis_weights(self, times: torch.Tensor) -> torch.Tensor:
        """W (M, knots) at times (M,) in [0, 1] (clamped): a curve with control points C (knots, ...) is W C."""
        return spline_weights(times, self.knot_positions)

    def weights_at(self, time: float | torch.Tensor, anchor_times: torch.Tensor) -> torch.Tensor:
        """W at a render time: (1, knots) for a float (kept per time) or a () tensor, (M, knots) for times (M,)."""
        if isinstance(time, torch.Tensor):
            return self.basis_weights(time.to(anchor_times.dtype).reshape(-1))
        return self._weights_at_time(float(time), anchor_times)

    def anchor_weights(self, anchor_times: torch.Tensor, cache: bool = True) -> torch.Tensor:
        """W (M, knots) at the anchor times (M,), kept while the same tensor is passed (``cache``)."""
        return self._weights_at_anchors(anchor_times) if cache else self.basis_weights(anchor_times)

    def _weights_at_time(self, time: float, like: torch.Tensor) -> torch.Tensor:
        key = (time, like.device, like.dtype)
        weights = self._time_weights.get(key)
        if weights is None:
            weights = self.basis_weights(torch.full((1,), time, dtype=like.dtype, device=like.device))
            if not torch.is_inference_mode_enabled():
                if len(self._time_weights) >= self._CACHED_TIMES:
                    self._time_weights.clear()
                self._time_weights[key] = weights
        return weights

    def _weights_at_anchors(self, anchor_times: torch.Tensor) -> torch.Tensor:
        """W of the anchor times, recomputed only for another tensor (or one changed in place): the model passes the
        same tensor until densification changes the Gaussians. An inference tensor (no version counter) is not
        kept."""
        if anchor_times.is_inference():
            return self.basis_weights(anchor_times)
        cached = self._anchor_weights
        if cached is not None and cached[0] is anchor_times and cached[1] == anchor_times._version:
            return cached[2]
        weights = self.basis_weights(anchor_times)
        if not torch.is_inference_mode_enabled():
            self._anchor_weights = (anchor_times, anchor_times._version, weights)
        return weights


class MotionBases(SplineInTime):
    """offsets(x, t) = sum_b c_b phi_b(t): B shared curves, per-Gaussian coefficients ``motion_coefs`` (N, B, D).

    phi (B curves) are uniform cubic B-splines with ``knots`` control points over t in [0, 1], initialised to the
    cosines cos(pi b t), b = 1..B (a DCT basis), and learned. Positions are in world units (the coefficients carry
    them); anchoring cancels any constant part of phi.

    phi(t) = W(t) control^T with W(t) (M, knots) the control points' B-spline weights: a dense matrix, so that phi
    and its gradient for the control points are matrix products (a gather of control[:, index] would scatter-add
    4M gradients into B x knots entries). W does not depend on learned values, so W of the anchor times and of each
    render time are kept until their inputs change.
    """

    kind = "bases"

    def __init__(self, count: int = 12, knots: int = 16, with_opacity: bool = False):
        super().__init__(knots, with_opacity)
        self.count = count
        tau = (torch.arange(knots, dtype=torch.float32) - 1.0) / (knots - 3)       # control-point times
        b = torch.arange(1, count + 1, dtype=torch.float32)[:, None]
        self.control = nn.Parameter(torch.cos(math.pi * b * tau[None, :]))         # (B, knots)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "knots": self.knots, "with_opacity": self.with_opacity}

    def per_gaussian_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"motion_coefs": (self.count, self.channels)}

    def basis(self, times: torch.Tensor) -> torch.Tensor:
        """phi at times (M,) -> (M, B)."""
        return self.basis_weights(times) @ self.control.t()

    def offsets(self, means, times, coefs):
        return _combine(coefs["motion_coefs"], self.basis(times))

    def displacement(self, means, time, anchor_times, coefs, cache=True):
        at = self.weights_at(time, anchor_times)                                   # (1 or M, knots)
        phi = (at - self.anchor_weights(anchor_times, cache)) @ self.control.t()   # (M, B)
        return _combine(coefs["motion_coefs"], phi)

    def second_difference(self, means, times, step, coefs):
        m = times.shape[0]
        weights = self.basis_weights(torch.cat([times - step, times, times + step])).view(3, m, self.knots)
        curvature = weights[0] - 2 * weights[1] + weights[2]                       # (M, knots)
        return _combine(coefs["motion_coefs"], curvature @ self.control.t())


def _combine(coefs: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """sum_b coefs[m, b, :] phi[m, b]: coefs (M, B, D), phi (M, B) or (1, B) -> (M, D), as one batched product."""
    return torch.bmm(phi.expand(coefs.shape[0], -1).unsqueeze(1), coefs).squeeze(1)


# ----------------------------------------------------------------------------------------------------------------
# Explicit: a blend of shared rigid motions


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a b of quaternions (..., 4) in gsplat's ``[w, x, y, z]`` order (the rotation b, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def quaternion_conjugate(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) [w, x, y, z] -> [w, -x, -y, -z]: the inverse rotation of a unit quaternion."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quaternion_exp(rotation_vectors: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (..., 3) (axis times angle, radians) -> unit quaternions (..., 4) [w, x, y, z]:
    (cos(theta / 2), sin(theta / 2) / theta * r), smooth through theta = 0 (sinc)."""
    half = rotation_vectors.norm(dim=-1, keepdim=True) / 2                                   # (..., 1)
    return torch.cat([torch.cos(half), 0.5 * torch.sinc(half / math.pi) * rotation_vectors], dim=-1)


def quaternion_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4) [w, x, y, z] (broadcast): v + w t + u x t with
    t = 2 u x v, u = q's vector part."""
    w, u = q[..., :1], q[..., 1:]
    t = 2 * torch.linalg.cross(u.expand_as(v), v, dim=-1)
    return v + w * t + torch.linalg.cross(u.expand_as(t), t, dim=-1)


def quaternion_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) [w, x, y, z] -> rotation matrices (..., 3, 3)."""
    w, x, y, z = q.unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def kmeans(points: torch.Tensor, count: int, iterations: int = 10) -> torch.Tensor:
    """Deterministic k-means of points (M, 3): farthest-point seeds (from the point nearest the centroid), then
    Lloyd iterations. Returns the centres (min(count, M), 3); a centre that loses all its points stays put."""
    count = max(1, min(count, points.shape[0]))
    first = (points - points.mean(0)).square().sum(1).argmin()
    chosen = [int(first)]
    distance = (points - points[first]).square().sum(1)                                      # (M,)
    for _ in range(count - 1):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, (points - points[chosen[-1]]).square().sum(1))
    centres = points[chosen].clone()                                                         # (K, 3)
    for _ in range(iterations):
        label = torch.cdist(points, centres).argmin(1)                                       # (M,)
        sums = torch.zeros_like(centres).index_add_(0, label, points)
        counts = torch.bincount(label, minlength=count).to(points.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


class RigidBases(SplineInTime):
    """A linear blend of K shared rigid motions (SE(3) motion bases, as in Shape of Motion).

    Basis k moves space rigidly: at time t it rotates about its pivot p_k (K, 3) by R_k(t) and shifts by d_k(t), the
    rotation vector and the shift (in units of ``unit``, world units per shift unit) being cubic B-splines of t with
    ``knots`` control points, ``control`` (knots, K, 6), zero at the start (no motion). A Gaussian seen at its anchor
    time t_a at x_a is carried to time t by each basis, from where that basis had moved space at t_a,

        x_k(t) = R_k(t) R_k(t_a)^T (x_a - p_k - d_k(t_a)) + p_k + d_k(t),

    and the Gaussian's position is the blend sum_k w_k x_k(t) with w = softmax(``rigid_logits``) (N, K), its own
    (linear blend skinning); its rotation is turned by the normalised blend of the relative rotations
    R_k(t) R_k(t_a)^T (quaternions on one hemisphere). Scales (and opacities) do not change.

    Unlike the per-Gaussian coefficients of :class:`MotionBases`, the motion is shared: every Gaussian that one basis
    carries - copies of one part seen at different times included - moves with it, so that what one view tells about
    a part's motion moves all its copies. :meth:`initialize` puts the pivots at k-means centres of the dynamic
    Gaussians and starts each Gaussian's weights on its nearest centres (the bases all start still; without an
    uneven start, every basis would get the same gradient and they would stay equal).

    The quaternion channels of :meth:`displacement` are R q - q with q the Gaussian's raw quaternion (its
    per-Gaussian input ``quats``), so that q + displacement = R q, which normalises to the turned rotation.
    """

    kind = "rigid"

    def __init__(self, count: int = 32, knots: int = 16, with_opacity: bool = False):
        if with_opacity:
            raise ValueError("rigid: rigid motions leave the opacity alone (set deform_opacity to false)")
        super().__init__(knots, False)
        self.count = count
        self.control = nn.Parameter(torch.zeros(knots, count, 6))                  # (knots, K, 3 rotation + 3 shift)
        self.register_buffer("pivots", torch.zeros(count, 3))                      # (K, 3) world
        self.register_buffer("unit", torch.ones(()))                               # world units per shift unit
        self._distinct: tuple | None = None         # (anchors, version, their AnchorGroups)
        # rigid_tables, rigid_moved and rigid_second_difference compiled (fuse_tables), or None: eager
        self._fused_tables: Callable | None = None
        self._fused_moved: Callable | None = None
        self._fused_second: Callable | None = None

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "knots": self.knots}

    def per_gaussian_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"rigid_logits": (self.count,)}

    def per_gaussian_inputs(self) -> tuple[str, ...]:
        return ("quats", "anchor_times")

    @torch.no_grad()
    def initialize(self, means: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pivots at the k-means centres of the dynamic Gaussians' positions means (M, 3); ``unit`` their box's half
        size; logits -|x - p_k|^2 / (2 sigma^2), sigma a quarter of the median distance d between neighbouring
        centres: a Gaussian at a centre starts with weight e^-8 (3e-4) on a neighbour d away, one halfway between
        two centres on both alike."""
        if means.shape[0] == 0:
            return {}
        means = means.to(self.pivots.dtype)
        centres = kmeans(means, self.count)
        pivots = means.new_zeros(self.count, 3)
        pivots[:len(centres)] = centres
        pivots[len(centres):] = centres[-1]
        self.pivots.copy_(pivots)
        self.unit.fill_(float(((means.max(0).values - means.min(0).values) / 2).max().clamp_min(1e-6)))
        apart = torch.cdist(centres, centres) + torch.eye(len(centres), device=means.device) * 1e30
        sigma = 0.25 * float(apart.min(1).values.median()) if len(centres) > 1 else float(self.unit)
        squared = torch.cdist(means, self.pivots).square()                                     # (M, K)
        return {"rigid_logits": -squared / (2 * max(sigma, 1e-6) ** 2)}

    def motions(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each basis' rotation (T, K, 4) and shift (T, K, 3, world units) at the times whose B-spline weights are
        ``weights`` (T, knots)."""
        return rigid_motions(self.control, self.unit, weights)

    def transforms(self, at: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(R, K, 16): for each row r and basis k, the 3 x 4 matrix [A | b] (row-major, 12 values) that carries a
        point seen at the time whose weights are anchors[r] (anchors (R, knots)) to the time whose weights are at[r]
        (at (1 or R, knots)), A = R_k(t) R_k(t_a)^T and b = p_k + d_k(t) - A (p_k + d_k(t_a)); then A as a
        quaternion on one hemisphere (4 values, so that blends of them do not cancel). Through the compiled
        :func:`rigid_tables` after :meth:`fuse_tables` while gradients are on (training), unless this call is being
        traced itself (``optimize.compile`` compiles the whole deformed state)."""
        return self._fused_or_eager(self._fused_tables, rigid_tables)(self.control, self.pivots, self.unit, at, anchors)

    @staticmethod
    def _fused_or_eager(fused: Callable | None, eager: Callable) -> Callable:
        """The compiled form of a pure function while gradients are on (training) and this call is not being
        traced itself (``optimize.compile`` compiles the whole deformed state: no nested compile), else the eager."""
        if fused is not None and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return fused
        return eager

    def fuse_tables(self, backend: str = "inductor", everything: bool = False) -> None:
        """Compute the motions with ``torch.compile`` (``backend``) while gradients are on: a few hundred operators
        on tables of U x K entries, each a kernel launch when eager (the rigid model's cost on a GPU is launches, not
        arithmetic; docs/gaussians.md), become a few fused kernels. The tables of one render time
        (:func:`rigid_tables`); with ``everything`` (``optimize.rigid_fused_all``) also the whole displacement of
        training's visible subset (:func:`rigid_moved`: the tables of its distinct anchor times, each Gaussian's row
        gathered and blended) and the motion regulariser's second differences (:func:`rigid_second_difference`),
        which take about 40 % less time per step on an H200 and about a minute more of compilation on a fresh host
        (about level by 8000 steps, docs/gaussians.md).
        Sizes (Gaussians, distinct anchor times) change from step to step, so each graph becomes dynamic in them at
        the second size (:func:`compile_function`)."""
        from stages.optimize.model import compile_function

        fuse = functools.partial(compile_function, backend=backend)
        self._fused_tables = fuse(rigid_tables, way_out="optimize.rigid_fused_tables=false")
        self._fused_moved, self._fused_second = (
            (fuse(rigid_moved, way_out="optimize.rigid_fused_all=false"),
             fuse(rigid_second_difference, way_out="optimize.rigid_fused_all=false")) if everything else (None, None))

    @staticmethod
    def blend(means: torch.Tensor, table: torch.Tensor, groups: AnchorGroups | None,
              logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (M, 3) and blended relative rotations (M, 4, unit) of Gaussians at means (M, 3) with blending
        logits (M, K), carried by the maps of ``table`` (R, K, 16, :meth:`transforms`): of their anchor time's row
        when ``groups`` (:class:`AnchorGroups`, R = its U distinct anchor times) is given, else row m each (R = M).
        Blending the affine maps blends the points they move (linear blend skinning):
        sum_k w_k (A_k x + b_k) = (sum_k w_k A_k) x + sum_k w_k b_k."""
        weights = torch.softmax(logits, dim=-1).to(table.dtype)                      # (M, K)
        if groups is None:
            mixed = (weights[..., None] * table).sum(1)                              # (M, 16)
        else:
            mixed = groups.mix(weights, table)                                       # (M, 16)
        affine = mixed[:, :12].view(-1, 3, 4)                                        # (M, 3, 4)
        positions = (affine[..., :3] * means[:, None, :]).sum(-1) + affine[..., 3]   # (M, 3)
        return positions, F.normalize(mixed[:, 12:], dim=-1)

    def displacement(self, means, time, anchor_times, coefs, cache=True):
        at = self.weights_at(time, anchor_times)                                     # (1 or M, knots)
        groups = None
        if at.shape[0] == 1 and cache:     # one render time: the maps of the few distinct anchor times, kept groups
            groups = self._anchor_groups(anchor_times)
            table = self.transforms(at, groups.weights)                              # (U, K, 16)
        elif at.shape[0] == 1 and not torch.compiler.is_compiling():   # ... of a tensor seen once (training's
            # visible subset): found at each call, gathered. (torch.unique cannot be traced: compiled, a row each.)
            values, rows = torch.unique(anchor_times, return_inverse=True)          # (U,), (M,): a host sync
            arguments = (self.control, self.pivots, self.unit, self.knot_positions, at, values, rows, means,
                         coefs["rigid_logits"], coefs["quats"])
            fused = self._fused_or_eager(self._fused_moved, None)
            if fused is not None:
                return fused(*arguments)                                             # (M, 10)
            return rigid_moved(*arguments, tables=self._fused_or_eager(self._fused_tables, rigid_tables))
        else:                              # a time per Gaussian: a map each
            table = self.transforms(at, self.anchor_weights(anchor_times, cache))   # (M, K, 16)
        positions, turn = self.blend(means, table, groups, coefs["rigid_logits"])
        return rigid_channels(means, positions, turn, coefs["quats"])              # (M, 10)

    def second_difference(self, means, times, step, coefs):
        """Position channels: x(t - h) - 2 x(t) + x(t + h) of each Gaussian's trajectory
        (:func:`rigid_second_difference`); the others are zero (the motion regulariser reads positions only)."""
        second = self._fused_or_eager(self._fused_second, rigid_second_difference)(
            self.control, self.pivots, self.unit, self.knot_positions, coefs["anchor_times"].to(times.dtype), times,
            step, means, coefs["rigid_logits"])                                       # (M, 3)
        return torch.cat([second, means.new_zeros(times.shape[0], self.channels - 3)], dim=-1)

    def _anchor_groups(self, anchor_times: torch.Tensor) -> AnchorGroups:
        """The Gaussians grouped by anchor time: a host synchronisation, so kept while the same anchor tensor is
        passed unchanged (as the anchor weights are)."""
        cached = self._distinct
        if cached is not None and cached[0] is anchor_times and cached[1] == anchor_times._version:
            return cached[2]
        groups = AnchorGroups.of(anchor_times, self.basis_weights)
        if not anchor_times.is_inference() and not torch.is_inference_mode_enabled():
            self._distinct = (anchor_times, anchor_times._version, groups)
        return groups


@dataclass(frozen=True, eq=False)
class AnchorGroups:
    """Gaussians grouped by their anchor time, so that blending each one's K maps of its anchor time is one batched
    matrix product per group rather than a gather of K maps per Gaussian (whose backward, a scatter of M rows onto
    the U rows of the table, was most of the rigid model's time on the CPU; on a GPU the two cost the same:
    bench/deformation_bench.py, rows rigid and rigid-gather).

    Group u holds the Gaussians anchored at the u-th distinct anchor time; each Gaussian has a slot
    u * ``width`` + (its rank in the group), ``width`` the largest group's size, so that U * width rows viewed as
    (U, width, ...) put each group in its own batch (unused slots zero).

    weights: (U, knots) B-spline weights of the distinct anchor times; slots: (M,) each Gaussian's slot.
    """

    weights: torch.Tensor
    slots: torch.Tensor
    width: int

    @staticmethod
    def of(anchor_times: torch.Tensor, basis_weights: Callable[[torch.Tensor], torch.Tensor]) -> AnchorGroups:
        """Group anchor_times (M,); basis_weights maps times (U,) to their B-spline weights (U, knots)."""
        values, rows = torch.unique(anchor_times, return_inverse=True)              # (U,), (M,)
        counts = torch.bincount(rows, minlength=len(values))                         # (U,)
        width = int(counts.max()) if len(counts) else 0
        order = torch.argsort(rows, stable=True)                                     # (M,) group by group
        sorted_rows = rows[order]
        starts = torch.cumsum(counts, 0) - counts                                    # (U,) first of each group
        rank = torch.arange(len(rows), device=rows.device) - starts[sorted_rows]     # (M,) rank in its group
        slots = torch.empty_like(rows)
        slots[order] = sorted_rows * width + rank
        return AnchorGroups(basis_weights(values), slots, width)

    def mix(self, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """sum_k weights[m, k] table[group of m, k]: (M, C) for weights (M, K) and table (U, K, C). Groups so uneven
        that the padded layout would hold more than twice M rows gather each Gaussian's K rows instead."""
        groups, count, channels = table.shape
        if groups * self.width > 2 * max(len(self.slots), 1):
            rows = torch.div(self.slots, self.width, rounding_mode="floor")                  # (M,) its group
            return (weights[..., None] * table.index_select(0, rows)).sum(1)                # (M, C)
        padded = weights.new_zeros(groups * self.width, count).index_copy(0, self.slots, weights)  # (U P, K)
        mixed = torch.bmm(padded.view(groups, self.width, count), table)            # (U, P, C)
        return mixed.view(groups * self.width, channels).index_select(0, self.slots)  # (M, C)


def rigid_motions(control: torch.Tensor, unit: torch.Tensor,
                  weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The K rigid motions at T times: rotations (T, K, 4) and shifts (T, K, 3, world units) from the B-spline weights
    (T, knots) of the times and the control points control (knots, K, 6: rotation vector, shift in ``unit``s)."""
    values = (weights @ control.flatten(1)).view(weights.shape[0], control.shape[1], 6)   # (T, K, 6)
    return quaternion_exp(values[..., :3]), values[..., 3:] * unit


def rigid_tables(control: torch.Tensor, pivots: torch.Tensor, unit: torch.Tensor, at: torch.Tensor,
                 anchors: torch.Tensor) -> torch.Tensor:
    """:meth:`RigidBases.transforms` as a pure function of tensors (what :meth:`RigidBases.fuse_tables` compiles):
    (R, K, 16) maps from the times whose weights are anchors (R, knots) to those whose weights are at (1 or R,
    knots), for the motions of control (knots, K, 6) about pivots (K, 3)."""
    rotation_at, shift_at = rigid_motions(control, unit, at)                     # (1 or R, K, 4), (.., K, 3)
    rotation_anchor, shift_anchor = rigid_motions(control, unit, anchors)        # (R, K, 4), (R, K, 3)
    relative = quaternion_multiply(rotation_at, quaternion_conjugate(rotation_anchor))          # (R, K, 4)
    relative = torch.where(relative[..., :1] < 0, -relative, relative)
    matrix = quaternion_matrix(relative)                                         # (R, K, 3, 3)
    offset = pivots + shift_at - (matrix @ (pivots + shift_anchor)[..., None])[..., 0]          # (R, K, 3)
    return torch.cat([torch.cat([matrix, offset[..., None]], dim=-1).flatten(-2), relative], dim=-1)


def rigid_channels(means: torch.Tensor, positions: torch.Tensor, turn: torch.Tensor,
                   quats: torch.Tensor) -> torch.Tensor:
    """The displacement channels (M, 10) of Gaussians at means (M, 3) carried to positions (M, 3) and turned by the
    unit quaternions turn (M, 4): position offsets, then R q - q for their raw quaternions quats (M, 4) (so that
    q + displacement = R q), then zero log-scale offsets."""
    return torch.cat([positions - means, quaternion_multiply(turn, quats) - quats,
                      means.new_zeros(len(means), 3)], dim=-1)


def rigid_moved(control: torch.Tensor, pivots: torch.Tensor, unit: torch.Tensor, knot_positions: torch.Tensor,
                at: torch.Tensor, anchor_values: torch.Tensor, rows: torch.Tensor, means: torch.Tensor,
                logits: torch.Tensor, quats: torch.Tensor, tables: Callable = rigid_tables) -> torch.Tensor:
    """:meth:`RigidBases.displacement` (M, 10) at one render time (B-spline weights at (1, knots)) of Gaussians at
    means (M, 3) with raw quaternions quats (M, 4) and blending logits (M, K), anchored at anchor_values[rows]
    (distinct anchor times (U,), rows (M,) int64): the tables of the U anchor times (``tables``: rigid_tables or
    its compiled form), each Gaussian's row gathered and blended. A pure function (what
    :meth:`RigidBases.fuse_tables` compiles with ``everything``, gather and blend then fused in one kernel instead
    of an (M, K, 16) table in memory)."""
    anchors = spline_weights(anchor_values, knot_positions)                        # (U, knots)
    table = tables(control, pivots, unit, at, anchors).index_select(0, rows)       # (M, K, 16)
    positions, turn = RigidBases.blend(means, table, None, logits)
    return rigid_channels(means, positions, turn, quats)


def rigid_second_difference(control: torch.Tensor, pivots: torch.Tensor, unit: torch.Tensor,
                            knot_positions: torch.Tensor, anchor_times: torch.Tensor, times: torch.Tensor, step: float,
                            means: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """x(t - h) - 2 x(t) + x(t + h) (M, 3) of the trajectories of Gaussians seen at means (M, 3) at anchor_times (M,)
    with blending logits (M, K), at times (M,), h = ``step``. Per basis, x_k(t) = R_k(t) y_k + p_k + d_k(t) with
    y_k the point in the basis' frame at the anchor time, R_k(t_a)^T (x_a - p_k - d_k(t_a)), so the pivot cancels
    and each basis contributes (R_k(t - h) - 2 R_k(t) + R_k(t + h)) y_k + (the shift's second difference). A pure
    function (what :meth:`RigidBases.fuse_tables` compiles)."""
    m, count = times.shape[0], control.shape[1]
    rotation_anchor, shift_anchor = rigid_motions(control, unit, spline_weights(anchor_times, knot_positions))
    local = quaternion_rotate(quaternion_conjugate(rotation_anchor),
                              means[:, None, :] - pivots - shift_anchor)                           # (M, K, 3)
    around = torch.cat([times - step, times, times + step])                                         # (3M,)
    rotation, shift = rigid_motions(control, unit, spline_weights(around, knot_positions))          # (3M, K, ...)
    moved = quaternion_rotate(rotation, local.repeat(3, 1, 1)) + shift           # (3M, K, 3), pivot left out
    before, now, after = moved.view(3, m, count, 3).unbind(0)                    # (M, K, 3) each
    weights = torch.softmax(logits, dim=-1).to(moved.dtype)                      # (M, K)
    return (weights[..., None] * (before - 2 * now + after)).sum(1)              # (M, 3)


def rigid_positions_reference(model: RigidBases, means: torch.Tensor, time: float, anchor_times: torch.Tensor,
                              logits: torch.Tensor) -> torch.Tensor:
    """:class:`RigidBases` positions (M, 3) written out point by point (each basis moves each point, then the
    moved points are blended): the reference the matrix form is tested against."""
    rotation_at, shift_at = model.motions(model.basis_weights(torch.full((1,), time, dtype=means.dtype,
                                                                         device=means.device)))
    rotation_anchor, shift_anchor = model.motions(model.basis_weights(anchor_times))            # (M, K, ...)
    relative = quaternion_multiply(rotation_at, quaternion_conjugate(rotation_anchor))          # (M, K, 4)
    local = means[:, None, :] - model.pivots - shift_anchor                                      # (M, K, 3)
    moved = quaternion_rotate(relative, local) + model.pivots + shift_at                         # (M, K, 3)
    return (torch.softmax(logits, dim=-1)[..., None] * moved).sum(1)


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


def encoding_frequencies(octaves: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(L,) = pi 2^k, k < octaves."""
    return math.pi * 2.0 ** torch.arange(octaves, dtype=dtype, device=device)


def positional_encoding(x: torch.Tensor, octaves: int, frequencies: torch.Tensor | None = None) -> torch.Tensor:
    """(M, C) -> (M, C (1 + 2 octaves)): x, sin(2^k pi x), cos(2^k pi x), k < octaves. ``frequencies``: those of
    :func:`encoding_frequencies` in float64, when the caller keeps them (cast to x's dtype here)."""
    if octaves == 0:
        return x
    freqs = (encoding_frequencies(octaves, x.dtype, x.device) if frequencies is None
             else frequencies.to(x.dtype))                                           # (L,)
    angles = (x[..., None] * freqs).flatten(-2)                                      # (M, C L)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


def _zero_last(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _to_offsets(raw: torch.Tensor, box: Box) -> torch.Tensor:
    """A network's raw output (M, D) -> offsets: positions scaled from normalised to world units."""
    channel_scale = torch.cat([box.scale.expand(3), raw.new_ones(raw.shape[1] - 3)])   # (D,): scale, scale, scale, 1...
    return raw * channel_scale


def _embedding_spec(embedding: int) -> dict[str, int]:
    """The spec entry of a field's latent codes: none without them, so specs saved before they existed compare
    equal."""
    return {"embedding": int(embedding)} if embedding > 0 else {}


def _embedding_shapes(embedding: int) -> dict[str, tuple[int, ...]]:
    return {"field_embedding": (embedding,)} if embedding > 0 else {}


def _with_embedding(features: torch.Tensor, coefs: dict[str, torch.Tensor], embedding: int) -> torch.Tensor:
    """features (M, C) -> (M, C + E): the Gaussians' latent codes appended when the field has them."""
    if embedding == 0:
        return features
    return torch.cat([features, coefs["field_embedding"].to(features.dtype)], dim=-1)


def _anchor_spec(anchor_time: bool) -> dict[str, bool]:
    """The spec entry of anchor-time conditioning: none without it (specs saved before it existed compare equal)."""
    return {"anchor_time": True} if anchor_time else {}


class MLPField(Deformation):
    """offsets(x, t) = MLP([PE(x_normalised), PE(2t - 1)(, PE(2 t_a - 1))(, e)]), ReLU, one skip connection into the
    middle layer; the last layer starts at zero (no motion). t_a: the Gaussian's anchor time when ``anchor_time``
    (its per-Gaussian input ``anchor_times``, encoded like t); e: its latent code (E,) when ``embedding`` > 0 (its
    per-Gaussian entry ``field_embedding``, zero-initialised)."""

    kind = "mlp"

    def __init__(self, box: Box | None = None, width: int = 128, depth: int = 4, position_octaves: int = 8,
                 time_octaves: int = 6, with_opacity: bool = False, embedding: int = 0, anchor_time: bool = False):
        super().__init__(with_opacity)
        self.box = box or Box()
        self.width, self.depth = width, depth
        self.position_octaves, self.time_octaves = position_octaves, time_octaves
        self.embedding = int(embedding)
        self.anchor_time = bool(anchor_time)
        in_dim = 3 * (1 + 2 * position_octaves) + (1 + 2 * time_octaves) * (2 if self.anchor_time else 1) \
            + self.embedding
        self.skip = depth // 2
        layers = []
        for i in range(depth):
            fan_in = in_dim if i == 0 else width + (in_dim if i == self.skip and i > 0 else 0)
            layers.append(nn.Linear(fan_in, width))
        self.layers = nn.ModuleList(layers)
        self.out = _zero_last(nn.Linear(width, self.channels))
        self.bf16 = False       # hidden layers in bfloat16: a training-time setting (OptimizeConfig.mlp_bf16, CUDA)
        for name, octaves in (("position_frequencies", position_octaves), ("time_frequencies", time_octaves)):
            self.register_buffer(name, encoding_frequencies(octaves, torch.float64), persistent=False)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.width, "depth": self.depth,
                "position_octaves": self.position_octaves, "time_octaves": self.time_octaves,
                "with_opacity": self.with_opacity, **_embedding_spec(self.embedding), **_anchor_spec(self.anchor_time)}

    def per_gaussian_shapes(self) -> dict[str, tuple[int, ...]]:
        return _embedding_shapes(self.embedding)

    def per_gaussian_inputs(self) -> tuple[str, ...]:
        return ("anchor_times",) if self.anchor_time else ()

    def offsets(self, means, times, coefs):
        parts = [positional_encoding(self.box.normalize(means), self.position_octaves, self.position_frequencies),
                 positional_encoding(times[:, None] * 2 - 1, self.time_octaves, self.time_frequencies)]
        if self.anchor_time:
            anchors = coefs["anchor_times"].to(times.dtype)                                 # (M,)
            parts.append(positional_encoding(anchors[:, None] * 2 - 1, self.time_octaves, self.time_frequencies))
        encoded = _with_embedding(torch.cat(parts, dim=-1), coefs, self.embedding)       # (M, in_dim)
        # bf16: the hidden layers under autocast (training on CUDA, `optimize.mlp_bf16`); the output layer stays in
        # float32, since displacements are differences of two offsets and would lose bits to cancellation.
        with torch.autocast(means.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            h = encoded
            for i, layer in enumerate(self.layers):
                if i == self.skip and i > 0:
                    h = torch.cat([h, encoded], dim=-1)
                h = F.relu(layer(h))
        return _to_offsets(self.out(h.to(encoded.dtype)), self.box)


PLANE_AXES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))   # xy xz yz xt yt zt (axis 3 = time)
ANCHOR_PLANE_AXES = ((0, 4), (1, 4), (2, 4), (3, 4))           # x t_a, y t_a, z t_a, t t_a (axis 4 = anchor time)


class PlanesField(Deformation):
    """Multi-resolution space-time planes (HexPlane / K-planes layout) and a small MLP head.

    For each spatial resolution r: six feature planes (F channels) over (x, y), (x, z), (y, z) at r x r and
    (x, t), (y, t), (z, t) at r x T (T cells along time; ``time_resolution`` one T for every level or one per
    level, e.g. a coarse level coarse in time and a fine one finer). Bilinear samples are multiplied across the six
    planes; the products of all resolutions are concatenated (with the Gaussian's latent code ``field_embedding``
    (E,) when ``embedding`` > 0) and decoded by Linear-ReLU-Linear (last layer zero: no motion at the start). Spatial
    planes start uniform in [0.1, 0.5], time planes at 1 (time-independent features). With ``anchor_time`` each
    level has four more planes over the Gaussian's anchor time t_a (its per-Gaussian input ``anchor_times``):
    (x, t_a), (y, t_a), (z, t_a) at T x r and (t, t_a) at T x T, starting at 1, multiplied in like the others.

    All planes live in one channel-last parameter ``table`` (C, F), level by level, each level's planes in
    :data:`PLANE_AXES` (then :data:`ANCHOR_PLANE_AXES`) order; :meth:`plane` shows level l's three spatial, three
    time, three anchor-time planes or its (t, t_a) plane (kinds 0-3) as a (planes, F, H, W) view. Sampling is
    :func:`~stages.optimize.plane_sampler.sample_plane_products` (one autograd node; the same values as
    ``F.grid_sample`` with ``align_corners=True``). Models saved with the earlier layouts (one (3, F, H, W) parameter
    per level and kind, or one (1, F, H, W) per plane) load unchanged.
    """

    kind = "planes"

    def __init__(self, box: Box | None = None, resolutions: tuple[int, ...] = (32, 64),
                 time_resolution: int | Sequence[int] = 16, features: int = 16, head_width: int = 64,
                 with_opacity: bool = False, embedding: int = 0, anchor_time: bool = False):
        super().__init__(with_opacity)
        self.box = box or Box()
        self.resolutions = tuple(int(r) for r in resolutions)
        if isinstance(time_resolution, numbers.Real):
            time_resolution = [time_resolution] * len(self.resolutions)
        self.time_resolutions = tuple(int(t) for t in time_resolution)                   # T of each level
        if len(self.time_resolutions) != len(self.resolutions) or min(self.time_resolutions) < 1:
            raise ValueError(f"PlanesField: one time resolution >= 1 per level (resolutions {self.resolutions}, "
                             f"time resolutions {self.time_resolutions})")
        self.features, self.head_width = features, head_width
        self.embedding = int(embedding)
        self.anchor_time = bool(anchor_time)
        blocks, shapes = [], []
        self._block_rows: list[tuple[int, int, int, int]] = []   # (first row, planes, H, W) of each level's blocks
        for r, T in zip(self.resolutions, self.time_resolutions):
            level = [torch.empty(3, features, r, r).uniform_(0.1, 0.5),                  # xy, xz, yz
                     torch.ones(3, features, T, r)]                                        # xt, yt, zt
            if self.anchor_time:
                level += [torch.ones(3, features, T, r), torch.ones(1, features, T, T)]   # x/y/z t_a; t t_a
            for block in level:
                self._block_rows.append((sum(b.shape[0] for b in blocks), *block.shape[:1], *block.shape[2:]))
                blocks.append(block.permute(0, 2, 3, 1).reshape(-1, features))            # (planes H W, F)
                shapes += [tuple(block.shape[2:])] * block.shape[0]
        self.table = nn.Parameter(torch.cat(blocks))                                       # (C, F)
        layout = PlaneLayout.build(shapes, list(self.plane_axes) * len(self.resolutions), len(self.resolutions))
        for name in ("axes", "half_extent", "last", "stride", "offset", "corner_steps"):
            self.register_buffer(f"layout_{name}", getattr(layout, name), persistent=False)
        self._register_total_variation_pairs()
        self.hidden = nn.Linear(features * len(self.resolutions) + self.embedding, head_width)
        self.out = _zero_last(nn.Linear(head_width, self.channels))

    @property
    def layout(self) -> PlaneLayout:
        return PlaneLayout(self.layout_axes, self.layout_half_extent, self.layout_last, self.layout_stride,
                           self.layout_offset, self.layout_corner_steps, len(self.resolutions))

    @property
    def plane_axes(self) -> tuple[tuple[int, int], ...]:
        """(a, b) coordinate columns of each plane of a level, in table order."""
        return PLANE_AXES + (ANCHOR_PLANE_AXES if self.anchor_time else ())

    @property
    def kinds(self) -> int:
        """Blocks of planes per level: spatial, time (and anchor time, time x anchor time)."""
        return 4 if self.anchor_time else 2

    def plane(self, level: int, kind: int) -> torch.Tensor:
        """Level ``level``'s three spatial (kind 0: (3, F, r, r)), time (kind 1: (3, F, T, r)), anchor-time (kind 2:
        (3, F, T, r)) planes or its (t, t_a) plane (kind 3: (1, F, T, T)), a view of the table."""
        start, count, height, width = self._block_rows[self.kinds * level + kind]
        block = self.table[start:start + count * height * width]                          # (count H W, F)
        return block.view(count, height, width, self.features).permute(0, 3, 1, 2)       # (count, F, H, W)

    def _register_total_variation_pairs(self) -> None:
        """Table rows of every pair of neighbouring cells of the spatial planes, along either axis, and each pair's
        weight 1 / (levels x 3 F r (r - 1)): the mean over a level's planes of the mean squared neighbour
        difference along each axis, summed over the two axes, averaged over levels (:meth:`regularization`)."""
        first, second, weight = [], [], []
        for level, r in enumerate(self.resolutions):
            cells = torch.arange(3 * r * r).view(3, r, r) + self._block_rows[self.kinds * level][0]  # (3, v, u)
            for a, b in ((cells[:, :-1, :], cells[:, 1:, :]), (cells[:, :, :-1], cells[:, :, 1:])):
                first.append(a.reshape(-1))
                second.append(b.reshape(-1))
                weight.append(torch.full((a.numel(),), 1.0 / (len(self.resolutions) * 3 * self.features
                                                               * r * max(r - 1, 1))))
        self.register_buffer("tv_first", torch.cat(first), persistent=False)
        self.register_buffer("tv_second", torch.cat(second), persistent=False)
        self.register_buffer("tv_weight", torch.cat(weight), persistent=False)

    def spec(self) -> dict[str, Any]:
        times = self.time_resolutions
        return {"kind": self.kind, "resolutions": list(self.resolutions),
                "time_resolution": times[0] if len(set(times)) == 1 else list(times),
                "features": self.features, "head_width": self.head_width, "with_opacity": self.with_opacity,
                **_embedding_spec(self.embedding), **_anchor_spec(self.anchor_time)}

    def per_gaussian_shapes(self) -> dict[str, tuple[int, ...]]:
        return _embedding_shapes(self.embedding)

    def per_gaussian_inputs(self) -> tuple[str, ...]:
        return ("anchor_times",) if self.anchor_time else ()

    def coordinates(self, means: torch.Tensor, times: torch.Tensor, coefs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(M, 4) or, with ``anchor_time``, (M, 5): x, y, z normalised to the box, 2t - 1 (, 2 t_a - 1), clamped to
        [-1, 1]."""
        columns = [self.box.normalize(means), times[:, None] * 2 - 1]
        if self.anchor_time:
            columns.append(coefs["anchor_times"].to(times.dtype)[:, None] * 2 - 1)
        return torch.cat(columns, dim=-1).clamp(-1, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Earlier layouts: ``planes.{i}`` (3, F, H, W) per level and kind, or (1, F, H, W) per plane."""
        old = sorted((k for k in state_dict if k.startswith(f"{prefix}planes.")),
                     key=lambda k: int(k[len(prefix) + len("planes."):]))
        if old and f"{prefix}table" not in state_dict:
            blocks = [state_dict.pop(k) for k in old]                                     # (1 or 3, F, H, W) each
            state_dict[f"{prefix}table"] = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, b.shape[1]) for b in blocks])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def offsets(self, means, times, coefs):
        coords = self.coordinates(means, times, coefs)                                    # (M, 4 or 5)
        features = sample_plane_products(self.table, coords, self.layout)                 # (M, L, F)
        features = _with_embedding(features.flatten(1), coefs, self.embedding)            # (M, L F + E)
        return _to_offsets(self.out(F.relu(self.hidden(features))), self.box)             # (M, D)

    def regularization(self) -> torch.Tensor:
        """Total variation of the spatial planes: mean squared neighbour difference along each axis (summed over
        the two axes), averaged over the planes and levels."""
        difference = self.table.index_select(0, self.tv_first) - self.table.index_select(0, self.tv_second)
        return (difference.square().sum(1) * self.tv_weight).sum()


def planes_offsets_grid_sample(field: PlanesField, means: torch.Tensor, times: torch.Tensor,
                               anchor_times: torch.Tensor | None = None) -> torch.Tensor:
    """:meth:`PlanesField.offsets` through ``F.grid_sample`` (one call per level and kind of plane; products and
    gradients by autograd): the reference the one-node sampler is tested against. anchor_times (M,): needed when
    the field has ``anchor_time``."""
    if field.embedding:
        raise ValueError("planes_offsets_grid_sample: the reference has no latent codes")
    coefs = {"anchor_times": anchor_times} if field.anchor_time else {}
    coords = field.coordinates(means, times, coefs)                                       # (M, 4 or 5)
    axes = torch.tensor(field.plane_axes, device=coords.device)
    grids = coords[:, axes].transpose(0, 1).unsqueeze(2).contiguous()                     # (6 or 10, M, 1, 2): (a, b)
    kinds = (grids[:3], grids[3:6], grids[6:9], grids[9:]) if field.anchor_time else (grids[:3], grids[3:])
    per_level = []
    for level in range(len(field.resolutions)):
        product = None
        for kind, grid in enumerate(kinds):                                               # spatial, time, ...
            samples = F.grid_sample(field.plane(level, kind), grid, mode="bilinear",
                                    align_corners=True)                                   # (n, F, M, 1)
            part = samples.prod(0)
            product = part if product is None else product * part
        per_level.append(product.squeeze(2).t())                                          # (M, F)
    features = torch.cat(per_level, dim=-1)                                               # (M, F L)
    return _to_offsets(field.out(F.relu(field.hidden(features))), field.box)


# ----------------------------------------------------------------------------------------------------------------
# Hybrid: a shared field plus per-Gaussian motion bases


class FieldWithBases(Deformation):
    """offsets = a shared model's + sum_b c_b phi_b(t): a motion model every Gaussian shares (the ``field_kind``
    part, kept under that name) for the bulk of the motion, plus the explicit model's per-Gaussian coefficients on
    shared B-spline bases for what it cannot follow. Each part keeps its own per-Gaussian entries (``motion_coefs``
    for the bases), its own anchoring and caches; the trainer can hold the coefficients small
    (``optimize.residual_lambda``) so that the shared part carries what it can."""

    field_kind = ""

    def __init__(self, field: dict[str, Any], bases: dict[str, Any], box: Box | None = None):
        super().__init__(bool(field.get("with_opacity", False)))
        if bool(bases.get("with_opacity", False)) != self.with_opacity:
            raise ValueError(f"{self.kind}: both parts must agree on with_opacity")
        self.add_module(self.field_kind, build_deformation({"kind": self.field_kind, **field}, box))
        self.bases = build_deformation({"kind": "bases", **bases})

    @property
    def field(self) -> Deformation:
        return getattr(self, self.field_kind)

    @property
    def box(self) -> Box:
        """The shared field's box (planes_bases, mlp_bases; the rigid motions have none)."""
        return self.field.box

    def spec(self) -> dict[str, Any]:
        part = lambda d: {k: v for k, v in d.spec().items() if k != "kind"}
        return {"kind": self.kind, self.field_kind: part(self.field), "bases": part(self.bases)}

    def per_gaussian_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**self.field.per_gaussian_shapes(), **self.bases.per_gaussian_shapes()}

    def per_gaussian_inputs(self) -> tuple[str, ...]:
        return self.field.per_gaussian_inputs()

    def initialize(self, means: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.field.initialize(means)

    def _split(self, coefs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The entries each part reads: (the shared part's, the bases')."""
        field_keys = (*self.field.per_gaussian_shapes(), *self.field.per_gaussian_inputs())
        return {k: coefs[k] for k in field_keys}, {"motion_coefs": coefs["motion_coefs"]}

    def offsets(self, means, times, coefs):
        field, bases = self._split(coefs)
        return self.field.offsets(means, times, field) + self.bases.offsets(means, times, bases)

    def displacement(self, means, time, anchor_times, coefs, cache=True):
        field, bases = self._split(coefs)
        return (self.field.displacement(means, time, anchor_times, field, cache)
                + self.bases.displacement(means, time, anchor_times, bases, cache))

    def second_difference(self, means, times, step, coefs):
        field, bases = self._split(coefs)
        return (self.field.second_difference(means, times, step, field)
                + self.bases.second_difference(means, times, step, bases))

    def displacement_and_second_difference(self, means, time, anchor_times, coefs, cache, other_means, other_times,
                                           step, other_coefs):
        (field, bases), (other_field, other_bases) = self._split(coefs), self._split(other_coefs)
        shift, second = self.field.displacement_and_second_difference(means, time, anchor_times, field, cache,
                                                                       other_means, other_times, step, other_field)
        return (shift + self.bases.displacement(means, time, anchor_times, bases, cache),
                second + self.bases.second_difference(other_means, other_times, step, other_bases))

    def regularization(self) -> torch.Tensor | None:
        return self.field.regularization()


class PlanesWithBases(FieldWithBases):
    """planes(x, t) + sum_b c_b phi_b(t): the space-time planes field for the smooth bulk of the motion, the
    per-Gaussian coefficients for what a field coarse in time cannot follow (small parts moving fast)."""

    kind = "planes_bases"
    field_kind = "planes"

    def __init__(self, planes: dict[str, Any], bases: dict[str, Any], box: Box | None = None):
        super().__init__(planes, bases, box)


class MLPWithBases(FieldWithBases):
    """mlp(x, t) + sum_b c_b phi_b(t): the positional-encoded MLP field (smooth in space, so neighbouring Gaussians
    share its motion) for the bulk of the motion, the per-Gaussian coefficients for what it cannot follow."""

    kind = "mlp_bases"
    field_kind = "mlp"

    def __init__(self, mlp: dict[str, Any], bases: dict[str, Any], box: Box | None = None):
        super().__init__(mlp, bases, box)


class RigidWithBases(FieldWithBases):
    """The shared rigid motions (:class:`RigidBases`) plus per-Gaussian coefficients on shared B-spline bases: the
    rigid blend for the articulated bulk, the coefficients for what it cannot make (a body that pulses, a cloth)."""

    kind = "rigid_bases"
    field_kind = "rigid"

    def __init__(self, rigid: dict[str, Any], bases: dict[str, Any], box: Box | None = None):
        super().__init__(rigid, bases, box)


def set_mlp_bf16(deformation: Deformation | None, enabled: bool) -> None:
    """Run the hidden layers of every mlp field in ``deformation`` (an ``mlp``, or the shared part of an
    ``mlp_bases``) in bfloat16 or not: a training-time setting (``optimize.mlp_bf16``, CUDA only)."""
    for part in deformation.modules() if deformation is not None else ():
        if isinstance(part, MLPField):
            part.bf16 = enabled


KINDS_WITH_BOX = frozenset({"mlp", "planes", "planes_bases", "mlp_bases"})
"""The deformation kinds whose field reads positions normalised to a :class:`Box` (the dynamic points' box, made by
the caller of :func:`build_deformation` and saved with the model); the others take no box."""


def build_deformation(spec: dict[str, Any] | None, box: Box | None = None) -> Deformation | None:
    """A deformation model from its :meth:`Deformation.spec` (None or kind 'none' = static); ``box`` is read by the
    kinds in :data:`KINDS_WITH_BOX` (None = the unit box)."""
    if spec is None or spec.get("kind") in (None, "none"):
        return None
    args = {k: v for k, v in spec.items() if k != "kind"}
    kind = spec["kind"]
    if kind == "bases":
        return MotionBases(**args)
    if kind == "rigid":
        return RigidBases(**args)
    if kind == "mlp":
        return MLPField(box=box, **args)
    if kind == "planes":
        args["resolutions"] = tuple(args.get("resolutions", (32, 64)))
        return PlanesField(box=box, **args)
    if kind == "planes_bases":
        return PlanesWithBases(box=box, **args)
    if kind == "mlp_bases":
        return MLPWithBases(box=box, **args)
    if kind == "rigid_bases":
        return RigidWithBases(box=box, **args)
    raise ValueError(f"unknown deformation kind {kind!r}")


def deformation_spec_from_config(cfg, n_times: int) -> dict[str, Any] | None:
    """The deformation spec an :class:`~stages.optimize.config.OptimizeConfig` asks for: a hybrid ('<shared>_bases')
    nests its shared part's spec under that part's kind, beside its bases'."""
    kind = cfg.deformation
    if kind == "none":
        return None
    bases = {"count": cfg.bases_count, "knots": cfg.bases_knots, "with_opacity": cfg.deform_opacity}
    if kind == "bases":
        return {"kind": "bases", **bases}
    shared_kind = kind.removesuffix("_bases")
    shared = _shared_spec(cfg, shared_kind, n_times)
    if kind == shared_kind:
        return shared
    return {"kind": kind, shared_kind: {k: v for k, v in shared.items() if k != "kind"}, "bases": bases}


def _shared_spec(cfg, kind: str, n_times: int) -> dict[str, Any]:
    """The spec of a model that can stand alone or be a hybrid's shared part: 'rigid', 'mlp' or 'planes'."""
    if kind == "rigid":
        return {"kind": "rigid", "count": cfg.rigid_count, "knots": cfg.bases_knots,
                "with_opacity": cfg.deform_opacity}
    if kind == "mlp":
        return {"kind": "mlp", "width": cfg.mlp_width, "depth": cfg.mlp_depth,
                "position_octaves": cfg.mlp_position_frequencies, "time_octaves": cfg.mlp_time_frequencies,
                "with_opacity": cfg.deform_opacity, **_embedding_spec(cfg.field_embedding),
                **_anchor_spec(cfg.field_anchor_time)}
    if kind == "planes":
        time_res = cfg.planes_time_resolution or max(4, n_times // 2)
        if cfg.planes_level_time_resolution:
            time_res = list(cfg.planes_level_time_resolution)
        return {"kind": "planes", "resolutions": list(cfg.planes_resolution), "time_resolution": time_res,
                "features": cfg.planes_features, "head_width": cfg.planes_head_width,
                "with_opacity": cfg.deform_opacity, **_embedding_spec(cfg.field_embedding),
                **_anchor_spec(cfg.field_anchor_time)}
    raise ValueError(f"unknown deformation {cfg.deformation!r}")
