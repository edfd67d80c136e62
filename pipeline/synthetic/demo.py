"""``SCENE=demo``: a small synthetic room scene, generated on first use into the cache.

The demo is the room scene of seed 0 at 48 frames of 256 x 144: small enough for a CPU run of the whole pipeline,
with exact ground truth for every metric. It is generated once (a few seconds) into
``pipeline.paths.cache_dir("scenes")/demo-v<generator version>``, atomically: a half-written demo is never visible,
and two processes generating it at once both end up using one complete copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.log import get_logger
from pipeline.paths import cache_dir
from pipeline.synthetic.writer import GENERATOR_VERSION, RoomSceneOptions, make_room_scene

DEMO_SEED = 0
DEMO_OPTIONS = RoomSceneOptions(frames=48, width=256)
log = get_logger("synthetic")


FILE_LIST = ".files.json"   # {relative path: size in bytes} of every file of the generated scene


def _file_sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != FILE_LIST}


def _complete(path: Path) -> bool:
    """Whether ``path`` holds every file the generator wrote, at its size (a deleted or truncated file of the
    cache is regenerated, not reported as a damaged input the user never made)."""
    try:
        expected = json.loads((path / FILE_LIST).read_text(encoding="utf-8"))
        return bool(expected) and all((path / name).stat().st_size == size for name, size in expected.items())
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def demo_scene_path() -> Path:
    """The demo scene folder (D-NeRF layout plus ``frames/`` and ``ground_truth/``), generated if missing."""
    scenes = cache_dir("scenes")
    path = scenes / f"demo-v{GENERATOR_VERSION}"
    if _complete(path):
        return path
    if path.exists():  # damaged, or not written by this code (generation is atomic): replace it
        if (path / FILE_LIST).exists():
            log.warning(f"the demo scene in {path} is incomplete or damaged: generating it again")
        else:   # made before the cache kept its file list (or not by this code): checked by regenerating
            log.info(f"the demo scene in {path} has no file list to check it by: generating it again")
        shutil.rmtree(path)
    log.info(f"generating the demo scene (first use) into {path}")
    staging = Path(tempfile.mkdtemp(prefix=".demo.", dir=scenes))
    try:
        make_room_scene(staging / "scene", DEMO_SEED, DEMO_OPTIONS)
        (staging / "scene" / FILE_LIST).write_text(json.dumps(_file_sizes(staging / "scene"), indent=0))
        try:
            os.rename(staging / "scene", path)
        except OSError:
            if not _complete(path):  # lost a race to another process, which left a complete copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
