"""Stage 1, geometry: per-frame cameras, depth, point maps and dynamic masks from PAGE-4D."""

from stages.geometry.stage import run

__all__ = ["run"]
