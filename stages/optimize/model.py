"""The 4D Gaussian model: static Gaussians plus dynamic Gaussians deformed by a time-conditioned model.

``optimize/model.pt`` is read with :func:`load_model`. Times are floats in [0, 1]; cameras are OpenCV
world-to-camera in the world of ``geometry/cameras.json``.

At time t, a dynamic Gaussian i (``is_dynamic``) with canonical state (mean, quat, log-scale, opacity logit) at its
anchor time t_a is displaced by ``deformation.displacement(mean, t, t_a)`` (see :mod:`stages.optimize.deformation`),
and, with temporal opacity, its opacity is multiplied by exp(-(t - mu_i)^2 / (2 sigma_i^2)). Static Gaussians never
change. With no deformation model (``none``), every Gaussian is static.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.io import atomic_path
from stages.optimize.deformation import POSITION, Box, Deformation, build_deformation
from stages.optimize.gaussians import num_sh_coefficients, sh_coefficients, splats_from_state
from stages.optimize.rasterize import RASTERIZE_MODES
from stages.optimize.rasterize.projection import ALPHA_THRESHOLD

MODEL_FORMAT = "page4dgs-gaussians-4d"
MODEL_VERSION = 3       # the newest this code reads; 2 added rasterize_mode, 3 planes with one time resolution per
                        # level (a list). Each model is written as the oldest version that describes it, so that an
                        # older reader refuses only what it would misread: classic models as 1, antialiased ones as 2,
                        # per-level time resolutions as 3.


def model_version(rasterize_mode: str, deformation_spec: dict[str, Any] | None) -> int:
    """The version a model is written as (:data:`MODEL_VERSION`)."""
    planes = (deformation_spec or {}).get("planes", deformation_spec or {})     # planes_bases nests its planes
    if isinstance(planes.get("time_resolution"), list):
        return 3
    return 1 if rasterize_mode == "classic" else 2


class GaussianModel4D(nn.Module):
    """Per-Gaussian parameters (``splats``, see :mod:`stages.optimize.gaussians`), an optional deformation, and the
    ``rasterize_mode`` ("classic" or "antialiased") every render of the model uses."""

    def __init__(self, splats: nn.ParameterDict, deformation: Optional[Deformation], sh_degree: int,
                 temporal_opacity: bool, rasterize_mode: str = "classic"):
        super().__init__()
        self.splats = splats
        self.deformation = deformation
        self.sh_degree = int(sh_degree)
        self.temporal_opacity = bool(temporal_opacity and deformation is not None)
        if rasterize_mode not in RASTERIZE_MODES:
            raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
        self.rasterize_mode = rasterize_mode
        self.deform_enabled = True          # the trainer switches it off during a static warm-up
        self._dynamic: Optional[tuple] = None   # (is_dynamic, anchor_times, their state, index, anchor times)
        self.compiled_state_at = None       # state_at through torch.compile (see :meth:`compile_deformation`), or None

    # -- queries -----------------------------------------------------------------------------------------------

    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    def dynamic_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(index (M,) int64, anchor_times (M,)) of the dynamic Gaussians.

        Cached until ``is_dynamic`` or ``anchor_times`` is replaced (densification, a restore), moved or changed in
        place, so the host synchronisation that finding them costs happens once per change, not per render; the same
        anchor tensor also lets a deformation keep what it derives from it (the bases' weights). Tensors made under
        ``torch.inference_mode`` have no version counter to tell a change by, so for them nothing is cached.
        """
        flags, anchors = self.splats["is_dynamic"], self.splats["anchor_times"]
        if flags.is_inference() or anchors.is_inference():
            index = torch.nonzero(flags, as_tuple=False).reshape(-1)
            return index, anchors[index]
        state = (flags.device, anchors.dtype, flags._version, anchors._version)
        cached = self._dynamic
        if cached is None or cached[0] is not flags or cached[1] is not anchors or cached[2] != state:
            index = torch.nonzero(flags, as_tuple=False).reshape(-1)
            cached = (flags, anchors, state, index, anchors[index])
            if not torch.is_inference_mode_enabled():
                self._dynamic = cached
        return cached[3], cached[4]

    def dynamic_index(self) -> torch.Tensor:
        """(M,) int64 indices of the dynamic Gaussians (see :meth:`dynamic_set`)."""
        return self.dynamic_set()[0]

    def deformation_parameters(self) -> dict[str, torch.Tensor]:
        """The deformation's per-Gaussian parameters and inputs (:meth:`Deformation.per_gaussian_inputs`, such as
        ``anchor_times``), all N rows: entries (N, ...)."""
        keys = (*self.deformation.per_gaussian_shapes(), *self.deformation.per_gaussian_inputs())
        return {k: self.splats[k] for k in keys}

    def deformation_inputs(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The deformation's per-Gaussian parameters of the rows ``index`` (M,): entries (M, ...).
        ``index_select``, not ``[index]``: its gradient is one ``index_add`` (indexing's sorts before accumulating,
        a few kernels more per step on CUDA)."""
        return {k: v.index_select(0, index) for k, v in self.deformation_parameters().items()}

    def accelerations(self, times: torch.Tensor, step: float, index: torch.Tensor) -> torch.Tensor:
        """Second differences x(t - h) - 2 x(t) + x(t + h) (M, 3), world units, of the positions of the dynamic
        Gaussians ``index`` (M,) at per-Gaussian times t (M,), h = ``step``: the deformation's offsets at the three
        times only, since canonical positions and anchor offsets cancel."""
        return accelerations(self.deformation, self.splats["means"], self.deformation_parameters(), index, times,
                             step)

    @torch.no_grad()
    def same_time_neighbors(self, k: int, chunk: int = 4096) -> torch.Tensor:
        """(N, k) int64: for each dynamic Gaussian, its k nearest dynamic Gaussians of the same anchor time (its own
        index where the slice has fewer); rows of static Gaussians hold their own index. Brute force per time slice
        on the model's device (one host synchronisation for the slice sizes)."""
        n = self.num_gaussians()
        out = torch.arange(n, device=self.device).unsqueeze(1).repeat(1, k)
        index = self.dynamic_index()
        times = self.splats["anchor_times"][index]
        order = torch.argsort(times, stable=True)
        index, times = index[order], times[order]
        _, counts = torch.unique_consecutive(times, return_counts=True)
        means = self.splats["means"]
        start = 0
        for count in counts.tolist():
            members = index[start:start + count]                                   # one time slice
            start += count
            kk = min(k, count - 1)
            if kk < 1:
                continue
            points = means[members]
            for lo in range(0, count, chunk):
                rows = torch.arange(lo, min(lo + chunk, count), device=self.device)
                distance = torch.cdist(points[rows], points)                       # (b, count)
                distance[torch.arange(len(rows), device=self.device), rows] = float("inf")   # not itself
                nearest = distance.topk(kk, dim=1, largest=False).indices          # (b, kk), nearest first
                out[members[rows], :kk] = members[nearest]
        return out

    def positions_at_time(self, time: float, index: torch.Tensor) -> torch.Tensor:
        """Positions (..., 3) of the dynamic Gaussians ``index`` (any shape, repeats allowed) at one ``time``."""
        flat = index.reshape(-1)
        means = self.splats["means"].index_select(0, flat)
        anchor_times = self.splats["anchor_times"].index_select(0, flat)
        # A 0-dim tensor, not a float: these times are random (rigidity), so they must not fill the render-time cache.
        when = torch.full((), float(time), dtype=anchor_times.dtype, device=anchor_times.device)
        shift = self.deformation.displacement(means, when, anchor_times, self.deformation_inputs(flat), False)
        return (means + shift[:, POSITION]).view(*index.shape, 3)

    def gaussians_at(self, time: float, sh_degree: Optional[int] = None, skip_invisible: bool = False,
                     opacity_factors: Optional[torch.Tensor] = None,
                     motion: Optional[tuple[torch.Tensor, torch.Tensor, float]] = None) -> dict[str, torch.Tensor]:
        """The Gaussians at ``time``: means (N, 3), quats (N, 4) raw (w, x, y, z), scales (N, 3) post-activation,
        opacities (N,) post-sigmoid (temporal opacity included), sh (N, K, 3) with K = (d + 1)^2 for
        d = ``sh_degree`` (default: the model's), is_dynamic (N,) bool, deformed (M',) int64 the rows carried to
        ``time`` by the deformation (None when none were).

        skip_invisible: deform only the dynamic Gaussians whose opacity at ``time`` is at least 1/255; the others
        keep their canonical means, quats and scales. A rasterizer culls every Gaussian below 1/255 whatever its
        position and shape (gsplat 1.5.3 and ours), so a render - image, gradients, densification statistics - is
        the same, for a fraction of the deformation's work: with temporal opacity, most dynamic Gaussians are
        invisible at any one time (~88 % in the speed benchmark). Costs one host synchronisation (the count).
        Only with temporal opacity and without an opacity deformation (else the opacity depends on the deformation).

        opacity_factors: (N,) multiplies the opacities (training's dropped Gaussians), before ``skip_invisible``
        decides who is visible; None = as they are.

        motion: (rows (K,) of dynamic Gaussians, times (K,), step h): also their second differences in time (K, D)
        as ``second_difference`` (:meth:`accelerations` reads their position channels), from the same evaluation
        of the deformation as the render's (:func:`state_at`); the entry is there only with ``motion`` and a
        deformation that is on.
        """
        s = self.splats
        dynamic = self.deformation is not None
        deform = dynamic and self.deform_enabled
        opacities, cache = None, True
        if deform and skip_invisible and self.temporal_opacity and not self.deformation.with_opacity:
            # The opacities are final before the deformation: computed here, once, and handed to state_at, so the
            # Gaussians left undeformed are exactly those the rasterizer gets below 1/255 (compiled or not).
            opacities = temporal_opacity(torch.sigmoid(s["opacities"]), float(time), s["time_centers"],
                                         s["time_log_scales"], s["is_dynamic"])
            if opacity_factors is not None:
                opacities, opacity_factors = opacities * opacity_factors, None    # applied here, not again below
            visible = s["is_dynamic"] & (opacities.detach() >= ALPHA_THRESHOLD)
            index = torch.nonzero(visible).reshape(-1)                                   # (M',): one sync
            anchor_times, cache = s["anchor_times"].index_select(0, index).detach(), False
        elif deform:
            index, anchor_times = self.dynamic_set()
        else:
            index, anchor_times = None, None
        if index is not None and index.numel() == 0:
            index = None
        state = (s["means"], s["quats"], s["scales"], s["opacities"])
        temporal = (s["time_centers"], s["time_log_scales"], s["is_dynamic"]) if self.temporal_opacity else None
        motion = motion if deform else None
        per_gaussian = self.deformation_parameters() if index is not None or motion is not None else {}
        if self.compiled_state_at is not None and torch.is_grad_enabled():
            # A tensor time: a float would be a constant of the compiled graph (one compilation per time).
            when = torch.full((), float(time), dtype=s["means"].dtype, device=s["means"].device)
            means, quats, scales, opacities, second = self.compiled_state_at(
                self.deformation, state, temporal, index, anchor_times, per_gaussian, when, False, opacities, motion)
        else:
            means, quats, scales, opacities, second = state_at(self.deformation, state, temporal, index, anchor_times,
                                                               per_gaussian, float(time), cache, opacities, motion)
        if opacity_factors is not None:
            opacities = opacities * opacity_factors
        degree = self.sh_degree if sh_degree is None else min(int(sh_degree), self.sh_degree)
        sh = sh_coefficients(s)[:, : (degree + 1) ** 2]
        out = {"means": means, "quats": quats, "scales": scales, "opacities": opacities,
               "sh": sh, "is_dynamic": s["is_dynamic"] if dynamic else torch.zeros_like(s["is_dynamic"]),
               "deformed": index}
        return out if motion is None else {**out, "second_difference": second}

    def compile_deformation(self, backend: str = "inductor", mode: Optional[str] = None) -> None:
        """Let training renders (``gaussians_at`` with gradients on) run :func:`state_at` through ``torch.compile``
        (:func:`compile_function`, ``mode`` as there); renders without gradients (evaluation, exports) stay eager.
        (Not ``nn.Module.compile``, which compiles a ``forward``; this model has none.)"""
        self.compiled_state_at = compile_function(state_at, backend, mode)

    # -- rendering ---------------------------------------------------------------------------------------------

    def rasterize(self, time: float, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, *,
                  backgrounds: Optional[torch.Tensor] = None, render_mode: str = "RGB",
                  sh_degree: Optional[int] = None, backend: str = "auto", absgrad: bool = False,
                  skip_invisible: bool = True, opacity_factors: Optional[torch.Tensor] = None,
                  gaussians: Optional[dict[str, torch.Tensor]] = None):
        """Render C cameras at one time. viewmats (C, 4, 4) world-to-camera, Ks (C, 3, 3), backgrounds (C, 3).
        Returns (colors (C, H, W, X), alphas (C, H, W, 1), meta) as :func:`stages.optimize.rasterize.rasterization`.
        gaussians: the Gaussians at ``time`` as :meth:`gaussians_at` returned them for the same ``sh_degree``
        (a caller that also reads them, e.g. training's silhouette loss); None = computed here.
        skip_invisible: see :meth:`gaussians_at` (the same render either way, for one host synchronisation). On by
        default here, off there: the other callers of ``gaussians_at`` (exports) want every Gaussian deformed.
        opacity_factors: (N,) multiplies the opacities at ``time`` (training's dropped Gaussians: 0, or the kept
        ones' compensation; :func:`stages.optimize.trainer.drop_factors`), None = as they are."""
        from stages.optimize.rasterize import rasterization

        degree = self.sh_degree if sh_degree is None else min(int(sh_degree), self.sh_degree)
        g = gaussians if gaussians is not None else self.gaussians_at(time, degree, skip_invisible=skip_invisible,
                                                                      opacity_factors=opacity_factors)
        return rasterization(g["means"], g["quats"], g["scales"], g["opacities"], g["sh"], viewmats, Ks,
                             int(width), int(height), sh_degree=degree, backgrounds=backgrounds,
                             render_mode=render_mode, rasterize_mode=self.rasterize_mode, absgrad=absgrad,
                             backend=backend)

    def render(self, world_to_camera, K, width: int, height: int, time: float,
               background=(1.0, 1.0, 1.0), backend: str = "auto") -> dict[str, torch.Tensor]:
        """Render one camera (world_to_camera (4, 4), K (3, 3)) or C cameras ((C, 4, 4), (C, 3, 3)) at ``time``.

        Returns rgb (H, W, 3) in [0, 1] composited on ``background``, alpha (H, W), depth (H, W) expected z-depth
        ("ED": accumulated z / alpha); each with a leading C for batched cameras. Arrays may be NumPy or torch.
        """
        viewmats = torch.as_tensor(world_to_camera, dtype=torch.float32, device=self.device)
        Ks = torch.as_tensor(K, dtype=torch.float32, device=self.device)
        single = viewmats.dim() == 2
        viewmats, Ks = viewmats.reshape(-1, 4, 4), Ks.reshape(-1, 3, 3)
        backgrounds = torch.as_tensor(background, dtype=torch.float32, device=self.device).reshape(1, 3)
        backgrounds = backgrounds.expand(viewmats.shape[0], 3)
        colors, alphas, _ = self.rasterize(time, viewmats, Ks, width, height, backgrounds=backgrounds,
                                           render_mode="RGB+ED", backend=backend)
        out = {"rgb": colors[..., :3].clamp(0.0, 1.0), "alpha": alphas[..., 0], "depth": colors[..., 3]}
        return {k: v[0] for k, v in out.items()} if single else out

    # -- persistence -------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        box = getattr(self.deformation, "box", None)
        spec = None if self.deformation is None else self.deformation.spec()
        return {
            "format": MODEL_FORMAT,
            "version": model_version(self.rasterize_mode, spec),
            "sh_degree": self.sh_degree,
            "temporal_opacity": self.temporal_opacity,
            "rasterize_mode": self.rasterize_mode,
            "deformation": spec,
            "box": None if box is None else {"center": box.center.cpu(), "half_size": box.half_size.cpu()},
            "splats": {k: v.detach().cpu() for k, v in self.splats.items()},
            "deformation_state": None if self.deformation is None
            else {k: v.detach().cpu() for k, v in self.deformation.state_dict().items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the model (atomically) in the format :func:`load_model` reads."""
        with atomic_path(path) as tmp:
            torch.save(self.to_state(), tmp)


def compile_function(function, backend: str = "inductor", mode: Optional[str] = None,
                     way_out: str = "optimize.compile=never"):
    """``torch.compile(function)`` whose graphs become dynamic in the sizes that change between calls, parameters
    included: densification changes the Gaussian count every few hundred steps, and with parameters kept static
    (torch's default) each change was a recompilation, until torch gave up and ran the function eagerly.

    ``mode``: torch.compile's (``"reduce-overhead"``: replayed as CUDA graphs on a GPU; the caller marks each
    training step with ``torch.compiler.cudagraph_mark_step_begin``). A backend that cannot compile here (e.g.
    inductor on a CPU machine without a C++ compiler) is a one-line :class:`UserError` that names the way out
    (``way_out``, the setting that turns this compilation off), not a traceback."""
    import torch._inductor.config  # (not imported by `import torch`)

    compiled = torch.compile(function, backend=backend, mode=mode)
    # The exceptions that mean "this backend cannot compile here". TritonUnavailableError is newer than some torch
    # releases we support (torch 2.11 lacks it): naming it there would turn the one-line error into an AttributeError.
    compile_errors = tuple(getattr(torch._dynamo.exc, name)
                           for name in ("BackendCompilerFailed", "TritonUnavailableError")
                           if hasattr(torch._dynamo.exc, name))
    # each new Gaussian count records a CUDA graph (mode reduce-overhead): expected, not worth inductor's warning
    quiet = ({"triton.cudagraph_dynamic_shape_warn_limit": None}
             if hasattr(torch._inductor.config.triton, "cudagraph_dynamic_shape_warn_limit") else {})

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            with torch._dynamo.config.patch(force_parameter_static_shapes=False), torch._inductor.config.patch(quiet):
                return compiled(*args, **kwargs)
        except compile_errors as err:
            cause = getattr(err, "inner_exception", None) or err
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            raise UserError(f"{way_out.split('=')[0]}: torch.compile ({backend}) failed on {function.__name__}: "
                            f"{type(cause).__name__}: {first}; set {way_out}") from err

    return call


def accelerations(deformation: Deformation, means: torch.Tensor, per_gaussian: dict[str, torch.Tensor],
                  index: torch.Tensor, times: torch.Tensor, step: float) -> torch.Tensor:
    """:meth:`GaussianModel4D.accelerations` as a pure function of tensors (what torch.compile traces): the second
    differences (M, 3) of the Gaussians ``index`` (M,) at times (M,). means (N, 3); per_gaussian: the deformation's
    per-Gaussian parameters, all N rows."""
    coefs = {k: v.index_select(0, index) for k, v in per_gaussian.items()}
    second = deformation.second_difference(means.index_select(0, index), times, step, coefs)     # (M, D)
    return second[:, POSITION]


def state_at(deformation: Optional[Deformation], state: tuple[torch.Tensor, ...],
             temporal: Optional[tuple[torch.Tensor, ...]], index: Optional[torch.Tensor],
             anchor_times: Optional[torch.Tensor], per_gaussian: dict[str, torch.Tensor], time: float | torch.Tensor,
             cache: bool, opacities: Optional[torch.Tensor] = None,
             motion: Optional[tuple[torch.Tensor, torch.Tensor, float]] = None) -> tuple[Optional[torch.Tensor], ...]:
    """The activated Gaussians at ``time``: the core of :meth:`GaussianModel4D.gaussians_at`, a pure function of
    tensors (what ``torch.compile`` traces).

    state: canonical (means (N, 3), quats (N, 4), log-scales (N, 3), opacity logits (N,)); temporal: (time centres
    (N,), time log-scales (N,), is_dynamic (N,) bool) or None without temporal opacity; index (M,) int64 with
    anchor_times (M,): the dynamic Gaussians, or None for no deformation; per_gaussian: the deformation's
    per-Gaussian parameters, all N rows; time: a float, or a () tensor; cache: let the deformation keep what it
    derives from times (eager only); opacities: the activated opacities (N,) at ``time`` when the caller has them
    (only without an opacity deformation), else computed here; motion: (rows (K,) int64 of dynamic Gaussians,
    times (K,), step h) for the motion regulariser, whose second differences come from the same evaluation of the
    deformation (:meth:`Deformation.displacement_and_second_difference`). Returns means (N, 3), quats (N, 4), scales
    (N, 3), opacities (N,), and the second differences (K, D) of the ``motion`` rows (None without ``motion``).
    """
    means, quats, log_scales, logits = state
    second = None
    if motion is not None:
        rows, motion_times, step = motion
        motion_args = (means.index_select(0, rows), motion_times, step,
                       {k: v.index_select(0, rows) for k, v in per_gaussian.items()})
        if index is None:
            second = deformation.second_difference(*motion_args)
    if index is not None:
        coefs = {k: v.index_select(0, index) for k, v in per_gaussian.items()}
        if motion is None:
            shift = deformation.displacement(means.index_select(0, index), time, anchor_times, coefs, cache)   # (M, D)
        else:
            shift, second = deformation.displacement_and_second_difference(
                means.index_select(0, index), time, anchor_times, coefs, cache, *motion_args)
        # All channels scattered at once into (N, D), zero for static Gaussians, then plain additions.
        shift = shift.new_zeros(len(means), shift.shape[1]).index_add_(0, index, shift)
        d_means, d_quats, d_scales, d_logits = shift.split([3, 4, 3, shift.shape[1] - 10], dim=1)
        means, quats, log_scales = means + d_means, quats + d_quats, log_scales + d_scales
        if deformation.with_opacity:
            logits = logits + d_logits[:, 0]
    if opacities is None:
        opacities = torch.sigmoid(logits)
        if temporal is not None:
            opacities = temporal_opacity(opacities, time, *temporal)
    return means, quats, torch.exp(log_scales), opacities, second


class _TemporalOpacity(torch.autograd.Function):
    """:func:`temporal_opacity` as one autograd node with its gradient written out (autograd would record ten)."""

    @staticmethod
    def forward(ctx, opacities, time: float | torch.Tensor, centers, log_scales, is_dynamic):
        sigma = torch.exp(log_scales)
        z = (time - centers) / sigma
        window = torch.exp(-0.5 * z**2)
        ctx.save_for_backward(opacities, z, sigma, window, is_dynamic)
        return torch.where(is_dynamic, opacities * window, opacities)

    @staticmethod
    def backward(ctx, grad):
        opacities, z, sigma, window, is_dynamic = ctx.saved_tensors
        grad_window = grad * window
        grad_opacities = torch.where(is_dynamic, grad_window, grad)
        # d(o w)/dz = -o w z, dz/dmu = -1 / sigma, dz/dlog_sigma = -z
        grad_z = torch.where(is_dynamic, grad_window * opacities * z, 0.0)           # -dL/dz
        return grad_opacities, None, grad_z / sigma, grad_z * z, None


def temporal_opacity(opacities: torch.Tensor, time: float | torch.Tensor, centers: torch.Tensor,
                     log_scales: torch.Tensor, is_dynamic: torch.Tensor) -> torch.Tensor:
    """Opacities (N,) at ``time`` (a float or a () tensor): o exp(-((t - mu) / sigma)^2 / 2), sigma =
    exp(log_scales), for the dynamic Gaussians; o for static ones. centers, log_scales (N,); is_dynamic (N,) bool."""
    return _TemporalOpacity.apply(opacities, time, centers, log_scales, is_dynamic)


def gaussian_count(splats: Any) -> int:
    """N of saved per-Gaussian tensors ``splats`` (a dict of (N, ...) tensors with ``means``); ValueError naming the
    first that is not a tensor or has another row count, or when N is 0."""
    if not isinstance(splats, dict) or not all(isinstance(v, torch.Tensor) for v in splats.values()):
        raise ValueError("its splats are not a dict of tensors")
    if "means" not in splats or splats["means"].dim() == 0:
        raise ValueError("no Gaussian means")
    n = splats["means"].shape[0]
    for key, value in splats.items():
        if value.dim() == 0 or value.shape[0] != n:
            rows = "a scalar" if value.dim() == 0 else f"{value.shape[0]} rows"
            raise ValueError(f"the per-Gaussian tensors disagree on the Gaussian count: means has {n} rows, "
                             f"{key} {rows}")
    if n == 0:
        raise ValueError("no Gaussians")
    return n


def check_splats(splats: Any, sh_degree: Any, deformation: Optional[Deformation], temporal_opacity: bool) -> None:
    """Raise ValueError naming the first way saved per-Gaussian tensors ``splats`` do not make a model: every entry a
    tensor of one row count N >= 1, the shapes of :mod:`stages.optimize.gaussians` (shN (N, (d + 1)^2 - 1, 3) for
    ``sh_degree`` d in 0..3), the time entries with temporal opacity and the ``deformation``'s per-Gaussian ones."""
    n = gaussian_count(splats)
    if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= 3:
        raise ValueError(f"sh_degree {sh_degree!r}, expected 0 to 3")
    expected = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (), "sh0": (1, 3), "anchor_times": (),
                "is_dynamic": ()}
    if sh_degree > 0 or "shN" in splats:
        expected["shN"] = (num_sh_coefficients(sh_degree) - 1, 3)
    if deformation is not None:
        expected.update({key: () for key in ("time_centers", "time_log_scales") if temporal_opacity})
        expected.update(deformation.per_gaussian_shapes())
    for key, trailing in expected.items():
        if key not in splats:
            raise ValueError(f"no {key} among the per-Gaussian tensors")
        if tuple(splats[key].shape) != (n, *trailing):
            raise ValueError(f"{key} has shape {list(splats[key].shape)}, expected {[n, *trailing]}"
                             + (f" for sh_degree {sh_degree}" if key == "shN" else ""))
        dtype = splats[key].dtype
        wrong_dtype = (dtype != torch.bool) if key == "is_dynamic" else (not dtype.is_floating_point)
        if wrong_dtype:
            raise ValueError(f"{key} has dtype {str(dtype).replace('torch.', '')}")


def model_from_state(state: dict[str, Any], device: str | torch.device = "cpu") -> GaussianModel4D:
    """The model of a :meth:`GaussianModel4D.to_state` dict. Contents that do not make a model raise ValueError
    (:func:`check_splats`) or whatever torch raises on them (a deformation state of other shapes: RuntimeError)."""
    box = None
    if state.get("box") is not None:
        box = Box(state["box"]["center"], state["box"]["half_size"])
    deformation = build_deformation(state["deformation"], box)
    if deformation is not None and state.get("deformation_state") is not None:
        deformation.load_state_dict(state["deformation_state"])
    check_splats(state["splats"], state["sh_degree"], deformation, bool(state["temporal_opacity"]))
    rasterize_mode = state.get("rasterize_mode", "classic")         # absent from models saved before it existed
    model = GaussianModel4D(splats_from_state(state["splats"]), deformation, state["sh_degree"],
                            state["temporal_opacity"], rasterize_mode)
    return model.to(device)


def is_device_error(err: BaseException) -> bool:
    """Whether ``err`` is the GPU's (out of memory, a CUDA error) rather than a file's contents."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or (isinstance(err, RuntimeError) and "CUDA" in str(err))


def short_reason(err: BaseException) -> str:
    """One line about ``err`` for a message: a missing key as such, else the first line of its text that says
    something (the second of torch's "Error(s) in loading state_dict for X:" ...), at most 200 characters."""
    if isinstance(err, KeyError):
        return f"no {err.args[0]!r} entry" if err.args else "a missing entry"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return (lines[0].rstrip(".")[:200] if lines else "") or type(err).__name__


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GaussianModel4D:
    """Read ``optimize/model.pt`` (no pickled code is executed: ``weights_only=True``). A file that is not a page4dgs
    model, or one whose contents do not make a model (shapes, counts, an unknown deformation), is a one-line
    :class:`UserError` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise UserError("model file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file
        raise UserError(f"not a readable page4dgs model ({type(err).__name__})", path) from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise UserError("not a page4dgs 4D Gaussian model", path)
    version = state.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"not a usable page4dgs model (version {version!r})", path)
    if version > MODEL_VERSION:
        raise UserError(f"model version {version} is newer than this page4dgs reads ({MODEL_VERSION})", path)
    if state.get("rasterize_mode", "classic") not in RASTERIZE_MODES:
        raise UserError(f"unknown rasterize_mode {state['rasterize_mode']!r} in the model", path)
    try:
        model = model_from_state(state, "cpu")
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise UserError(f"not a usable page4dgs model ({short_reason(err)})", path) from None
    model = model.to(device)        # outside the try: a GPU out of memory is not the file's fault
    model.eval()
    return model
