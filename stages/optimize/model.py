"""The 4D Gaussian model: static Gaussians plus dynamic Gaussians deformed by a time-conditioned model.

``optimize/model.pt`` is read with :func:`load_model`. Times are floats in [0, 1]; cameras are OpenCV
world-to-camera in the world of ``geometry/cameras.json``.

At time t, a dynamic Gaussian i (``is_dynamic``) with canonical state (mean, quat, log-scale, opacity logit) at its
anchor time t_a is displaced by ``deformation.displacement(mean, t, t_a)`` (see :mod:`stages.optimize.deformation`),
and, with temporal opacity, its opacity is multiplied by exp(-(t - mu_i)^2 / (2 sigma_i^2)). Static Gaussians never
change. With no deformation model (``none``), every Gaussian is static.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.io import atomic_path
from stages.optimize.deformation import OPACITY, POSITION, QUAT, SCALE, Box, Deformation, build_deformation
from stages.optimize.gaussians import sh_coefficients, splats_from_state

MODEL_FORMAT = "page4dgs-gaussians-4d"
MODEL_VERSION = 1


class GaussianModel4D(nn.Module):
    """Per-Gaussian parameters (``splats``, see :mod:`stages.optimize.gaussians`) and an optional deformation."""

    def __init__(self, splats: nn.ParameterDict, deformation: Optional[Deformation], sh_degree: int,
                 temporal_opacity: bool):
        super().__init__()
        self.splats = splats
        self.deformation = deformation
        self.sh_degree = int(sh_degree)
        self.temporal_opacity = bool(temporal_opacity and deformation is not None)
        self.deform_enabled = True          # the trainer switches it off during a static warm-up
        self._dynamic_source: Optional[torch.Tensor] = None
        self._dynamic_index: Optional[torch.Tensor] = None

    # -- queries -----------------------------------------------------------------------------------------------

    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    def dynamic_index(self) -> torch.Tensor:
        """(M,) int64 indices of the dynamic Gaussians (cached until densification replaces ``is_dynamic``)."""
        flags = self.splats["is_dynamic"]
        if self._dynamic_source is not flags:
            self._dynamic_index = torch.nonzero(flags, as_tuple=False).reshape(-1)
            self._dynamic_source = flags
        return self._dynamic_index

    def deformation_inputs(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: self.splats[k][index] for k in self.deformation.per_gaussian_shapes()}

    def positions_at(self, times: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Positions (T, M, 3) of the dynamic Gaussians ``index`` (M,) (distinct) at per-Gaussian times (T, M).

        Each Gaussian's inputs are gathered once and repeated, so the backward pass only sums over T (deterministic)
        instead of scatter-adding into repeated indices.
        """
        steps, m = times.shape
        means = self.splats["means"][index]

        def repeat(x: torch.Tensor) -> torch.Tensor:       # (M, ...) -> (T M, ...)
            return x.expand(steps, *x.shape).reshape(steps * m, *x.shape[1:])

        shift = self.deformation.displacement(repeat(means), times.reshape(-1),
                                              repeat(self.splats["anchor_times"][index]),
                                              {k: repeat(v) for k, v in self.deformation_inputs(index).items()})
        return means + shift[:, POSITION].view(steps, m, 3)

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
        means = self.splats["means"][flat]
        shift = self.deformation.displacement(means, time, self.splats["anchor_times"][flat],
                                              self.deformation_inputs(flat))
        return (means + shift[:, POSITION]).view(*index.shape, 3)

    def gaussians_at(self, time: float, sh_degree: Optional[int] = None) -> dict[str, torch.Tensor]:
        """The Gaussians at ``time``: means (N, 3), quats (N, 4) raw (w, x, y, z), scales (N, 3) post-activation,
        opacities (N,) post-sigmoid (temporal opacity included), sh (N, K, 3) with K = (d + 1)^2 for
        d = ``sh_degree`` (default: the model's), is_dynamic (N,) bool."""
        s = self.splats
        means, quats, log_scales, logits = s["means"], s["quats"], s["scales"], s["opacities"]
        dynamic = self.deformation is not None
        if dynamic and self.deform_enabled:
            index = self.dynamic_index()
            if index.numel() > 0:
                shift = self.deformation.displacement(means[index], float(time), s["anchor_times"][index],
                                                      self.deformation_inputs(index))        # (M, D)
                means = means.index_add(0, index, shift[:, POSITION])
                quats = quats.index_add(0, index, shift[:, QUAT])
                log_scales = log_scales.index_add(0, index, shift[:, SCALE])
                if self.deformation.with_opacity:
                    logits = logits.index_add(0, index, shift[:, OPACITY].reshape(-1))
        opacities = torch.sigmoid(logits)
        if self.temporal_opacity:
            sigma = torch.exp(s["time_log_scales"])
            window = torch.exp(-0.5 * ((float(time) - s["time_centers"]) / sigma) ** 2)
            opacities = torch.where(s["is_dynamic"], opacities * window, opacities)
        degree = self.sh_degree if sh_degree is None else min(int(sh_degree), self.sh_degree)
        sh = sh_coefficients(s)[:, : (degree + 1) ** 2]
        return {"means": means, "quats": quats, "scales": torch.exp(log_scales), "opacities": opacities,
                "sh": sh, "is_dynamic": s["is_dynamic"] if dynamic else torch.zeros_like(s["is_dynamic"])}

    # -- rendering ---------------------------------------------------------------------------------------------

    def rasterize(self, time: float, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, *,
                  backgrounds: Optional[torch.Tensor] = None, render_mode: str = "RGB",
                  sh_degree: Optional[int] = None, backend: str = "auto", absgrad: bool = False):
        """Render C cameras at one time. viewmats (C, 4, 4) world-to-camera, Ks (C, 3, 3), backgrounds (C, 3).
        Returns (colors (C, H, W, X), alphas (C, H, W, 1), meta) as :func:`stages.optimize.rasterize.rasterization`."""
        from stages.optimize.rasterize import rasterization

        degree = self.sh_degree if sh_degree is None else min(int(sh_degree), self.sh_degree)
        g = self.gaussians_at(time, degree)
        return rasterization(g["means"], g["quats"], g["scales"], g["opacities"], g["sh"], viewmats, Ks,
                             int(width), int(height), sh_degree=degree, backgrounds=backgrounds,
                             render_mode=render_mode, absgrad=absgrad, backend=backend)

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
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "sh_degree": self.sh_degree,
            "temporal_opacity": self.temporal_opacity,
            "deformation": None if self.deformation is None else self.deformation.spec(),
            "box": None if box is None else {"center": box.center.cpu(), "half_size": box.half_size.cpu()},
            "splats": {k: v.detach().cpu() for k, v in self.splats.items()},
            "deformation_state": None if self.deformation is None
            else {k: v.detach().cpu() for k, v in self.deformation.state_dict().items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the model (atomically) in the format :func:`load_model` reads."""
        with atomic_path(path) as tmp:
            torch.save(self.to_state(), tmp)


def model_from_state(state: dict[str, Any], device: str | torch.device = "cpu") -> GaussianModel4D:
    box = None
    if state.get("box") is not None:
        box = Box(state["box"]["center"], state["box"]["half_size"])
    deformation = build_deformation(state["deformation"], box)
    if deformation is not None and state.get("deformation_state") is not None:
        deformation.load_state_dict(state["deformation_state"])
    model = GaussianModel4D(splats_from_state(state["splats"]), deformation, state["sh_degree"],
                            state["temporal_opacity"])
    return model.to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GaussianModel4D:
    """Read ``optimize/model.pt`` (no pickled code is executed: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("model file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file
        raise UserError(f"not a readable page4dgs model ({type(err).__name__})", path) from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise UserError("not a page4dgs 4D Gaussian model", path)
    if state.get("version", 0) > MODEL_VERSION:
        raise UserError(f"model version {state['version']} is newer than this page4dgs reads ({MODEL_VERSION})", path)
    model = model_from_state(state, device)
    model.eval()
    return model
