"""Stage 4a, render: test views, camera-path videos, exports."""
