"""Stage 2, initialize: static and dynamic Gaussians from the geometry stage's point clouds.

``run`` imports the stage lazily so that reading the config (``stages.initialize.config``) stays cheap.
"""


def run(ctx) -> dict:
    """Stage entry point (see :mod:`stages.initialize.stage`)."""
    from stages.initialize.stage import run as run_stage

    return run_stage(ctx)


__all__ = ["run"]
