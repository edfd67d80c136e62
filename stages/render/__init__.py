"""Stage 4a, render: test views, camera-path videos, exports (see :mod:`stages.render.stage`)."""


def run(ctx) -> dict:
    # Imported on use, so that importing the config section (stages.render.config) stays light.
    from stages.render.stage import run as run_stage

    return run_stage(ctx)
