"""Stage 4b, evaluate: image, pose, depth and mask metrics, and the HTML report."""

from stages.evaluate.stage import run

__all__ = ["run"]
