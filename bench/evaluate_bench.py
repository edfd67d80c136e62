"""Evaluation cost per test view, and video encoding: what the evaluate and render stages add after training.

    python -m bench.evaluate_bench --cpu     # -> bench/results/evaluate_cpu.json
    python -m bench.evaluate_bench --gpu     # -> bench/results/evaluate_gpu.json (LPIPS on CUDA beside CPU)

Per 800x800 image pair (the D-NeRF full-resolution protocol): PSNR and SSIM (float64 on the CPU, as the stage
computes them), LPIPS-alex and LPIPS-vgg, standard and 3DGS-convention VGG. LPIPS runs on the CPU and, with --gpu,
on CUDA in the same process: the CPU row is the named baseline of the CUDA row. Also the H.264 encoding of a
48-frame 512x512 video. Times are the median (and min) over repeats after a warm-up; the load average is recorded
because other processes on a shared machine stretch CPU times. With $OUT set, the JSON is also copied there.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import common
from pipeline.io import write_json
from stages.evaluate.image_metrics import psnr, ssim_3dgs
from stages.evaluate.lpips_metric import LPIPS
from stages.render.video import write_mp4

RESULTS = Path(__file__).resolve().parent / "results"
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lpips"


def image_pair(size: int = 800) -> tuple[np.ndarray, np.ndarray, str]:
    """A natural reference / distorted pair resized to size x size (the shared fixture's I04), else a synthetic one."""
    from PIL import Image

    if (FIXTURE / "ref" / "I04.png").is_file():
        load = lambda p: np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
        return (load(FIXTURE / "dist" / "I04.png") / 255.0, load(FIXTURE / "ref" / "I04.png") / 255.0,
                "shared fixture I04, bicubic to 800x800")
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:size, 0:size] / size
    ref = np.stack([np.sin(6 * rows) * 0.5 + 0.5, cols, np.cos(9 * rows * cols) * 0.5 + 0.5], -1)
    return np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1), ref, "synthetic gradients + noise"


def timed(fn, repeats: int, sync=lambda: None) -> dict:
    times = common.wall_times(fn, repeats, sync)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "repeats": repeats}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if args.gpu else [])
    if args.gpu and not torch.cuda.is_available():
        print("evaluate_bench: --gpu needs CUDA", file=sys.stderr)
        return 2
    dist, ref, source = image_pair()
    rows = []
    sync = lambda: torch.cuda.synchronize() if torch.cuda.is_available() else None
    rows.append({"what": "psnr (float64, cpu)", "device": "cpu", **timed(lambda: psnr(dist, ref), args.repeats)})
    rows.append({"what": "ssim_3dgs (float64, cpu)", "device": "cpu",
                 **timed(lambda: ssim_3dgs(dist, ref), args.repeats)})
    for device in devices:
        for net in ("alex", "vgg"):
            model = LPIPS(net, device)
            rows.append({"what": f"lpips_{net}", "device": device, "value": model(dist, ref),
                         **timed(lambda: model(dist, ref), args.repeats, sync)})
            if net == "vgg":
                rows.append({"what": "lpips_vgg_3dgs", "device": device, "value": model(dist, ref, False),
                             **timed(lambda: model(dist, ref, False), args.repeats, sync)})
    frames = [np.clip(np.round(ref[:512, :512] * 255 + k), 0, 255).astype(np.uint8) for k in range(48)]
    with tempfile.TemporaryDirectory() as tmp:
        rows.append({"what": "H.264 encode, 48 frames 512x512", "device": "cpu",
                     **timed(lambda: write_mp4(Path(tmp) / "v.mp4", frames, 24), max(2, args.repeats // 2))})

    print(f"{'what':<34} {'device':<6} {'median ms':>10} {'min ms':>10}")
    for r in rows:
        print(f"{r['what']:<34} {r['device']:<6} {r['median_ms']:>10.1f} {r['min_ms']:>10.1f}")
    result = {
        "benchmark": "evaluate", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, "-m", "bench.evaluate_bench", *argv]),
        "device": torch.cuda.get_device_name(0) if args.gpu else f"cpu ({platform.processor() or platform.machine()}, "
                                                                 f"{os.cpu_count()} cores)",
        "cpu_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "versions": {"torch": torch.__version__, "cuda": str(torch.version.cuda), "python": platform.python_version()},
        "images": source, "rows": rows, "environment": common.environment("cuda" if args.gpu else "cpu"),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"evaluate_{'gpu' if args.gpu else 'cpu'}.json"
    write_json(path, result)
    if os.environ.get("OUT"):
        shutil.copy(path, Path(os.environ["OUT"]) / path.name)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
