"""LPIPS tests use the real weight cache that ``make install`` filled.

The root conftest gives every test an isolated ``$PAGE4DGS_CACHE``. LPIPS weights are an install-time asset, so the
folder is resolved here, at import time (from the user's environment, before the isolation applies), and handed to
the tests through ``$PAGE4DGS_LPIPS_DIR``, which :func:`stages.evaluate.lpips_weights.weights_dir` honours.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.paths import cache_root

REAL_LPIPS_DIR = Path(os.environ.get("PAGE4DGS_LPIPS_DIR") or cache_root() / "lpips")


@pytest.fixture(autouse=True)
def _real_lpips_cache(_isolated_cache, monkeypatch):
    monkeypatch.setenv("PAGE4DGS_LPIPS_DIR", str(REAL_LPIPS_DIR))
