"""Where the optimize stage's steps spend their time on a real scene: torch.profiler over the stage itself, not the
speed setting (``bench.profile_optimize`` profiles that one; on the 100-frame scene the two differ by about 6 ms
a step, docs/gaussians.md "The cost of a training step", item 12).

    python -m bench.profile_scene [--frames 100] [--resolution 400] [--steps 200] [--rows 25]
                                  [--set optimize.KEY=VALUE ...] [--json NAME] [--workdir DIR]

The issue's object scene (``make-scene object``, seed 0, 20 test views) through geometry (oracle) and initialize
with the dnerf preset, then the optimize stage twice under torch.profiler, for ``steps`` and for 2 x ``steps``
training steps, each in its own run folder. Per operator, the long run's totals minus the short run's, divided by
``steps``: what one step costs in the long run's second half (set-up, the final checkpoint and the first ``steps``
steps cancel). Reported per step: wall seconds, self CPU and self device time of every operator (top ``rows`` by
each), launches on the device. ``--set`` passes preset overrides: the preset densifies from step 500 and raises
the SH degree every 1000 steps, so short runs profile neither unless told (``optimize.refine_start=50``,
``optimize.sh_degree_interval=1``). Writes ``bench/results/profile_scene_<device>.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, environment
from bench.optimize_bench import make_object
from bench.profile_optimize import device_launches, is_device_activity


def optimize_run(scene_dir: Path, run_dir: Path, steps: int, overrides: list[str],
                 profile: bool) -> tuple[float, Any]:
    """geometry and initialize (not profiled), then the optimize stage for ``steps`` steps, profiled when asked:
    (wall seconds of the optimize stage, the profiler or None)."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.scene import load_scene

    config = load_config("dnerf", [f"scene.source={scene_dir}", "geometry.model=oracle",
                                   f"optimize.iterations={steps}", *overrides])
    scene = load_scene(config.scene)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_pipeline(config, run_dir, scene, until_stage="initialize")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=activities) if profile else None
    start = time.perf_counter()
    if prof is not None:
        prof.start()
    run_pipeline(config, run_dir, scene, until_stage="optimize")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if prof is not None:
        prof.stop()
    return time.perf_counter() - start, prof


def operator_totals(prof) -> dict[str, dict[str, float]]:
    """Per name: calls, self CPU and self device microseconds over the profiled run, and whether the name is a
    device activity (a kernel, copy or memset) rather than an operator that launched some or a user annotation's
    range: an operator's self device time is its kernels', so only device activities add up to the device's busy
    time (:func:`bench.profile_optimize.is_device_activity`)."""
    return {e.key: {"calls": e.count, "self_cpu_us": e.self_cpu_time_total,
                    "self_device_us": getattr(e, "self_device_time_total", 0.0),
                    "device_activity": is_device_activity(e)} for e in prof.key_averages()}


def per_step(short: dict, long: dict, steps: int) -> list[dict[str, Any]]:
    """The long run's totals minus the short run's, per step, for every operator (negative noise clipped to 0)."""
    rows = []
    for name, after in long.items():
        before = short.get(name, {"calls": 0, "self_cpu_us": 0.0, "self_device_us": 0.0})
        rows.append({"operator": name, "device_activity": after["device_activity"],
                     "calls": round((after["calls"] - before["calls"]) / steps, 2),
                     "self_cpu_ms": round(max(after["self_cpu_us"] - before["self_cpu_us"], 0.0) / steps / 1e3, 4),
                     "self_device_ms": round(max(after["self_device_us"] - before["self_device_us"], 0.0)
                                             / steps / 1e3, 4)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=400)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="optimize.KEY=VALUE")
    parser.add_argument("--json", default="")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    where = environment()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="profile_scene_"))
    scene = make_object(work / f"object_{args.frames}x{args.resolution}", seed=0, frames=args.frames,
                        resolution=args.resolution, test_views=20)
    optimize_run(scene, work / "warm", args.steps, args.overrides, profile=False)   # caches, kernels, allocator
    short_s, short = optimize_run(scene, work / "short", args.steps, args.overrides, profile=True)
    long_s, long = optimize_run(scene, work / "long", 2 * args.steps, args.overrides, profile=True)
    rows = per_step(operator_totals(short), operator_totals(long), args.steps)
    wall_ms = 1e3 * (long_s - short_s) / args.steps
    device_ms = sum(r["self_device_ms"] for r in rows if r["device_activity"])
    launches = (device_launches(long) - device_launches(short)) / args.steps if torch.cuda.is_available() else None
    print(f"Optimize stage on the {args.frames}-frame {args.resolution}x{args.resolution} object scene (dnerf preset"
          f"{', ' + ' '.join(args.overrides) if args.overrides else ''}; {where.get('device')}): "
          f"{wall_ms:.2f} ms per step wall, {device_ms:.2f} ms of device time"
          + (f", {launches:.0f} device launches" if launches is not None else ""))
    for key, label in (("self_device_ms", "self device ms"), ("self_cpu_ms", "self CPU ms")):
        if key == "self_device_ms" and not torch.cuda.is_available():
            continue
        print(f"\n{'operator':60s} {'calls':>7s} {label:>15s}")
        for r in sorted(rows, key=lambda r: -r[key])[:args.rows]:
            print(f"{r['operator'][:60]:60s} {r['calls']:7.1f} {r[key]:15.4f}")
    record = {"benchmark": "profile_scene", "environment": where, "about": __doc__.split("\n\n")[0],
              "setting": {"frames": args.frames, "resolution": args.resolution, "steps": args.steps,
                          "overrides": args.overrides, "preset": "dnerf", "geometry": "oracle"},
              "wall_ms_per_step": round(wall_ms, 3), "device_ms_per_step": round(device_ms, 3),
              "device_launches_per_step": launches,
              "operators": sorted(rows, key=lambda r: -(r["self_device_ms"] + r["self_cpu_ms"]))}
    out = RESULTS / (args.json or f"profile_scene_{where['device_type']}.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
