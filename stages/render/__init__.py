"""Stage 4a, render: test views, camera-path videos, exports."""

from stages.render.stage import run

__all__ = ["run"]
