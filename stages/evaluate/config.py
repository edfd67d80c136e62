"""Config section ``evaluate``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option


@dataclass
class EvaluateConfig:
    """Evaluate stage: metrics with their protocol, and the report."""

    lpips: bool = option(True, "Compute LPIPS (AlexNet and VGG16, inputs scaled to [-1, 1]).")
    lpips_vgg_3dgs: bool = option(True, "Also report VGG LPIPS on [0, 1] inputs (the 3DGS / 4DGaussians tables' "
                                  "convention) under metrics.json 'extra'.")
    depth_alignment: str = option("scale", "Per-sequence scale of geometry depth before Abs Rel / delta < 1.25: "
                                  "'scale' (L1 IRLS, PAGE-4D / CUT3R) or 'median' (MonST3R).",
                                  choices=("scale", "median"))
    depth_max: float = option(0.0, "Ignore ground-truth depth at or beyond this value (0 = no cap; 70 for "
                              "Sintel / Bonn / DyCheck protocols).")
    report_views: int = option(6, "Test views shown in report.html (renders beside ground truth with error maps), "
                               "evenly spaced over the test set.")
    report_inputs: int = option(8, "Input frames shown in report.html, evenly spaced over the training frames.")
    report_image_size: int = option(320, "Longer side, in pixels, of the images embedded in report.html.")
