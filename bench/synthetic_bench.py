"""Synthetic scene generator benchmarks.

    python -m bench.synthetic_bench --cpu   # demo scene generation time (target: <= 20 s on 2 cores)
    python -m bench.synthetic_bench --gpu   # training-batch throughput (target: >= 2000 frames/s at 224 x 224)

Each part prints a table and updates its section ("cpu" or "gpu") of bench/results/synthetic.json with the device,
versions, date and exact command.

CPU: wall time of ``make_room_scene`` with the demo's settings (48 frames, 256 x 144), the whole thing (textures,
rendering, PNG/NPY/JSON writing) into a fresh folder, several repeats; the object scene's defaults for reference.
GPU: frames per second of ``render_batch`` (images, depth, world points, dynamic masks, cameras) for batches of
random rooms, after warm-up, synchronised; the named baseline is the same call on this host's CPU (all cores) in the
same run. A parity check renders the same scenes on both devices and reports how many pixels agree.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import common
from pipeline.io import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "synthetic.json"


def _environment(device: str) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python -m bench.synthetic_bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
           "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        env["device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    env["host_cpu"] = common.cpu_name()
    env["environment"] = common.environment(device)             # driver, versions, exact command (bench/common.py)
    return env


def _save(section: str, payload: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[section] = payload
    write_json(RESULTS, results)
    print(f"wrote {RESULTS} [{section}]")


def _table(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def cpu(repeats: int) -> None:
    from pipeline.synthetic.demo import DEMO_OPTIONS, DEMO_SEED
    from pipeline.synthetic.writer import ObjectSceneOptions, make_object_scene, make_room_scene

    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    rows, measurements = [], {}
    for name, make, seed, options in (("demo room (48 x 256x144)", make_room_scene, DEMO_SEED, DEMO_OPTIONS),
                                      ("object default (100+30 x 200x200)", make_object_scene, 0,
                                       ObjectSceneOptions())):
        times = []
        for _ in range(repeats if "demo" in name else 1):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                make(Path(folder) / "scene", seed, options)
                times.append(time.perf_counter() - start)
        measurements[name] = {"seconds": [round(t, 3) for t in times], "min_s": round(min(times), 3),
                              "median_s": round(statistics.median(times), 3)}
        rows.append([name, len(times), f"{min(times):.2f}", f"{statistics.median(times):.2f}"])
    _table(rows, ["scene", "runs", "min s", "median s"])
    demo = measurements["demo room (48 x 256x144)"]
    payload = {**_environment("cpu"), "device": "cpu", "target": "demo scene generated in <= 20 s on 2 cores",
               "meets_target": demo["median_s"] <= 20.0, "results": measurements,
               "note": "rendering runs on one thread by design (bitwise-reproducible files); wall time includes "
                       "texture synthesis, rendering and writing every file"}
    if load_before is not None:  # other processes on the machine compete for its cores
        payload["load_average_1min"] = {"before": load_before, "after": round(os.getloadavg()[0], 2)}
    _save("cpu", payload)


def _throughput(device: torch.device, batch: int, frames: int, height: int, width: int, calls: int,
                warmup: int, supersample: int = 1) -> dict:
    from pipeline.synthetic.batch import BatchOptions, SyntheticBatches

    source = SyntheticBatches(device, seed=0, options=BatchOptions(supersample=supersample))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        source.sample(batch, frames, height, width)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(calls):
        source.sample(batch, frames, height, width)
    sync()
    elapsed = time.perf_counter() - start
    result = {"batch": batch, "frames": frames, "height": height, "width": width, "supersample": supersample,
              "calls": calls, "ms_per_call": round(1000 * elapsed / calls, 2),
              "frames_per_s": round(calls * batch * frames / elapsed, 1)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def _parity(height: int = 96, width: int = 128) -> dict:
    """The same random rooms rendered on CUDA and on the CPU (float32 both)."""
    from pipeline.synthetic.batch import render_batch
    from pipeline.synthetic.scenes import sample_room
    from pipeline.synthetic.textures import make_texture_bank

    generator = torch.Generator().manual_seed(123)
    bank = make_texture_bank(generator, 8)
    spec = sample_room(generator, 4, bank.count, width, height)
    times = torch.linspace(0, 1, 4)[None].expand(4, -1).contiguous()
    cpu_out = render_batch(spec, times, height, width, bank)
    cuda_bank = type(bank)(bank.table.cuda(), bank.offsets.cuda(), bank.sizes.cuda(), bank.count, bank.size,
                           bank.names)
    cuda_spec = spec.to(device="cuda")
    cuda_out = {k: v.cpu() for k, v in render_batch(cuda_spec, times.cuda(), height, width, cuda_bank).items()}
    depth_c, depth_g = cpu_out["depth"], cuda_out["depth"]
    relative = (depth_g - depth_c).abs() / depth_c.clamp_min(1e-6)
    image = (cuda_out["images"] - cpu_out["images"]).abs()
    return {"pixels": depth_c.numel(),
            "depth_within_1e-5_relative": round(float((relative <= 1e-5).float().mean()), 6),
            "depth_relative_median": float(relative.median()),
            "dynamic_mask_equal": round(float((cuda_out["dynamic_mask"] == cpu_out["dynamic_mask"]).float().mean()), 6),
            "image_abs_diff_median": float(image.median()), "image_abs_diff_p99": float(image.flatten().kthvalue(
                int(0.99 * image.numel())).values),
            "cameras_max_abs_diff": float((cuda_out["world_to_camera"] - cpu_out["world_to_camera"]).abs().max())}


def gpu(calls: int) -> None:
    if not torch.cuda.is_available():
        print("bench synthetic --gpu: CUDA is not available", file=sys.stderr)
        sys.exit(2)
    cuda, host = torch.device("cuda"), torch.device("cpu")
    # (B, S, H, W, supersample): the headline first; then other batch shapes, portrait/wide, edge supersampling.
    configs = [(8, 16, 224, 224, 1), (16, 8, 224, 224, 1), (16, 16, 224, 224, 1), (8, 16, 168, 308, 1),
               (8, 16, 308, 168, 1), (8, 16, 224, 224, 2)]
    rows, results = [], []
    for batch, frames, height, width, supersample in configs:
        try:
            result = _throughput(cuda, batch, frames, height, width, calls, warmup=3, supersample=supersample)
        except RuntimeError as err:  # e.g. out of memory: record it and go on with the other shapes
            result = {"batch": batch, "frames": frames, "height": height, "width": width,
                      "supersample": supersample, "error": str(err).splitlines()[0][:200]}
            torch.cuda.empty_cache()
        results.append(result)
        rows.append([f"{batch}x{frames}", f"{height}x{width}", supersample, result.get("ms_per_call", "error"),
                     result.get("frames_per_s", ""), result.get("peak_memory_gib", "")])
    # Named baseline: the same generator on this host's CPU (all cores), same run, fewer calls.
    torch.set_num_threads(os.cpu_count() or 1)
    baseline = _throughput(host, 8, 16, 224, 224, calls=2, warmup=1)
    rows.append(["8x16", "224x224 (host CPU)", 1, baseline["ms_per_call"], baseline["frames_per_s"], ""])
    _table(rows, ["B x S", "H x W", "ss", "ms/call", "frames/s", "peak GiB"])
    headline = results[0].get("frames_per_s", 0.0)
    print(f"224 x 224: {headline:.0f} frames/s on {torch.cuda.get_device_name(0)} = "
          f"{headline / baseline['frames_per_s']:.1f} x the host CPU ({baseline['frames_per_s']:.1f} frames/s)")
    parity = _parity()
    print("GPU vs CPU parity:", json.dumps(parity))
    _save("gpu", {**_environment("cuda"), "target": ">= 2000 frames/s at 224 x 224 (images, depth, masks, cameras)",
                  "meets_target": headline >= 2000, "results": results,
                  "baseline_host_cpu": {**baseline, "threads": torch.get_num_threads()},
                  "speedup_vs_host_cpu": round(headline / baseline["frames_per_s"], 1), "parity": parity})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="time the demo scene generation")
    parser.add_argument("--gpu", action="store_true", help="time training batches on CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="CPU: demo generations to time")
    parser.add_argument("--calls", type=int, default=20, help="GPU: timed batches per configuration")
    args = parser.parse_args()
    if not (args.cpu or args.gpu):
        parser.error("choose --cpu and/or --gpu")
    if args.cpu:
        cpu(args.repeats)
    if args.gpu:
        gpu(args.calls)


if __name__ == "__main__":
    main()
