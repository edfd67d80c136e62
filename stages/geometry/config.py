"""Config section ``geometry``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option


@dataclass
class GeometryConfig:
    """Geometry stage: the PAGE-4D network predicts cameras, depth, point maps and dynamic masks."""

    model: str = option("page4d-tiny", "Network: 'page4d-tiny' (bundled, trained by us), 'page4d-1b' (official "
                        "dimensions; needs a checkpoint), or 'oracle' (the scene's ground-truth geometry, for "
                        "synthetic scenes and for measuring the later stages alone).",
                        choices=("page4d-tiny", "page4d-1b", "oracle"))
    checkpoint: str = option("", "Checkpoint file for the network ('' = the bundled model for page4d-tiny; the "
                             "Hugging Face cache for page4d-1b).")
    cameras: str = option("auto", "Cameras used downstream: 'model' (predicted), 'dataset' (the scene's own, with "
                          "the prediction aligned to them by Sim(3)), or 'auto' (dataset where the scene has "
                          "cameras).", choices=("auto", "model", "dataset"))
