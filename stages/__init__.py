"""The pipeline stages, one package each: geometry -> initialize -> optimize -> render -> evaluate.

Each stage package exposes ``run(ctx)`` (see :mod:`pipeline.runner`) and its config section in ``config.py``.
Stages talk only through the artifacts they write into the run folder (documented in ``docs/artifacts.md``).
"""
