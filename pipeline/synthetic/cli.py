"""``page4dgs make-scene {object,room} --out DIR [--seed N] [--frames F] [--res R] [--test-views V]
[--pan-scale P]``."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

from pipeline.scene import MIN_IMAGE_SIDE
from pipeline.errors import UserError
from pipeline.log import get_logger
from pipeline.synthetic.writer import ObjectSceneOptions, RoomSceneOptions, make_object_scene, make_room_scene

log = get_logger("synthetic")

MAX_FRAMES = 2000    # frames (or test views) per scene: 200 x 200 x 2000 is ~1 GB of images
MAX_RES = 4096       # image width in pixels
MAX_PIXELS = 2**31   # frames x width^2 (an upper bound of the scene's pixels): ~8 GB of RGBA images


def make_scene_command(args: argparse.Namespace) -> int:
    """Generate a scene. ``--frames``: room video frames (default 48) or object training frames (default 100, with
    20 test and 10 validation views; fewer for fewer frames); ``--res``: image width (rooms: 16:9; objects: square;
    defaults 256 and 200); ``--test-views``: objects' held-out views (issue #6's protocol: 50 frames, 20 views)."""
    if args.frames is not None and not 2 <= args.frames <= MAX_FRAMES:
        raise UserError(f"--frames must lie in [2, {MAX_FRAMES}], got {args.frames}")
    # The smallest width whose frames the pipeline loads (each side >= MIN_IMAGE_SIDE; rooms are 16:9, height
    # 2 round(9 w / 32): 12 pixels at width 20).
    min_res = 20 if args.kind == "room" else MIN_IMAGE_SIDE
    if args.res is not None and not min_res <= args.res <= MAX_RES:
        raise UserError(f"--res must lie in [{min_res}, {MAX_RES}] pixels for {args.kind} scenes, got {args.res}")
    test_views = getattr(args, "test_views", None)
    if test_views is not None and (args.kind != "object" or not 1 <= test_views <= MAX_FRAMES):
        raise UserError(f"--test-views is for object scenes and must lie in [1, {MAX_FRAMES}]"
                        if args.kind == "object"
                        else "--test-views is for object scenes (a room holds out every 8th frame instead)")
    pan_scale = getattr(args, "pan_scale", None)
    if pan_scale is not None and (args.kind != "room" or not (math.isfinite(pan_scale) and 0 <= pan_scale <= 10)):
        raise UserError("--pan-scale must lie in [0, 10]" if args.kind == "room"
                        else "--pan-scale is for room scenes (object cameras jump between viewpoints)")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must lie in [0, 2^63), got {args.seed}")
    if args.kind == "room":
        options = RoomSceneOptions()
        options = replace(options, frames=args.frames or options.frames, width=args.res or options.width,
                          pan_scale=options.pan_scale if pan_scale is None else pan_scale)
        frames, width, make = options.frames, options.width, make_room_scene
    else:
        options = ObjectSceneOptions()
        frames = args.frames or options.frames
        # D-NeRF's 20 test and 10 validation views for 100+ training frames; proportionally fewer below.
        options = replace(options, frames=frames, resolution=args.res or options.resolution,
                          test_views=test_views or min(options.test_views, max(2, frames // 5)),
                          val_views=min(options.val_views, max(1, frames // 10)))
        width, make = options.resolution, make_object_scene
    if frames * width ** 2 > MAX_PIXELS:
        raise UserError(f"--frames {frames} at --res {width} is more than {MAX_PIXELS / 1e9:.1f} G pixels of "
                        "images; fewer frames or a smaller --res")
    start = time.perf_counter()
    make(args.out, args.seed, options)
    log.info(f"wrote the {args.kind} scene (seed {args.seed}) to {args.out} in {time.perf_counter() - start:.1f} s; "
             f"see {args.out}/README.md")
    return 0
