"""Stage 4b, evaluate: image, pose, depth and mask metrics, and the HTML report (see :mod:`stages.evaluate.stage`)."""


def run(ctx) -> dict:
    # Imported on use, so that importing the config section (stages.evaluate.config) stays light.
    from stages.evaluate.stage import run as run_stage

    return run_stage(ctx)
