"""Config section ``initialize``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option


@dataclass
class InitializeConfig:
    """Initialize stage: Gaussians from the geometry stage's point clouds."""

    max_gaussians: int = option(20000, "Budget: the point cloud is voxel-downsampled to at most this many Gaussians.")
