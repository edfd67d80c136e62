"""Config section ``initialize``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option


@dataclass
class InitializeConfig:
    """Initialize stage: Gaussians from the geometry stage's point clouds."""

    max_gaussians: int = option(20000, "Budget: the point cloud is voxel-downsampled to at most this many Gaussians.")
    dynamic_fraction: float = option(0.7, "Largest share of the budget that dynamic Gaussians (every time slice "
                                     "together) take while static points need the rest. Below it, static points "
                                     "and each time slice are downsampled with one voxel size: the same density "
                                     "everywhere.")
    dynamic_time_stride: int = option(1, "Keep the moving points of every this-many-th training time only (1 = every "
                                      "time keeps its copy of the moving surfaces; the static points of every "
                                      "frame are kept). Fewer, longer-lived copies; pair it with a wider "
                                      "optimize.temporal_opacity_init. On object scenes 2 lost about 2 dB held out "
                                      "(docs/gaussians.md).")
    min_confidence: float = option(0.0, "Drop pixels whose depth confidence is below this value (PAGE-4D "
                                   "confidences are >= 1; oracle geometry has confidence 1).")
    confidence_percentile: float = option(0.0, "Per frame, also drop the pixels below this percentile of "
                                          "confidence among the pixels with a valid depth (0 = keep all; ties at the "
                                          "threshold are kept).")
    max_depth_edge: float = option(0.05, "Drop 'flying' pixels at depth discontinuities: a pixel whose depth "
                                   "differs from a 4-neighbour's by more than this fraction of its depth (0 = off).")
    points_from: str = option("cameras", "Which cameras unproject the depth maps: 'cameras' (geometry/cameras.json, "
                              "the cameras the optimization uses, so every point lies on its pixel's ray) or "
                              "'predicted' (geometry/predicted_cameras.json; predictions in another world than "
                              "cameras.json are brought over by a Sim(3) fitted to the camera centres and "
                              "rotations).",
                              choices=("cameras", "predicted"))
    init_opacity: float = option(0.1, "Initial opacity (post-sigmoid) of every Gaussian.")
    init_scale: float = option(1.0, "Initial scale = this factor x the RMS distance to the 3 nearest neighbours.")
