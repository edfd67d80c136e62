"""Training throughput of PAGE-4D on 1 GPU against N data-parallel GPUs of the same host, in one run.

    python -m bench.train_scaling_bench --processes 1 4            # a GPU host; ~1 min per setting
    python -m bench.train_scaling_bench --processes 1 2 --cpu      # the same measurement on the CPU (gloo), tiny

Each setting is a fresh ``page4dgs train-model`` run of ``--steps`` steps from a random initialisation, launched
the same way for every number of processes (``torchrun --standalone --nproc_per_node=N``, N = 1 included, and
``--threads`` CPU threads per process: torchrun itself sets 1 for N > 1 only), with the recipe's data
(``--config`` and ``--set`` overrides; by default the eighth session's continuation recipe, whose sequences are 2-16
frames). Its
``train_log.csv`` gives, per window of ``--log-every`` steps, the frames per second of the whole run (all ranks);
the table reports the median over the windows after ``--warmup`` steps (the first windows include cuDNN planning and
allocator growth), steps per second (frames/s over ``max_images`` x processes: every draw holds ``max_images``
frames when ``frame_choices`` divide it, as in the recipes), and the scaling efficiency: frames/s of N processes / (N x frames/s of one).
Writes bench/results/train_scaling_gpu.json (or _cpu) with the environment and every window.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from bench.common import environment
from pipeline.io import write_json

RESULTS = Path(__file__).parent / "results"
CONTINUATION = ["decay_matrices_only=true", "frame_choices=[2,2,4,4,8,16]", "object_fraction=0.2",
                "room_pan_scale=[1,3]", "mask_head_backprop=true", "loss.camera_rotation_weight=5"]


def run_setting(processes: int, config: str, steps: int, log_every: int, overrides: list[str], device: str,
                workdir: Path, threads: int) -> dict:
    """One training run of ``steps`` steps with ``processes`` ranks; returns its log's windows and wall time."""
    out_dir = workdir / f"p{processes}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "pipeline.cli", "train-model", "--config", config, f"steps={steps}", f"log_every={log_every}",
           f"checkpoint_every={steps + 1}", f"out_dir={out_dir}", "export=", f"device={device}", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    with open(out_dir / "train_log.csv", newline="") as f:
        rows = [{"step": int(r["step"]), "frames_per_s": float(r["frames_per_s"]), "seq_per_s": float(r["seq_per_s"]),
                 "gpu_mem_gb": float(r["gpu_mem_gb"])} for r in csv.DictReader(f)]
    return {"processes": processes, "wall_s": round(wall, 1), "windows": rows}


def summarize(setting: dict, warmup: int, frames_per_step: int) -> dict:
    steady = [w["frames_per_s"] for w in setting["windows"] if w["step"] > warmup]
    fps = statistics.median(steady) if steady else float("nan")
    return {"processes": setting["processes"], "frames_per_s": round(fps, 1),
            "steps_per_s": round(fps / (frames_per_step * setting["processes"]), 2),
            "windows": len(steady), "wall_s": setting["wall_s"],
            "peak_gpu_gb": max((w["gpu_mem_gb"] for w in setting["windows"]), default=0.0)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 4], help="settings: processes (GPUs) each")
    parser.add_argument("--config", default="page4d-tiny", help="training recipe (configs/train/NAME.yaml)")
    parser.add_argument("--steps", type=int, default=200, help="steps per setting")
    parser.add_argument("--warmup", type=int, default=40, help="steps left out of the median")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=None, metavar="key=value",
                        help="recipe overrides (default: the continuation recipe's data and loss settings)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (OMP_NUM_THREADS), every setting")
    parser.add_argument("--cpu", action="store_true", help="on the CPU (gloo), e.g. to try the script")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/train_scaling_gpu.json)")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu else "cuda"
    overrides = CONTINUATION if args.set is None else args.set
    from stages.geometry.page4d.train import load_train_config

    frames_per_step = load_train_config(args.config, overrides).max_images
    results = {"environment": environment(device), "config": args.config, "overrides": overrides,
               "steps": args.steps, "warmup_steps": args.warmup, "frames_per_step_and_process": frames_per_step,
               "threads_per_process": args.threads, "launcher": "torchrun --standalone (every setting)",
               "settings": []}
    out = args.out or RESULTS / f"train_scaling_{'cpu' if args.cpu else 'gpu'}.json"
    with tempfile.TemporaryDirectory(prefix="train_scaling_") as tmp:
        for processes in args.processes:
            setting = run_setting(processes, args.config, args.steps, args.log_every, overrides, device, Path(tmp),
                                  args.threads)
            results["settings"].append({**summarize(setting, args.warmup, frames_per_step),
                                        "log": setting["windows"]})
    base = next((s["frames_per_s"] for s in results["settings"] if s["processes"] == 1), None)
    print(f"{'processes':>9} {'frames/s':>9} {'steps/s':>8} {'efficiency':>10} {'peak GB':>8} {'wall s':>7}")
    for s in results["settings"]:
        s["efficiency"] = round(s["frames_per_s"] / (s["processes"] * base), 3) if base else None
        eff = f"{s['efficiency']:.2f}" if s["efficiency"] is not None else "-"
        print(f"{s['processes']:>9} {s['frames_per_s']:>9.1f} {s['steps_per_s']:>8.2f} {eff:>10} "
              f"{s['peak_gpu_gb']:>8.2f} {s['wall_s']:>7.1f}")
    write_json(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
