"""Implementations of the ``reconstruct`` and ``config`` commands."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipeline.config import DEFAULTS_HEADER, CONFIG_DIR, default_config, dump_yaml, load_config
from pipeline.errors import UserError
from pipeline.log import get_logger
from pipeline.scene.config import canonical_source

log = get_logger("cli")

# The preset used with --config auto for each detected format (when configs/<preset>.yaml exists).
FORMAT_PRESETS = {"dnerf": "dnerf", "nerfies": "nerfies", "dycheck": "dycheck", "n3dv": "n3dv",
                  "nerfstudio": "nerfstudio", "colmap": "colmap", "video": "video", "frames": "video"}


def _auto_preset(scene_source: str, fmt: str) -> str:
    if scene_source == "demo":
        return "demo" if (CONFIG_DIR / "demo.yaml").exists() else "default"
    preset = FORMAT_PRESETS.get(fmt)
    return preset if preset and (CONFIG_DIR / f"{preset}.yaml").exists() else "default"


def _default_run_dir(scene_source: str) -> Path:
    name = "demo" if scene_source == "demo" else Path(scene_source.rstrip("/")).stem or "scene"
    return Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# What a run folder holds before its manifest exists (a run stopped in its first stage): a folder without a
# manifest.json that holds anything else is not a run, and the stages would replace parts of it.
FIRST_RUN_ENTRIES = {"config.yaml", "log.txt", ".work"}


def _scene_of_run(run_dir: Path) -> str | None:
    """The scene an existing run folder was made from (as :func:`~pipeline.scene.config.canonical_source` gives it),
    or None if it has no readable config.yaml and manifest.json yet (the runner then decides what to redo)."""
    from pipeline.config import read_yaml
    from stages.render.cli import scene_source_for

    if not (run_dir / "manifest.json").is_file():
        return None
    try:
        source = read_yaml(run_dir / "config.yaml")["scene"]["source"]
    except (UserError, OSError, KeyError, TypeError):
        return None
    return canonical_source(scene_source_for(run_dir, source)) if isinstance(source, str) else None


def check_run_folder(run_dir: Path, source: str, chosen: bool) -> str | None:
    """Refuse a run folder whose files the stages would replace without being ours: a file, a folder holding other
    things and no manifest, or (``chosen`` False: the default runs/<name>) a run of another scene, since two scenes
    with the same name share a default folder. ``chosen``: the user named the folder with --out (then another
    scene's run there is replaced, with a warning, as asked). Returns that warning, for the caller to log once the
    scene has loaded (a scene that fails to load replaces nothing)."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise UserError("run folder is a symbolic link to nothing (dangling, or a loop)", run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError("run folder is a file", run_dir)
    if not run_dir.is_dir():
        return None
    entries = {p.name for p in run_dir.iterdir()}
    if not (run_dir / "manifest.json").exists() and entries - FIRST_RUN_ENTRIES:
        raise UserError("is not a page4dgs run folder and is not empty (the stages would replace parts of it); "
                        "choose a new or empty folder with --out", run_dir)
    previous = _scene_of_run(run_dir)
    if previous is not None and previous != canonical_source(source):
        if not chosen:
            raise UserError(f"holds the run of another scene ({previous}); choose a run folder for this one with "
                            "--out", run_dir)
        return f"{run_dir} holds the run of another scene ({previous}): its outputs are replaced"
    return None


def reconstruct(args: argparse.Namespace) -> int:
    from pipeline.runner import check_stage_configs, check_stage_range, run_pipeline
    from pipeline.scene import detect_format, load_scene

    check_stage_range(args.from_stage, args.until_stage)      # before a video is decoded
    source = args.scene
    preset = args.config
    if preset == "auto":
        fmt = "demo" if source == "demo" else detect_format(Path(source).expanduser())
        preset = _auto_preset(source, fmt)
    config = load_config(preset, [f"scene.source={source}", *args.overrides])
    config.scene.source = source  # keep the path as a string even if it looks like a number
    check_stage_configs(config)    # bad values before a video is decoded or a run folder is judged
    run_dir = args.out or _default_run_dir(source)
    replacing = check_run_folder(run_dir, source, chosen=args.out is not None)
    scene = load_scene(config.scene)
    if replacing:
        log.warning(replacing)
    log.info(f"scene '{scene.name}' ({scene.format}): {len(scene.frames)} frames, "
             f"{len(scene.train_frames)} train / {len(scene.test_frames)} test; preset '{preset}'; run folder {run_dir}")
    for note in scene.notes:
        log.debug(f"  {note}")
    run_pipeline(config, run_dir, scene, from_stage=args.from_stage, until_stage=args.until_stage)
    log.info(f"finished: {run_dir}")
    return 0


def config_command(args: argparse.Namespace) -> int:
    if args.defaults:
        if args.config != "default" or args.overrides:
            raise UserError("config --defaults prints the built-in defaults; it takes no --config or key=value "
                            "(drop --defaults to see a resolved config)")
        print(dump_yaml(default_config(), header=DEFAULTS_HEADER), end="")
    else:
        from pipeline.runner import check_stage_configs

        config = load_config(args.config, args.overrides)
        check_stage_configs(config)
        print(dump_yaml(config), end="")
    return 0
