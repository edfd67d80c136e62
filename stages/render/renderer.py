"""Rendering views of the 4D model: colour, expected depth, alpha, and the dynamic weight of each pixel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stages.render.paths import PathView


@dataclass
class RenderedView:
    rgb: np.ndarray          # (H, W, 3) float32 in [0, 1], composited on the background
    alpha: np.ndarray        # (H, W) float32 accumulated opacity
    depth: np.ndarray        # (H, W) float32 expected z-depth (accumulated z / alpha), 0 where alpha = 0


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


@torch.no_grad()
def render_view(model, view: PathView, background: tuple[float, float, float], backend: str = "auto"
                ) -> RenderedView:
    """Render one view with ``model.render`` (the 4D model's API)."""
    out = model.render(view.world_to_camera, view.K, view.width, view.height, view.time, background=background,
                       backend=backend)
    alpha = _numpy(out["alpha"]).reshape(view.height, view.width)
    depth = np.where(alpha > 1e-6, _numpy(out["depth"]).reshape(view.height, view.width), 0.0)
    rgb = np.clip(_numpy(out["rgb"]).reshape(view.height, view.width, 3), 0.0, 1.0)
    return RenderedView(rgb=rgb.astype(np.float32), alpha=alpha.astype(np.float32),
                        depth=np.nan_to_num(depth).astype(np.float32))


@torch.no_grad()
def render_dynamic_weight(model, view: PathView, backend: str = "auto") -> np.ndarray:
    """(H, W) float32 in [0, 1]: the share of each pixel's opacity contributed by dynamic Gaussians.

    Rasterizes ``gaussians_at(time)`` with colour 1 for dynamic and 0 for static Gaussians on a black background."""
    from stages.optimize.rasterize import rasterization

    g = model.gaussians_at(view.time)
    device = g["means"].device
    labels = g["is_dynamic"].to(torch.float32).reshape(-1, 1).expand(-1, 3).contiguous()   # (N, 3)
    viewmat = torch.as_tensor(view.world_to_camera, dtype=torch.float32, device=device).reshape(1, 4, 4)
    K = torch.as_tensor(view.K, dtype=torch.float32, device=device).reshape(1, 3, 3)
    colors, _, _ = rasterization(g["means"], g["quats"], g["scales"], g["opacities"], labels, viewmat, K,
                                 int(view.width), int(view.height), backgrounds=torch.zeros(1, 3, device=device),
                                 render_mode="RGB", rasterize_mode=model.rasterize_mode, backend=backend)
    return np.clip(_numpy(colors[0, ..., 0]), 0.0, 1.0)
