"""How the cost of a training step grows with the number of Gaussians.

    python -m bench.optimize_scaling_bench --cpu     # 2.5k-40k Gaussians at 256x256, PyTorch rasterizer
    python -m bench.optimize_scaling_bench --gpu     # 10k-1M Gaussians at 400x400, gsplat
    -> bench/results/optimize_scaling_{cpu,gpu}.json, rewritten after every measured size

The full training step of the optimize stage (render, L1 + D-SSIM, regularisers, Adam; no densification, so the
count stays fixed) on random Gaussians in a unit ball seen by 100 orbit cameras, all Gaussians dynamic, for the
default deformation model beside the static one ('none') in the same run. Iterations per second come from the
trainer's own log over the steps after a warm-up (``bench.optimize_bench.training_rate``); peak CUDA memory on GPU.
On a CPU the trainer's default of one torch thread applies (``optimize.cpu_threads``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

from bench.common import RESULTS, environment
from bench.optimize_bench import orbit_views, random_gaussians, table, training_rate
from pipeline.io import write_json

SETTINGS = {  # device: (Gaussian counts, image side in pixels, SH degree, warm-up steps, timed steps)
    "cpu": ((2_500, 5_000, 10_000, 20_000, 40_000), 256, 1, 5, 20),
    "cuda": ((10_000, 30_000, 100_000, 300_000, 1_000_000), 400, 3, 50, 300),
}
MODELS = ("bases", "none")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--gpu", action="store_true")
    mode.add_argument("--cpu", action="store_true")
    parser.add_argument("--counts", type=lambda text: [int(float(v)) for v in text.split(",")],
                        help="Gaussian counts, comma-separated (default: per device, see the module docstring)")
    args = parser.parse_args(argv)
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("optimize_scaling_bench: --gpu needs CUDA", file=sys.stderr)
        return 2
    counts, size, sh_degree, warmup, steps = SETTINGS[device]
    counts = args.counts or counts
    out = RESULTS / f"optimize_scaling_{'gpu' if args.gpu else 'cpu'}.json"
    record = {"benchmark": "optimize_scaling", "environment": environment(device), "resolution": [size, size],
              "sh_degree": sh_degree, "warmup_steps": warmup, "timed_steps": steps, "dynamic_fraction": 1.0,
              "rows": []}
    views = orbit_views(100, size, device)
    with tempfile.TemporaryDirectory(prefix="optimize_scaling_") as workdir:
        for n in counts:
            gaussians = random_gaussians(n, dynamic_fraction=1.0)
            for model in MODELS:
                row = training_rate(model, gaussians, views, device, warmup, steps, Path(workdir), sh_degree)
                row["ms_per_step"] = round(1000.0 / row["it_per_s"], 2)
                record["rows"].append(row)
                print(f"{n:>9} Gaussians  {model:<6} {row['it_per_s']:>8.1f} it/s  {row['ms_per_step']:>8.2f} ms/step",
                      flush=True)
                write_json(out, record)
    table(f"Training step against Gaussian count ({size}x{size}, SH degree {sh_degree}, {device})",
          ["gaussians", "model", "it/s", "ms/step", "peak MiB"],
          [[r["gaussians"], r["model"], r["it_per_s"], r["ms_per_step"], r["peak_mib"]] for r in record["rows"]])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
