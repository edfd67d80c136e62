"""Where the project keeps caches (generated scenes, decoded videos, LPIPS weights, built extensions)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """``$PAGE4DGS_CACHE`` if set, else ``$XDG_CACHE_HOME/page4dgs`` or ``~/.cache/page4dgs``."""
    if os.environ.get("PAGE4DGS_CACHE"):
        return Path(os.environ["PAGE4DGS_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "page4dgs"


def cache_dir(name: str) -> Path:
    path = cache_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
