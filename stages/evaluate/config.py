"""Config section ``evaluate``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option


@dataclass
class EvaluateConfig:
    """Evaluate stage: metrics with their protocol, and the report."""

    lpips: bool = option(True, "Compute LPIPS (AlexNet and VGG16, inputs scaled to [-1, 1]).")
