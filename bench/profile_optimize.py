"""Where an optimize-stage training step spends its time: torch.profiler over runs of each deformation model, on the
speed benchmark's setting exactly (100k Gaussians, all dynamic, 100 orbit views at 400x400, SH degree 3, the model's
own renders as targets: ``bench.optimize_bench.training_rate``).

    python -m bench.profile_optimize [--models bases mlp planes none] [--steps 200] [--gaussians 100000]
                                     [--variant eager-loss-graphs|eager|compiled|...]

For each model: steps per second (unprofiled, from the trainer's log over ``--steps`` steps after a warm-up, as the
speed benchmark measures them), the device kernels launched per step (the difference of two profiled runs, so the
set-up cancels), the GPU kernel time per step beside the wall time per step (a step whose kernels take far less
than its wall time is bound by the host: launches, Python or a host sync), and the top operators by self CUDA time
and by self CPU time. ``python -m bench.optimize_ops`` counts the operators of a step without a GPU.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from bench.optimize_bench import (SPEED_VARIANTS, orbit_views, own_render_views, random_gaussians, speed_config,
                                  training_rate)
from stages.optimize.trainer import TrainData, train


def profiled_run(kind: str, gaussians, views, device: str, steps: int, out: Path,
                 variant: str = "eager-loss-graphs") -> torch.profiler.profile:
    """A training run of ``steps`` steps on ``views`` (set-up and the final checkpoint included) under
    torch.profiler, in the training-step ``variant`` of the speed benchmark (``SPEED_VARIANTS``)."""
    cfg = speed_config(kind, steps, log_every=steps, **SPEED_VARIANTS[variant])
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    shutil.rmtree(out, ignore_errors=True)
    with torch.profiler.profile(activities=activities) as prof:
        train(cfg, TrainData(views=views), gaussians, out, device=device, resume=False)
        if device == "cuda":
            torch.cuda.synchronize()
    return prof


def is_device_activity(event) -> bool:
    """Whether a profiler event (or key average) is work on the GPU: a kernel, copy or memset. Not a CPU operator
    (whose self device time is its kernels') and not a user annotation's range on the device timeline (the
    optimizer's ``Optimizer.step#...``, whose span covers its kernels): counting either counts kernels twice."""
    return (event.device_type == torch.autograd.DeviceType.CUDA
            and not getattr(event, "is_user_annotation", False))


def device_launches(prof: torch.profiler.profile) -> int:
    """Kernels, copies and memsets the profiled run put on the GPU."""
    return sum(1 for e in prof.events() if is_device_activity(e))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bases", "mlp", "planes", "none"])
    parser.add_argument("--steps", type=int, default=200, help="timed steps (after 50 warm-up steps)")
    parser.add_argument("--profile-steps", type=int, default=40, help="steps of the profiled runs")
    parser.add_argument("--gaussians", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--rows", type=int, default=18)
    parser.add_argument("--variant", default="eager-loss-graphs", choices=list(SPEED_VARIANTS),
                        help="training-step variant (optimize_bench's speed section)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gaussians = random_gaussians(args.gaussians)
    views = orbit_views(100, args.size, device)
    workdir = Path(tempfile.mkdtemp(prefix="profile_optimize_"))
    for kind in args.models:
        rate = training_rate(kind, gaussians, views, device, 50, args.steps, workdir, window=50, variant=args.variant)
        targets = own_render_views(speed_config(kind, 1), gaussians, views, device)     # as training_rate's
        short = profiled_run(kind, gaussians, targets, device, args.profile_steps, workdir / "short", args.variant)
        prof = profiled_run(kind, gaussians, targets, device, 2 * args.profile_steps, workdir / "long", args.variant)
        table = prof.key_averages()
        print(f"\n=== {kind} ({args.variant}): {rate['it_per_s']:.1f} it/s ({1000 / rate['it_per_s']:.2f} ms per "
              f"step; windows of 50 steps {rate['window_it_per_s']}), {rate['visible_per_view']} Gaussians visible "
              "per view")
        if device == "cuda":
            per_step = (device_launches(prof) - device_launches(short)) / args.profile_steps
            # kernels, copies and memsets only: an operator's self device time is its kernels' (counting both
            # doubled this figure until the thirty-ninth session)
            gpu_ms = sum(e.self_device_time_total for e in table if is_device_activity(e)) / 1e3 / (
                2 * args.profile_steps)
            print(f"    {per_step:.0f} device launches per step; GPU busy {gpu_ms:.2f} ms per step (profiled run, "
                  f"set-up included)")
            print(table.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))
        print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
