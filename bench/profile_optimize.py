"""Where an optimize-stage training step spends its time: torch.profiler over short runs of each deformation model,
on the speed benchmark's setting (100k Gaussians, all dynamic, 400x400, SH degree 3).

    python -m bench.profile_optimize [--models bases mlp planes none] [--steps 40] [--gaussians 100000]

For each model: steps per second without the profiler, then the GPU kernel time per step beside the wall time per
step (a step whose kernels take far less than its wall time is bound by the host: launches, Python or a host sync),
and the top operators by self CUDA time and by self CPU time.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from bench.optimize_bench import orbit_views, random_gaussians
from stages.optimize.config import OptimizeConfig
from stages.optimize.trainer import TrainData, train


def run(kind: str, gaussians, views, device: str, steps: int, out: Path) -> float:
    cfg = OptimizeConfig(deformation=kind, iterations=steps, sh_degree=3, sh_degree_interval=1, densify=False,
                         checkpoint_every=0, log_every=steps, backend="auto", deform_warmup=0)
    shutil.rmtree(out, ignore_errors=True)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(cfg, TrainData(views=views), gaussians, out, device=device, resume=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bases", "mlp", "planes", "none"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--gaussians", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gaussians = random_gaussians(args.gaussians)
    views = orbit_views(20, args.size, device)
    out = Path("/tmp/profile-optimize")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for kind in args.models:
        run(kind, gaussians, views, device, 5, out)                           # warm-up: kernels, allocator
        short, long = run(kind, gaussians, views, device, args.steps, out), \
            run(kind, gaussians, views, device, 2 * args.steps, out)
        per_step = (long - short) / args.steps                                # set-up cost cancels
        with torch.profiler.profile(activities=activities) as prof:
            run(kind, gaussians, views, device, args.steps, out)
        table = prof.key_averages()
        gpu_total = sum(e.self_device_time_total for e in table) / 1e3 if device == "cuda" else 0.0   # ms
        print(f"\n=== {kind}: {1 / per_step:.1f} it/s, {per_step * 1e3:.2f} ms per step (unprofiled); "
              f"GPU kernels {gpu_total / args.steps:.2f} ms per step (profiled run, set-up included)")
        if device == "cuda":
            print(table.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))
        print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
