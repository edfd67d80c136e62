"""Geometry network speed and memory: our PAGE-4D against the official code, and the windowed long-video path.

    python -m bench.geometry_bench --gpu [--official /path/to/PAGE4D]     # H100: writes bench/results/geometry.json
    python -m bench.geometry_bench --cpu                                  # writes bench/results/geometry_cpu.json

GPU part (random weights at the page4d-1b dimensions, no network needed):
- the full model (camera, depth and point heads) and the aggregator alone, on 50/100/200 frames at 518x518 and 100
  frames at 518x294: median wall time of ``--repeats`` runs after a warm-up, and peak CUDA memory (each model
  alone on the GPU, weights included);
- the official model from a copy of ``kaichen-z/PAGE4D`` outside the repository (``--official`` or
  $PAGE4D_OFFICIAL), built from its classes with random initialisation and run as its demo does (bf16 autocast,
  no_grad), in the same process on the same GPU; absent, ours runs alone and the JSON says so;
- 1000 frames at 518x294 through the windowed path (windows of 100, overlap 20, Sim(3) joins), all heads.
CPU part: page4d-tiny (the bundled trained weights; random ones where the file is absent) on 48 frames of the demo
scene, or 48 random frames at 256x144 where the demo scene is not available, through preprocessing, the network (the
model's own windows) and the masks; then the network alone on 16 to 96 frames (cost against the number of frames).
The JSON is rewritten after every measured size (``"complete": false`` until the end), so a run cut short by a
timeout keeps what finished; ``--merge`` adds this run's sizes to the file's, so a sweep can be split over calls.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from bench.common import environment, wall_times
from bench.page4d_official import build_official, official_path, set_official_mask
from pipeline.cameras import camera_centres
from stages.geometry.page4d import PAGE4D, ModelConfig, sdpa
from stages.geometry.page4d.inference import Predictor, predict_sequence, prepare_model
from stages.geometry.page4d.preprocess import PreparedFrames, prepare_frames

GPU_SIZES = [(50, 518, 518), (100, 518, 518), (200, 518, 518), (100, 294, 518)]
GiB = 2 ** 30


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    try:
        out["cudnn"] = str(torch.backends.cudnn.version())
    except Exception:
        pass
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def measure(fn: Callable[[], object], device: str, repeats: int) -> dict:
    """Warm-up once, then the median of ``repeats`` timed runs and the peak CUDA memory of one run."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    try:
        times = wall_times(fn, repeats, sync,
                           after_warmup=torch.cuda.reset_peak_memory_stats if device == "cuda" else lambda: None)
        peak = torch.cuda.max_memory_allocated() / GiB if device == "cuda" else None
        return {"seconds": round(statistics.median(times), 4), "runs": [round(t, 4) for t in times],
                "peak_gib": None if peak is None else round(peak, 2)}
    except torch.cuda.OutOfMemoryError as err:
        return {"error": f"out of memory: {str(err).splitlines()[0][:160]}"}
    finally:
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def random_images(frames: int, height: int, width: int, device: str) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(frames * 7 + height)
    return torch.rand(1, frames, 3, height, width, generator=generator).to(device)


def bench_official(root: Path, config: ModelConfig, sizes, device: str, repeats: int,
                   saved: Callable[[dict], None] = lambda results: None) -> tuple[dict, dict]:
    """Times the official model; returns (results by size, its state dict on the CPU for ours). ``saved`` is called
    with the results so far after every size."""
    torch.manual_seed(0)
    model = build_official(root, config, mask_on=False, device=device)
    set_official_mask(model, False)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    results = {}
    for frames, height, width in sizes:
        images = random_images(frames, height, width, device)
        key = f"{frames}x{width}x{height}"
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            full = measure(lambda: model(images), device, repeats)
            aggregator = measure(lambda: model.aggregator(images), device, repeats)
        results[key] = {"full": full, "aggregator": aggregator}
        print(f"  official {key}: full {_fmt(full)}, aggregator {_fmt(aggregator)}", flush=True)
        saved(results)
    model = images = None                                                    # free the GPU for ours
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return results, state


def build_ours(config: ModelConfig, state: Optional[dict], device: str, head_dtype: torch.dtype) -> PAGE4D:
    torch.manual_seed(0)
    model = PAGE4D(config)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return prepare_model(model, device, head_dtype)


def bench_ours(model: PAGE4D, sizes, device: str, repeats: int,
               saved: Callable[[dict], None] = lambda results: None) -> dict:
    results = {}
    autocast = device == "cuda"
    for frames, height, width in sizes:
        images = random_images(frames, height, width, device)
        key = f"{frames}x{width}x{height}"
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            full = measure(lambda: model(images), device, repeats)
            aggregator = measure(lambda: model.aggregator(images, keep_layers=model.config.dpt_layers), device,
                                 repeats)
        results[key] = {"full": full, "aggregator": aggregator}
        print(f"  ours     {key}: full {_fmt(full)}, aggregator {_fmt(aggregator)}", flush=True)
        saved(results)
    return results


def bench_windowed(model: PAGE4D, frames: int, height: int, width: int, window: int, overlap: int,
                   device: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(frames, 3, height, width, generator=generator) * 255).to(torch.uint8)
    prepared = PreparedFrames(images, [None] * frames, "crop")            # mappings are not needed here
    predictor = Predictor(model, device, ("camera", "depth", "point"))
    predict_sequence(predictor, PreparedFrames(images[:window], [None] * window, "crop"), window, overlap,
                     show_progress=False)                                   # warm-up (kernels, autotuning)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pred = predict_sequence(predictor, prepared, window, overlap, show_progress=False)
    seconds = time.perf_counter() - start
    centres = camera_centres(pred.world_to_camera)
    return {"frames": frames, "size": [width, height], "window": window, "overlap": overlap,
            "windows": len(pred.windows), "seconds": round(seconds, 3),
            "peak_gib": round(torch.cuda.max_memory_allocated() / GiB, 2) if device == "cuda" else None,
            "finite_trajectory": bool(np.isfinite(centres).all())}


def _fmt(result: dict) -> str:
    if "error" in result:
        return result["error"][:40]
    peak = f", {result['peak_gib']:.1f} GiB" if result.get("peak_gib") is not None else ""
    return f"{result['seconds']:.3f} s{peak}"


def kernel_report() -> dict:
    """The attention kernels ``auto`` chose per shape class, and those it could not use with the reason."""
    return {"attention_kernels": sdpa.chosen_kernels(), "attention_refused": sdpa.refused_kernels()}


def ratios(official: dict, ours: dict) -> dict:
    """Official time (memory) over ours for every size both measured: {size: {full_time_ratio: .., ...}}."""
    out = {}
    for key, mine in ours.items():
        theirs = official.get(key)
        if not isinstance(theirs, dict):
            continue
        entry = {}
        for part in ("full", "aggregator"):
            if "seconds" in mine.get(part, {}) and "seconds" in theirs.get(part, {}):
                entry[f"{part}_time_ratio"] = round(theirs[part]["seconds"] / mine[part]["seconds"], 2)
                if mine[part].get("peak_gib"):
                    entry[f"{part}_memory_ratio"] = round(theirs[part]["peak_gib"] / mine[part]["peak_gib"], 2)
        out[key] = entry
    return out


def run_gpu(args, save: Callable[[dict], None] = lambda record: None) -> dict:
    """The GPU part; ``save(record)`` is called with the partial record after every measured size."""
    device = args.device or "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("geometry_bench --gpu: no CUDA device")
    sdpa.set_policy(args.attention)
    config = ModelConfig.load(args.model)
    sizes = GPU_SIZES                                                        # (frames, height, width)
    if args.sizes:                                                           # FRAMESxWIDTHxHEIGHT,...
        sizes = [(int(f), int(h), int(w)) for f, w, h in (s.split("x") for s in args.sizes.split(","))]
    record: dict = {"model": config.name, "attention": args.attention, "head_precision": args.head_precision}
    root = official_path(args.official)
    state = None
    if root is None:
        record["official"] = "not run: the official checkout was not found (pass --official or set $PAGE4D_OFFICIAL)"
        print(record["official"])
    else:
        record["official_path"] = str(root)
        print(f"official code: {root}")
        record["official"], state = bench_official(root, config, sizes, device, args.repeats,
                                                   lambda results: save({**record, "official": results}))
    head_dtype = torch.bfloat16 if args.head_precision == "bfloat16" else torch.float32
    model = build_ours(config, state, device, head_dtype)
    del state
    record["ours"] = bench_ours(model, sizes, device, args.repeats,
                               lambda results: save({**record, "ours": results, **kernel_report()}))
    record.update(kernel_report())
    save(record)
    if args.long_frames:
        width, height = (int(v) for v in args.long_size.split("x"))
        record["windowed"] = bench_windowed(model, args.long_frames, height, width, args.window, args.overlap, device)
        print(f"  windowed {args.long_frames} frames at {args.long_size}: {record['windowed']['seconds']:.1f} s "
              f"({record['windowed']['windows']} windows)")
    return record


def demo_frames(count: int) -> tuple[list[np.ndarray], str]:
    try:
        from pipeline.scene import load_scene
        from pipeline.scene.config import SceneConfig

        scene = load_scene(SceneConfig(source="demo"))
        frames = scene.frames[:count]
        if len(frames) == count:
            return [scene.rgb(f) for f in frames], f"demo scene {scene.name} ({frames[0].width}x{frames[0].height})"
    except Exception as err:  # the demo scene is another stage's work: fall back to random frames
        print(f"demo scene not available ({type(err).__name__}: {err}); using random frames")
    rng = np.random.default_rng(0)
    return [rng.random((144, 256, 3), dtype=np.float32) for _ in range(count)], "48 random frames at 256x144"


def load_tiny() -> tuple[PAGE4D, str, bool]:
    """page4d-tiny with the bundled weights: (model, description, mask head trained); random weights where absent."""
    from stages.geometry.page4d.checkpoint import BUNDLED, load_model

    if BUNDLED["page4d-tiny"].is_file():
        model, info = load_model("page4d-tiny", "", "auto", "cpu", allow_download=False)
        return model, f"page4d-tiny ({Path(info.path).name})", info.mask_supervised
    return build_ours(ModelConfig.load("page4d-tiny"), None, "cpu", torch.float32), "page4d-tiny (random weights)", \
        False


def run_cpu(args) -> dict:
    """page4d-tiny on 48 demo frames as the geometry stage runs it (the model's own windows, masks from consistency
    and the mask head), then the network alone against the number of frames."""
    from stages.geometry.consistency import ConsistencyParams, dynamic_masks

    torch.set_num_threads(args.threads)
    model, described, mask_head = load_tiny()
    model = prepare_model(model, "cpu", torch.float32)
    config = model.config
    images, source = demo_frames(48)
    timings = {}
    start = time.perf_counter()
    prepared = prepare_frames(images, "crop", config.input_width, config.patch_size)
    timings["preprocess_s"] = time.perf_counter() - start
    predictor = Predictor(model, "cpu", ("camera", "depth"), want_mask_score=mask_head)
    predictor(prepared.batch(slice(0, 2)))                                   # warm-up
    window = config.window
    overlap = max(2, window // 5) if window < len(images) else 0           # as the geometry stage chooses
    start = time.perf_counter()
    pred = predict_sequence(predictor, prepared, window, overlap, show_progress=False)
    timings["network_s"] = time.perf_counter() - start
    start = time.perf_counter()
    head_probability = None
    if mask_head and pred.mask_score is not None:
        score = torch.from_numpy(pred.mask_score)[:, None] + 0.5             # (S, 1, h/p, w/p)
        head_probability = torch.nn.functional.interpolate(score, size=pred.depth.shape[1:], mode="bilinear",
                                                           align_corners=False)[:, 0].numpy()
    dynamic_masks(pred.depth, pred.intrinsics, pred.world_to_camera, ConsistencyParams(), pred.depth_conf,
                  head_probability)
    timings["masks_s"] = time.perf_counter() - start
    timings["total_s"] = sum(timings.values())
    print(f"{described}, {source}, input {prepared.net_size[0]}x{prepared.net_size[1]}, windows of {window}, "
          f"{args.threads} threads: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), flush=True)
    sweep = []
    for frames in args.cpu_sweep:                                            # cost against the number of frames
        order = [i % (2 * len(images)) for i in range(frames)]               # 0..47, 47..0, 0.. (back and forth)
        order = [i if i < len(images) else 2 * len(images) - 1 - i for i in order]
        subset = PreparedFrames(prepared.images[order], [prepared.mappings[i] for i in order], prepared.mode,
                                prepared.squash_to)
        start = time.perf_counter()
        predict_sequence(predictor, subset, window, max(2, window // 5) if window < frames else 0,
                         show_progress=False)
        sweep.append({"frames": frames, "network_s": round(time.perf_counter() - start, 3)})
        print(f"  network on {frames} frames: {sweep[-1]['network_s']:.2f} s", flush=True)
    return {"model": described, "frames": len(images), "input": source,
            "network_size": list(prepared.net_size), "threads": args.threads, "window": window, "overlap": overlap,
            "timings": {k: round(v, 3) for k, v in timings.items()}, "target_s": 15.0,
            "meets_target": timings["total_s"] <= 15.0, "frames_sweep": sweep,
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--gpu", action="store_true", help="the H100 benchmark")
    group.add_argument("--cpu", action="store_true", help="page4d-tiny on 48 frames on the CPU")
    parser.add_argument("--official", help="official PAGE4D checkout (default: $PAGE4D_OFFICIAL)")
    parser.add_argument("--model", default="page4d-1b", help="model config for --gpu (name or path)")
    parser.add_argument("--sizes", default="", help="FRAMESxWIDTHxHEIGHT,... (default: 50/100/200 at 518x518, "
                                                    "100 at 518x294)")
    parser.add_argument("--long-frames", type=int, default=1000, help="frames of the windowed run (0 = skip)")
    parser.add_argument("--long-size", default="518x294", help="WIDTHxHEIGHT of the windowed run")
    parser.add_argument("--window", type=int, default=100, help="frames per window of the windowed run")
    parser.add_argument("--overlap", type=int, default=20, help="overlap of the windowed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention", default="auto", choices=sdpa.POLICIES)
    parser.add_argument("--head-precision", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="", help="override the device (smoke tests)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for --cpu")
    parser.add_argument("--json", default="")
    parser.add_argument("--cpu-sweep", type=lambda text: [int(v) for v in text.split(",") if v], default="16,32,48,96",
                        help="--cpu: frame counts of the network-only sweep (comma-separated; '' = none)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sizes an earlier run wrote to the same JSON (a sweep split over several calls)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if args.gpu else "cpu")
    out = Path(args.json or f"bench/results/geometry{'' if args.gpu else '_cpu'}.json")
    header = {"benchmark": "geometry", "part": "gpu" if args.gpu else "cpu",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m bench.geometry_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": device_name(device), "versions": versions(), "environment": environment(device)}

    previous = json.loads(out.read_text()) if args.merge and out.is_file() else {}
    if previous and previous.get("device") != header["device"]:
        # Sizes measured on another GPU kind are not comparable with this call's: start a fresh file instead.
        print(f"--merge: {out} was measured on {previous.get('device')}, this call runs on {header['device']}; "
              "its sizes are not kept", file=sys.stderr)
        previous = {}

    def save(record: dict, complete: bool = False) -> None:
        merged = {**header, **record, "complete": complete}
        for part in ("official", "ours"):                                    # --merge: earlier sizes stay
            old, new = previous.get(part), record.get(part)
            if isinstance(old, dict):
                merged[part] = {**old, **new} if isinstance(new, dict) else old
        if isinstance(merged.get("official"), dict) and isinstance(merged.get("ours"), dict):
            merged["speedup"] = ratios(merged["official"], merged["ours"])   # every size measured by both
        for part in ("attention_kernels", "attention_refused"):              # kernels chosen by every call
            if isinstance(previous.get(part), dict):
                merged[part] = {**previous[part], **record.get(part, {})}
        if "windowed" in previous and "windowed" not in record:
            merged["windowed"] = previous["windowed"]
        if previous:
            merged["merged_with"] = previous.get("merged_with", []) + [previous.get("command")]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=2) + "\n")
        tmp.replace(out)                                                     # a reader never sees half a file

    record = run_gpu(args, save) if args.gpu else run_cpu(args)
    save(record, complete=True)
    record = json.loads(out.read_text())                                     # with the sizes of earlier calls
    print(f"wrote {out}")
    if args.gpu and "speedup" in record:
        def cell(value) -> str:
            return "-" if value is None else f"{value:g}"

        print(f"\n{'full model':<14} {'official s':>10} {'ours s':>8} {'ratio':>6} {'official GiB':>12} "
              f"{'ours GiB':>9}")
        for key, ours in record["ours"].items():
            theirs = record["official"].get(key, {}).get("full", {}) if isinstance(record["official"], dict) else {}
            print(f"{key:<14} {cell(theirs.get('seconds')):>10} {cell(ours['full'].get('seconds')):>8} "
                  f"{cell(record['speedup'].get(key, {}).get('full_time_ratio')):>6} {cell(theirs.get('peak_gib')):>12} "
                  f"{cell(ours['full'].get('peak_gib')):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
