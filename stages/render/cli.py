"""``page4dgs render RUN --path P`` and ``page4dgs export RUN --format F`` on a finished run folder.

Both read the run's ``config.yaml`` and write only their own files (``videos/<path>*`` and ``export/<format>/``),
atomically; nothing else in the run folder changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import Config, config_from_dict, read_yaml
from pipeline.errors import UserError
from pipeline.log import get_logger

log = get_logger("render")


def load_run_config(run_dir: Path, reads: tuple[str, ...] = ("geometry", "optimize")) -> Config:
    """The resolved config a run was made with (``RUN/config.yaml``); refused when a stage whose outputs the caller
    ``reads`` is stale (:func:`pipeline.runner.stale_stages`)."""
    if not run_dir.is_dir():
        raise UserError("run folder not found", run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError("not a page4dgs run folder (no config.yaml)", run_dir)
    from pipeline.runner import check_not_stale, check_stage_configs

    check_not_stale(run_dir, reads)
    data = read_yaml(path)
    if not data:
        raise UserError("the run's config.yaml is empty: it no longer says how the run was made", path)
    config = config_from_dict(data, str(path))
    try:      # an edited value that reconstruct would refuse is refused here too, naming the file
        check_stage_configs(config)
    except UserError as err:
        raise UserError(str(err), path) from None
    config.scene.source = scene_source_for(run_dir, config.scene.source)
    return config


def scene_source_for(run_dir: Path, source: str) -> str:
    """A run's ``scene.source`` as a path from here: a relative path is taken from the folder the run was made in
    (``working_directory`` in its manifest) when it does not exist from the current one."""
    path = Path(source).expanduser()
    if source == "demo" or path.is_absolute() or path.exists():
        return source
    try:
        made_in = json.loads((run_dir / "manifest.json").read_text()).get("working_directory")
    except (OSError, ValueError, AttributeError):
        return source
    if isinstance(made_in, str) and (Path(made_in) / path).exists():
        return str(Path(made_in) / path)
    return source


def run_device(args: argparse.Namespace, config: Config) -> str:
    """The device of render/export/evaluate: ``--device``, else the run's config (checked: cuda needs CUDA)."""
    from pipeline.runner import resolve_device

    if args.device is not None:
        return resolve_device(args.device, "use --device auto or --device cpu")
    return resolve_device(config.device, "the run's config.yaml says device: cuda; add --device cpu")


def render_command(args: argparse.Namespace) -> int:
    from stages.render.stage import open_run, render_video

    config = load_run_config(args.run)
    out = args.out if args.out is not None else args.run / "videos" / f"{args.path}.mp4"
    if out.suffix.lower() != ".mp4":
        raise UserError("--out must name an .mp4 file", out)
    blocking = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if blocking is not None and not blocking.is_dir():
        what = "a symbolic link to nothing" if not blocking.exists() else "a file"
        raise UserError(f"--out lies inside {blocking}, which is {what}, not a folder", out)
    inputs = open_run(args.run, config.render, config.scene.background, run_device(args, config))
    for path in render_video(inputs, args.path, out, args.frames):
        log.info(f"wrote {path}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from stages.render.export import export_run

    config = load_run_config(args.run)
    target = export_run(args.run, args.format, config, run_device(args, config))
    log.info(f"wrote {target}")
    return 0
