"""The ``page4dgs`` command line.

Every user error is one line on stderr and exit code 2 (``--debug`` shows the traceback); Ctrl-C or SIGTERM stops
cleanly with exit code 130, and running the same command again resumes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from pipeline.errors import StageInterrupted, UserError

PATHS = ("input", "spiral", "bullet", "sweep", "spiral-time")
EXPORT_FORMATS = ("ply", "nerfstudio", "colmap")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit code 2 like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog.removeprefix("page4dgs").strip()     # main() prints "page4dgs: error: " before it
        raise UserError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="page4dgs", description="4D reconstruction from casual video: PAGE-4D geometry, "
                                                   "deformable 4D Gaussians, gsplat rendering.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages on the console")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("reconstruct", help="run the whole pipeline on a scene")
    # nargs="?" and a check in main(): argparse would also name the optional key=value list as "required".
    p.add_argument("scene", nargs="?", help="a video, a folder of frames, a dataset folder, or 'demo'")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<scene name>)")
    p.add_argument("--config", default="auto",
                   help="preset name (configs/NAME.yaml) or path; 'auto' picks the preset of the detected format")
    p.add_argument("--from", dest="from_stage", help="force this stage and everything after it to run again")
    p.add_argument("--until", dest="until_stage", help="stop after this stage")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optimize.iterations=500")

    p = sub.add_parser("make-scene", help="generate a synthetic dynamic scene with exact ground truth")
    p.add_argument("kind", choices=("object", "room"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--res", type=int, default=None, help="image width in pixels")
    p.add_argument("--test-views", type=int, default=None,
                   help="object: held-out views at new viewpoints (default 20, fewer below 100 frames)")
    p.add_argument("--pan-scale", type=float, default=None,
                   help="room: how far the handheld camera pans, as a multiple of the default (1; 4 turns about "
                        "3x as far over the video)")

    p = sub.add_parser("render", help="render a camera path of a finished run to MP4 (and PNG frames)")
    p.add_argument("run", type=Path)
    p.add_argument("--path", choices=PATHS, default="spiral-time")
    p.add_argument("--out", type=Path, help="output MP4 (default: RUN/videos/<path>.mp4)")
    p.add_argument("--frames", type=int, default=None, help="number of video frames")

    p = sub.add_parser("export", help="export a finished run for viewers and other tools")
    p.add_argument("run", type=Path)
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True)

    p = sub.add_parser("evaluate", help="(re)compute metrics.json and report.html of a run")
    p.add_argument("run", type=Path)
    for p in (sub.choices["render"], sub.choices["export"], p):
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                       help="where to render (default: the run's config.yaml 'device')")

    p = sub.add_parser("train-model", help="train the PAGE-4D geometry network")
    p.add_argument("--config", required=True, help="training config name (configs/train/NAME.yaml) or path")
    p.add_argument("--resume", type=Path, help="checkpoint to resume from")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    p = sub.add_parser("config", help="print the default or a resolved config")
    p.add_argument("--defaults", action="store_true", help="print configs/default.yaml as generated from the code")
    p.add_argument("--config", default="default")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def _dispatch(target: str) -> Callable[[argparse.Namespace], int]:
    """Import ``module:function`` lazily; a command whose stage is not implemented yet says so."""
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise UserError(f"this command is not available yet ({module_name} is missing)") from None
        raise
    return getattr(module, func_name)


COMMANDS = {
    "reconstruct": "pipeline.commands:reconstruct",
    "make-scene": "pipeline.synthetic.cli:make_scene_command",
    "render": "stages.render.cli:render_command",
    "export": "stages.render.cli:export_command",
    "evaluate": "stages.evaluate.cli:evaluate_command",
    "train-model": "stages.geometry.page4d.train:train_command",
    "config": "pipeline.commands:config_command",
}


def _sigterm(signum, frame):  # pragma: no cover - exercised by the resume test through a subprocess
    raise StageInterrupted("terminated")


def _os_error_line(err: BaseException) -> str:
    """One line for an OSError or UnicodeDecodeError: what failed and on which path."""
    if isinstance(err, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({err.reason} at byte {err.start})"
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename:
        # mkdir under or at a path that is a file: name the file in the way, not the system's "File exists".
        wanted = Path(err.filename)
        for blocking in [wanted, *wanted.parents]:
            if blocking.exists() and not blocking.is_dir():
                return (f"{wanted} is a file, not a folder" if blocking == wanted else
                        f"{blocking} is a file, so the folder {wanted} cannot be made")
    text = err.strerror or str(err)
    paths = [p for p in (getattr(err, "filename", None), getattr(err, "filename2", None)) if p]
    return f"{text}: {' -> '.join(str(p) for p in paths)}" if paths else text


def main(argv: Sequence[str] | None = None) -> int:
    """The ``page4dgs`` command: its exit code (0 done, 2 a user error, 130 interrupted).

    Run as the console command (``argv`` None) by torchrun as a rank of data-parallel ``train-model``
    (``WORLD_SIZE`` > 1), the process leaves through ``os._exit`` once its output is flushed: a rank that has used
    gloo sometimes aborts in gloo's teardown at interpreter exit (SIGABRT, "terminate called without an active
    exception"; seen in the data-parallel tests), which torchrun would report as a failed rank after a finished
    run. Its files are complete by then. In-process callers (``argv`` given) always get the code back."""
    code = _main(argv)
    if argv is None and _torchrun_rank_of("train-model", sys.argv[1:]):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _torchrun_rank_of(command: str, argv: Sequence[str]) -> bool:
    """Whether this process is one of several that torchrun started (``WORLD_SIZE`` > 1) to run ``command``."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return False
    return size > 1 and command in argv


GLOBAL_FLAGS = ("--debug", "-v", "--verbose")


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The global flags count wherever they stand (`page4dgs reconstruct demo --debug` too): read, then taken out.
    debug, verbose = "--debug" in argv, "-v" in argv or "--verbose" in argv
    argv = [a for a in argv if a not in GLOBAL_FLAGS]
    from pipeline.log import setup_console

    setup_console(verbose=verbose)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    args = None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may come after options (`reconstruct demo --out runs/x key=value`), which argparse
        # does not gather into the positional list by itself.
        if hasattr(args, "overrides"):
            args.overrides = list(args.overrides or []) + [a for a in extra if "=" in a and not a.startswith("-")]
            extra = [a for a in extra if not ("=" in a and not a.startswith("-"))]
        if extra:
            dashed = next((a for a in extra if a.startswith("-") and Path(a).exists()), None)
            dotted = next((a for a in extra if "." in a and not a.startswith(("-", ".", "/")) and not Path(a).exists()),
                          None) if hasattr(args, "overrides") else None
            hint = (f" (a path that starts with '-' is written ./{dashed})" if dashed else
                    f" (a config override is written key=value, e.g. {dotted}=...)" if dotted else "")
            parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
        if args.command == "reconstruct" and args.scene and "=" in args.scene and not Path(args.scene).exists():
            args.overrides, args.scene = [args.scene] + args.overrides, None     # `reconstruct key=value`
        if args.command == "reconstruct" and not args.scene:
            raise UserError("page4dgs reconstruct: the scene is required (a video, a folder of frames, a dataset "
                            "folder, or 'demo')")
        return int(_dispatch(COMMANDS[args.command])(args) or 0)
    except UserError as err:
        if debug:
            raise
        print(f"page4dgs: error: {err}", file=sys.stderr)
        return UserError.exit_code
    except (OSError, UnicodeDecodeError) as err:
        # A path the user named that cannot be read or written (a file where a folder is needed, no permission, a
        # disk full, a text file that is not UTF-8): the system's own message names the path; no traceback.
        if debug:
            raise
        print(f"page4dgs: error: {_os_error_line(err)}", file=sys.stderr)
        return UserError.exit_code
    except (KeyboardInterrupt, StageInterrupted):
        if debug:
            raise
        command = getattr(args, "command", None)
        if command == "reconstruct" and getattr(args, "from_stage", None):
            # --from forces its stage to start over, so the same command would not resume it
            print(f"page4dgs: interrupted; finished stages are kept, run the command again without --from "
                  f"{args.from_stage} to resume ('--from' starts that stage over)", file=sys.stderr)
            return 130
        print({"make-scene": "page4dgs: interrupted; no scene was written (its folder appears only when complete)",
               "train-model": "page4dgs: interrupted; run the same command again to resume from the last checkpoint",
               }.get(command, "page4dgs: interrupted; finished stages are kept, run the same command again to resume"),
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
