"""Stage 3, optimize: deformable 4D Gaussians fitted to the training frames (gsplat on CUDA, PyTorch on CPU).

``run`` imports the stage lazily so that reading the config (``stages.optimize.config``) does not import torch.
The model file ``optimize/model.pt`` is read with :func:`stages.optimize.model.load_model`.
"""


def run(ctx) -> dict:
    """Stage entry point (see :mod:`stages.optimize.stage`)."""
    from stages.optimize.stage import run as run_stage

    return run_stage(ctx)


__all__ = ["run"]
