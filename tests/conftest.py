"""Shared test fixtures. Tests are CPU-only, small and deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LADY_RUNNING = SHARED / "data" / "lady-running"
LPIPS_FIXTURES = SHARED / "fixtures" / "lpips"

os.environ.setdefault("PAGE4DGS_TEST", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own cache root unless a test opts into the real one."""
    root = tmp_path_factory.getbasetemp() / "page4dgs-cache"
    monkeypatch.setenv("PAGE4DGS_CACHE", str(root))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def requires(path: Path, what: str):
    return pytest.mark.skipif(not path.exists(), reason=f"{what} not found at {path}")


@pytest.fixture(scope="session")
def fake_run_template(tmp_path_factory):
    """A small finished run folder (tests/render/fake_run.py), built once per session."""
    from tests.render.fake_run import make_fake_run

    return make_fake_run(tmp_path_factory.mktemp("fake-run"))


@pytest.fixture
def fake_run(fake_run_template, tmp_path):
    """A private copy of the fake run for one test."""
    from tests.render.fake_run import copy_fake_run

    return copy_fake_run(fake_run_template, tmp_path)
