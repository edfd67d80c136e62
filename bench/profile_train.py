"""Where a training step spends its time: torch.profiler over a short page4d-tiny run.

    python -m bench.profile_train [--steps 30] [key=value ...]

Prints the top operators by CUDA time and by CPU time (self), and the wall time per step with and without the
synthetic data generation, so throughput problems can be found in one short GPU call.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--config", default="page4d-tiny")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from stages.geometry.page4d.train import load_train_config, train

    warm = load_train_config(args.config, ["out_dir=/tmp/profile-warm", "export=", f"steps={8}", *args.overrides])
    t = time.perf_counter()
    train(warm)                                     # builds texture banks, cuDNN plans, allocator pools
    print(f"warm-up run: {time.perf_counter() - t:.1f} s", flush=True)
    config = load_train_config(args.config, ["out_dir=/tmp/profile-run", "export=", f"steps={args.steps}",
                                             *args.overrides])
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    t = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        train(config)
    wall = time.perf_counter() - t
    print(f"profiled run: {args.steps} steps in {wall:.1f} s ({args.steps / wall:.2f} steps/s)")
    table = prof.key_averages()
    if torch.cuda.is_available():
        print(table.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
