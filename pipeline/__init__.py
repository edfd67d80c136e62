"""page4dgs: 4D reconstruction from casual video.

The package ``pipeline`` holds what every stage shares (configs, scenes, cameras, the run folder and its runner, the
command line); the package ``stages`` holds one sub-package per pipeline stage.
"""

__version__ = "0.1.0"
