"""Config section ``optimize``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option


@dataclass
class OptimizeConfig:
    """Optimize stage: fit deformable 4D Gaussians to the training frames."""

    iterations: int = option(3000, "Optimization steps.")
    backend: str = option("auto", "Rasterizer: 'gsplat' (CUDA), 'torch' (pure PyTorch, any device) or 'auto' "
                          "(gsplat where CUDA is available).", choices=("auto", "gsplat", "torch"))
