"""Optimize-stage benchmarks: training speed, time to optimize a scene, render speed, memory, quality.

    python -m bench.optimize_bench --gpu                    # H100: writes bench/results/optimize.json
    python -m bench.optimize_bench --gpu --only speed,render
    python -m bench.optimize_bench --gpu --only quality --seeds 0 1 2 --geometry oracle
    python -m bench.optimize_bench --cpu                    # the CPU demo: bench/results/optimize_cpu.json

GPU sections (each prints a table; a speed figure always sits beside its baseline measured in the same run):
- speed: optimization iterations per second at 400x400 with 100k Gaussians (all dynamic) for every deformation
  model, the full training step (render, L1 + D-SSIM, regularisers, Adam, densification statistics); baselines: the
  static model ('none') and gsplat's rasterization forward + backward alone on the same Gaussians. Peak memory.
- scene: wall time of the optimize stage on a 100-frame 400x400 synthetic `object` scene (configs/dnerf.yaml, oracle
  geometry), with its held-out PSNR and peak memory (target: <= 120 s).
- render: frames per second at 800x800 with 100k Gaussians including the deformation, for every model; baseline:
  the static model.
- quality: `object` scenes (D-NeRF-like: 50 monocular training views at random viewpoints, one per time, 20 test
  views at new viewpoints, 200x200) and `room` scenes (handheld video, every 8th frame held out), several seeds,
  every deformation model and the static baseline: PSNR (8-bit), SSIM (3DGS and valid conventions), LPIPS-alex
  (standard, inputs in [-1, 1]) on the test views with dataset cameras; optimize time; Gaussian count.
  Targets: object >= 25.5 dB within 140 s; each deformation model >= 5 dB above 'none'.
Scenes come from ``pipeline.synthetic`` (``page4dgs make-scene``); where it is missing, the scene sections say so
and are skipped.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np
import torch

from stages.optimize.config import DEFORMATIONS, OptimizeConfig
from stages.optimize.trainer import InitialGaussians, TrainData, TrainView, build_model, train

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("bases", "mlp", "planes", "none")
MiB = 2**20


# ----------------------------------------------------------------------------------------------------------------
# helpers


def environment(device: str) -> dict[str, Any]:
    import importlib

    from bench import common

    out = {**common.environment(device),                # driver, git commit, host (bench/common.py)
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "bench.optimize_bench", *sys.argv[1:]]),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
           "device": torch.cuda.get_device_name(0) if device == "cuda" else
           f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"}
    for name in ("gsplat", "numpy"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:
            out[name] = "missing"
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def look_at(eye: np.ndarray) -> np.ndarray:
    from pipeline.cameras import look_at_w2c

    return look_at_w2c(eye, np.zeros(3))


def orbit_views(n: int, size: int, device: str, seed: int = 0, with_images: bool = True) -> list[TrainView]:
    """n cameras on a sphere of radius 4 looking at the origin (field of view 0.69 rad), times evenly in [0, 1],
    random target images (their content does not change the cost of a step)."""
    from pipeline.cameras import intrinsics_from_fov

    rng = np.random.default_rng(seed)
    K = torch.tensor(intrinsics_from_fov(0.69, size, size), dtype=torch.float32, device=device)
    views = []
    for i in range(n):
        az, el = rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 1.0)
        eye = 4.0 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        image = torch.rand(size, size, 3, device=device) if with_images else torch.zeros(1, 1, 3, device=device)
        views.append(TrainView(name=f"v{i}", time=i / max(n - 1, 1),
                               world_to_camera=torch.tensor(look_at(eye), dtype=torch.float32, device=device),
                               K=K, width=size, height=size, image=image))
    return views


def random_gaussians(n: int, dynamic_fraction: float = 1.0, seed: int = 0) -> InitialGaussians:
    """n Gaussians in a ball of radius 1 (the scale of a D-NeRF object), 1 cm to 3 cm, opacity 0.5."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    means = direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.uniform(0, 1, size=(n, 1)) ** (1 / 3)
    return InitialGaussians(means=means, sh=rng.normal(scale=0.5, size=(n, 1, 3)),
                            opacity_logits=np.zeros(n), log_scales=np.log(rng.uniform(0.01, 0.03, size=(n, 3))),
                            quats=rng.normal(size=(n, 4)), is_dynamic=rng.uniform(size=n) < dynamic_fraction,
                            anchor_times=rng.uniform(size=n))


def perturb_deformation(model) -> None:
    """Networks start at zero motion; give them random output weights so that timings see real motion."""
    if model.deformation is None:
        return
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.deformation.named_parameters():
            path = name.split(".")                     # e.g. 'out.weight', 'planes.out.bias'; the bases: 'control'
            if len(path) >= 2 and path[-2] == "out":   # the networks' output layer (planes_bases: planes.out.*)
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        for key in model.deformation.per_gaussian_shapes():
            model.splats[key].copy_(torch.randn(model.splats[key].shape, generator=gen).to(model.device) * 0.01)


# ----------------------------------------------------------------------------------------------------------------
# speed


def gsplat_step_rate(gaussians: InitialGaussians, views: list[TrainView], device: str, steps: int) -> float:
    """Iterations per second of rasterization forward + L1 backward alone (the floor of a training step)."""
    from stages.optimize.rasterize import rasterization

    t = {k: torch.as_tensor(np.asarray(getattr(gaussians, k)), dtype=torch.float32, device=device).requires_grad_(True)
         for k in ("means", "quats", "opacity_logits", "log_scales", "sh")}

    def step(i: int) -> None:     # classic rasterization, as every preset trains (rasterize_mode is not timed)
        v = views[i % len(views)]
        colors, _, _ = rasterization(t["means"], t["quats"], t["log_scales"].exp(), torch.sigmoid(t["opacity_logits"]),
                                     t["sh"], v.world_to_camera[None], v.K[None], v.width, v.height, sh_degree=0,
                                     backend="auto")
        (colors[0] - v.image).abs().mean().backward()

    for i in range(10):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return steps / (time.perf_counter() - start)


def speed_config(kind: str, iterations: int, **overrides) -> OptimizeConfig:
    """The training configuration of the speed section (and of bench/profile_optimize.py, bench/optimize_ops.py):
    SH degree 3 from step 3, no densification (the count stays fixed), no checkpoint before the end."""
    settings = dict(deformation=kind, iterations=iterations, sh_degree=3, sh_degree_interval=1, densify=False,
                    checkpoint_every=0, backend="auto")
    return OptimizeConfig(**{**settings, **overrides})


def own_render_views(cfg: OptimizeConfig, gaussians: InitialGaussians, views: list[TrainView], device: str,
                     noise: float = 0.02, seed: int = 0) -> list[TrainView]:
    """``views`` with each image replaced by the render of the model training starts from (at the view's time, on
    the trainer's white background) plus Gaussian noise of standard deviation ``noise`` (mean zero, not clipped).

    A step then fits residuals without a trend, so the Gaussians keep their size and opacity over the timed steps
    and every model is timed on the state it starts from. On random targets they kept growing instead: a CPU replay
    of the speed setting (bases, 100 views) measured 46k tile intersections per view at step 0, 73k at step 400.
    """
    from dataclasses import replace

    from stages.optimize.trainer import median_time_gap

    times = [v.time for v in views]
    model = build_model(cfg, gaussians, median_time_gap(times), len(np.unique(np.round(times, 9))),
                        torch.device(device))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    with torch.no_grad():
        for v in views:
            rgb = model.render(v.world_to_camera, v.K, v.width, v.height, v.time, backend=cfg.backend)["rgb"]
            out.append(replace(v, image=rgb + noise * torch.randn(rgb.shape, generator=gen).to(rgb.device)))
    return out


def visible_per_view(model, views: list[TrainView], backend: str) -> dict[str, float]:
    """Mean over ``views`` of the Gaussians that survive the rasterizer's culling (opacity >= 1/255, temporal
    opacity included, in the frustum), of the dynamic ones among them, and, for gsplat, of their tile intersections:
    the rasterizer's work. ``views``: objects with time, world_to_camera (4, 4), K (3, 3), width and height."""
    visible, dynamic, isects = [], [], []
    is_dynamic = model.splats["is_dynamic"].bool() if "is_dynamic" in model.splats else None
    with torch.no_grad():
        for v in views:
            _, _, meta = model.rasterize(v.time, v.world_to_camera[None], v.K[None], v.width, v.height,
                                         backend=backend)
            seen = (meta["radii"] > 0).all(-1)[0]                                           # (N,)
            visible.append(float(seen.sum()))
            if is_dynamic is not None and seen.shape == is_dynamic.shape:
                dynamic.append(float((seen & is_dynamic).sum()))
            if meta.get("isect_ids") is not None:
                isects.append(float(meta["isect_ids"].numel()))
    return {"visible_per_view": round(statistics.mean(visible)),
            "dynamic_visible_per_view": round(statistics.mean(dynamic)) if dynamic else None,
            "tile_intersections_per_view": round(statistics.mean(isects)) if isects else None}


# Training-step variants the speed section times side by side: the optimize config each one sets.
SPEED_VARIANTS = {
    "eager": {"compile": "never", "skip_invisible": True, "cuda_graphs": False,      # eager throughout (the
              "photometric_graphs": "never"},                                       # default until 2026-11-30)
    "eager-deform-all": {"compile": "never", "skip_invisible": False, "cuda_graphs": False,   # deform all
                         "photometric_graphs": "never"},
    "eager-loss-graphs": {"compile": "never", "skip_invisible": True, "cuda_graphs": False,   # the default: the
                          "photometric_graphs": "cuda"},                    # loss replayed as CUDA graphs
    "compiled": {"compile": "always", "skip_invisible": True, "cuda_graphs": False},   # torch.compile (inductor)
    "compiled-deform-all": {"compile": "always", "skip_invisible": False, "cuda_graphs": False},
    "compiled-graphs": {"compile": "always", "skip_invisible": False, "cuda_graphs": True},   # CUDA graphs replayed
    "compiled-graphs-bf16": {"compile": "always", "skip_invisible": False, "cuda_graphs": True,   # + mlp in bf16
                             "mlp_bf16": True},
    "compiled-graphs-torch-adam": {"compile": "always", "skip_invisible": False, "cuda_graphs": True,   # baseline:
                                   "lean_adam": False},                      # torch.optim.Adam(fused=True)
}


def training_rate(kind: str, gaussians: InitialGaussians, views: list[TrainView], device: str, warmup: int,
                  steps: int, workdir: Path, sh_degree: int = 3, window: Optional[int] = None,
                  variant: str = "eager-loss-graphs") -> dict[str, Any]:
    """Iterations per second of the full training step, from the trainer's own log: the ``steps`` after ``warmup``
    divided by the wall time they took (log.csv 'seconds' is the cumulative training time at each flush, which
    excludes set-up and checkpoint writing). The targets are the model's own renders (:func:`own_render_views`).

    Also the rate of each ``window`` steps (default ``warmup``) of the timed part, so that a drift shows, the
    rasterizer's work per view at the end (:func:`visible_per_view`), and ``warmup_s``, the training seconds of the
    warm-up steps (for the "compiled" variant they include torch.compile's compilation). ``variant``: a key of
    :data:`SPEED_VARIANTS`."""
    window = window or warmup
    cfg = speed_config(kind, warmup + steps, sh_degree=sh_degree, log_every=window, **SPEED_VARIANTS[variant])
    views = own_render_views(cfg, gaussians, views, device)
    if cfg.compile != "never":
        # Every run compiles afresh: dynamo's cache of a function is shared by all runs of the process, and after
        # torch._dynamo.config.recompile_limit (8) guards on one function (a sweep of compiled variants x models
        # reaches it) the function silently runs eager, which would time later rows on another code path.
        torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = workdir / f"speed_{kind}"
    shutil.rmtree(out, ignore_errors=True)
    result = train(cfg, TrainData(views=views), gaussians, out, device=device, resume=False)
    import csv

    rows = list(csv.DictReader(open(out / "log.csv")))
    seconds = {int(r["step"]) + 1: float(r["seconds"]) for r in rows}       # steps done -> training seconds
    marks = [m for m in sorted(seconds) if m >= warmup and (m % window == 0 or m == cfg.iterations)]   # flushes
    rate = (marks[-1] - marks[0]) / (seconds[marks[-1]] - seconds[marks[0]])
    windows = [(b - a) / (seconds[b] - seconds[a]) for a, b in zip(marks, marks[1:])]
    print(f"speed: {kind:6s} {variant:20s} {rate:7.1f} it/s  (warm-up {seconds[marks[0]]:.1f} s, "
          f"{result.restores} restores)", flush=True)
    return {"model": kind, "variant": variant, **SPEED_VARIANTS[variant], "it_per_s": round(rate, 1),
            "warmup_s": round(seconds[marks[0]], 2), "restores": result.restores,
            "gaussians": result.model.num_gaussians(),
            "window_it_per_s": [round(w, 1) for w in windows],
            **visible_per_view(result.model, views[:: max(1, len(views) // 8)], cfg.backend),
            "peak_mib": round(torch.cuda.max_memory_allocated() / MiB) if device == "cuda" else None}


def bench_speed(device: str, workdir: Path, quick: bool, n: int = 100_000, size: int = 400, n_views: int = 100,
                steps: Optional[tuple[int, int]] = None, variants: tuple[str, ...] = tuple(SPEED_VARIANTS),
                models: tuple[str, ...] = MODELS, repeats: int = 1) -> dict[str, Any]:
    """Training it/s of every model in each of ``variants`` (:data:`SPEED_VARIANTS`), and the rasterization floor;
    ``steps`` (warm-up, timed) overrides the defaults (1000 timed after 100, ``quick``: 200 after 50), e.g. for a
    small CPU run of the section. "x static" compares with the static model of the same variant.

    ``repeats`` > 1 runs the whole sweep (every variant, every model) that many times in turn, so that a drift of
    the host over the call spreads over all rows instead of favouring the first ones; a row's it/s is then the
    median of its runs (``it_per_s_runs`` lists them all, in order)."""
    gaussians = random_gaussians(n, dynamic_fraction=1.0)
    views = orbit_views(n_views, size, device)
    warmup, timed = steps or ((50, 200) if quick else (100, 1000))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(max(1, repeats)):
        for variant in variants:
            for kind in models:
                runs.setdefault((variant, kind), []).append(
                    training_rate(kind, gaussians, views, device, warmup, timed, workdir, variant=variant))
    rows = []
    for samples in runs.values():
        rates = [r["it_per_s"] for r in samples]
        rows.append({**samples[0], "it_per_s": round(statistics.median(rates), 1), "it_per_s_runs": rates,
                     "restores": sum(r["restores"] for r in samples)})
    floor = gsplat_step_rate(gaussians, views, device, timed)
    for r in rows:
        base = next((b for b in rows if b["model"] == "none" and b["variant"] == r["variant"]), None)
        r["vs_static"] = round(r["it_per_s"] / base["it_per_s"], 3) if base else None
    table(f"Training speed, {n} Gaussians (all dynamic), {size}x{size}, SH degree 3, batch 1, targets: each model's "
          f"own render + noise (rasterization fwd+bwd alone: {floor:.1f} it/s)",
          ["model", "variant", "it/s" if repeats <= 1 else "it/s (median)", "runs", "x static", "warm-up s (first)",
           "slowest/fastest window (first)", "visible/view", "peak MiB", "NaN restores"],
          [[r["model"], r["variant"], r["it_per_s"], "/".join(f"{x:g}" for x in r["it_per_s_runs"]), r["vs_static"],
            r["warmup_s"],
            f"{min(r['window_it_per_s']):.1f}/{max(r['window_it_per_s']):.1f}" if r["window_it_per_s"] else "-",
            r["visible_per_view"], r["peak_mib"], r["restores"]] for r in rows])
    return {"gaussians": n, "resolution": [size, size], "dynamic_fraction": 1.0, "sh_degree": 3,
            "warmup_steps": warmup, "timed_steps": timed, "targets": "own render + N(0, 0.02) noise",
            "rasterization_only_it_per_s": round(floor, 1), "repeats": max(1, repeats), "models": rows,
            "target_it_per_s": 150}


# ----------------------------------------------------------------------------------------------------------------
# render


def bench_render(device: str, quick: bool, models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    """Rendering fps at 800x800 of each deformation model in ``models`` (the static one always, as the baseline)."""
    n, size, frames = 100_000, 800, (100 if quick else 300)
    gaussians = random_gaussians(n, dynamic_fraction=1.0)
    views = orbit_views(frames, size, device, with_images=False)
    rows = []
    for kind in dict.fromkeys([*models, "none"]):
        model = build_model(OptimizeConfig(deformation=kind, sh_degree=3), gaussians, 0.01, 100, torch.device(device))
        perturb_deformation(model)
        model.eval()
        with torch.no_grad():
            for v in views[:10]:
                model.render(v.world_to_camera, v.K, size, size, v.time)
            sync(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for v in views:
                model.render(v.world_to_camera, v.K, size, size, v.time)
            sync(device)
            elapsed = time.perf_counter() - start
        rows.append({"model": kind, "fps": round(frames / elapsed, 1),
                     "peak_mib": round(torch.cuda.max_memory_allocated() / MiB) if device == "cuda" else None})
        del model
    base = next(r for r in rows if r["model"] == "none")["fps"]
    for r in rows:
        r["vs_static"] = round(r["fps"] / base, 3)
    table(f"Rendering {size}x{size}, {n} Gaussians (all dynamic), RGB + depth, SH degree 3",
          ["model", "fps", "x static", "peak MiB"],
          [[r["model"], r["fps"], r["vs_static"], r["peak_mib"]] for r in rows])
    return {"gaussians": n, "resolution": [size, size], "frames": frames, "models": rows, "target_fps": 300}


# ----------------------------------------------------------------------------------------------------------------
# scenes


def synthetic_available() -> Optional[str]:
    try:
        import pipeline.synthetic.writer  # noqa: F401
    except ImportError as err:
        return f"pipeline.synthetic is not available ({err}); scene sections skipped"
    return None


def make_object(out: Path, seed: int, frames: int, resolution: int, test_views: int) -> Path:
    from dataclasses import replace

    from pipeline.synthetic.writer import ObjectSceneOptions, make_object_scene

    if not (out / "transforms_train.json").exists():
        options = replace(ObjectSceneOptions(), frames=frames, resolution=resolution, test_views=test_views)
        make_object_scene(out, seed, options)
    return out


def make_room(out: Path, seed: int, frames: int, width: int) -> Path:
    from dataclasses import replace

    from pipeline.synthetic.writer import RoomSceneOptions, make_room_scene

    if not (out / "transforms_train.json").exists():
        make_room_scene(out, seed, replace(RoomSceneOptions(), frames=frames, width=width))
    return out


def run_scene(scene_dir: Path, run_dir: Path, preset: str, overrides: list[str]) -> dict[str, Any]:
    """geometry -> initialize -> optimize through the real runner; then test-view metrics from the model."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.scene import load_scene

    config = load_config(preset, [f"scene.source={scene_dir}", *overrides])
    config.scene.source = str(scene_dir)
    scene = load_scene(config.scene)
    shutil.rmtree(run_dir, ignore_errors=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results = run_pipeline(config, run_dir, scene, until_stage="optimize")
    # Whether this process has imported the compiler by now (seconds on a fresh host; stages/optimize/fused_adam.py):
    # the stages' doing only in a fresh `--only scene` call without --import-compiler
    dynamo_imported = "torch._dynamo" in sys.modules
    metrics = test_metrics(run_dir, scene, device)
    optimize = results["optimize"]
    return {"geometry_s": results["geometry"]["wall_s"], "initialize_s": results["initialize"]["wall_s"],
            "optimize_s": optimize["wall_s"], "train_s": optimize["summary"].get("train_seconds"),
            "load_s": optimize["summary"].get("load_seconds"), "save_s": optimize["summary"].get("save_seconds"),
            "setup_s": optimize["summary"].get("setup_seconds"),
            "setup_parts_s": optimize["summary"].get("setup_parts"),
            "checkpoint_s": optimize["summary"].get("checkpoint_seconds"),
            "gaussians": optimize["summary"]["gaussians"], "train_psnr": optimize["summary"]["train_psnr"],
            "peak_gpu_mib": optimize.get("peak_gpu_mb"), "deformation": config.optimize.deformation,
            "opacity_weighting": optimize["summary"].get("opacity_weighting"),
            "rate_windows": training_windows(run_dir / "optimize/log.csv"), "torch_dynamo_in_process": dynamo_imported,
            **metrics}


def training_windows(log_path: Path, window: int = 1000) -> list[dict[str, Any]]:
    """Where a run's training time went, from its ``log.csv`` (one row per step; ``seconds`` is the training time
    when that step's row was flushed, rows flushed together share it): for each ``window`` steps, the steps per
    second and the Gaussian count at its end. A window ends at the flush that completes its last step (or the
    last flush), so its rate counts exactly the steps between two flushes; the first flush (warm-up) only starts
    the first window. [] when the log is missing or has fewer than two flushes."""
    if not log_path.is_file():
        return []
    with log_path.open(newline="", encoding="utf-8") as f:
        rows = [(int(r["step"]), float(r["seconds"]), int(float(r["gaussians"]))) for r in csv.DictReader(f)]
    flushes: dict[float, tuple[int, int]] = {}
    for step, seconds, count in rows:                      # the last step of each flush
        flushes[seconds] = (step, count)
    marks = [(step, seconds, count) for seconds, (step, count) in flushes.items()]   # in step order
    windows, start = [], marks[0] if marks else None
    for mark in marks[1:]:                                 # steps s count as done after row s: s + 1
        if (mark[0] + 1) // window > (start[0] + 1) // window or mark is marks[-1]:
            steps, seconds = mark[0] - start[0], mark[1] - start[1]
            if steps > 0 and seconds > 0:
                windows.append({"from_step": start[0], "to_step": mark[0], "steps_per_s": round(steps / seconds, 2),
                                "gaussians": mark[2]})
            start = mark
    return windows


def test_metrics(run_dir: Path, scene, device: str) -> dict[str, Any]:
    """PSNR (8-bit), SSIM (3DGS and valid), LPIPS-alex (standard) over the test views, dataset cameras."""
    from stages.evaluate.image_metrics import psnr, quantize_8bit, ssim_3dgs, ssim_valid
    from stages.initialize.geometry_io import read_cameras
    from stages.optimize.model import load_model

    try:
        from stages.evaluate.lpips_metric import get_lpips

        lpips = get_lpips("alex", device)
    except Exception as err:                      # weights missing on an offline host
        print(f"  (LPIPS unavailable: {type(err).__name__}: {err})")
        lpips = None
    model = load_model(run_dir / "optimize/model.pt", device)
    cameras, source = read_cameras(run_dir / "geometry/cameras.json")
    per_view = []
    with torch.no_grad():
        for cam in (c for c in cameras if c.split == "test"):
            out = model.render(cam.world_to_camera, cam.K, cam.width, cam.height, cam.time,
                               background=scene.background)
            render = quantize_8bit(out["rgb"].cpu().numpy())
            target = scene.rgb(scene.frame(cam.name))
            per_view.append({"psnr": psnr(render, target), "ssim_3dgs": ssim_3dgs(render, target),
                             "ssim_valid": ssim_valid(render, target),
                             "lpips_alex": lpips(render, target) if lpips is not None else math.nan})
    mean = {k: float(np.mean([v[k] for v in per_view])) for k in per_view[0]}
    as_tensor = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)       # noqa: E731
    test_views = [SimpleNamespace(time=c.time, width=c.width, height=c.height,
                                  world_to_camera=as_tensor(c.world_to_camera), K=as_tensor(c.K))
                  for c in cameras if c.split == "test"]
    return {**mean, "test_views": len(per_view), "cameras": source,
            **visible_per_view(model, test_views, "auto")}             # the rasterizer's work per view


def bench_scene_time(workdir: Path, geometry: str, quick: bool, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The issue's 100-frame 400x400 object scene through geometry, initialize and optimize with the dnerf preset
    (``overrides``: config ``KEY=VALUE`` on top, recorded), timed alone."""
    missing = synthetic_available()
    if missing:
        print(f"\n[scene] {missing}")
        return {"skipped": missing}
    frames = 30 if quick else 100
    scene = make_object(workdir / f"object_{frames}x400", seed=0, frames=frames, resolution=400, test_views=20)
    row = run_scene(scene, workdir / "run_object_400", "dnerf", [f"geometry.model={geometry}", *overrides])
    table(f"Optimize a {frames}-frame 400x400 synthetic object scene (configs/dnerf.yaml, {geometry} geometry)",
          ["optimize s", "train s", "set-up s", "checkpoints s", "gaussians", "test PSNR", "peak MiB",
           "visible / view (dynamic)"],
          [[row["optimize_s"], row["train_s"], row.get("setup_s"), row.get("checkpoint_s"), row["gaussians"],
            row["psnr"], row["peak_gpu_mib"],
            f"{row.get('visible_per_view')} ({row.get('dynamic_visible_per_view')})"]])
    if row.get("setup_parts_s"):
        parts = row["setup_parts_s"].items()
        print("set-up by phase: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in parts)
              + f"; torch._dynamo imported in this process: {row.get('torch_dynamo_in_process')}")
    return {"frames": frames, "resolution": 400, "preset": "dnerf", "geometry": geometry, "overrides": list(overrides),
            **row, "target_s": 120}


QUALITY_PROTOCOL = {"object": "50 monocular training views at random viewpoints (one per time), 20 test views at new "
                              "viewpoints and times, 200x200, white background, configs/dnerf.yaml",
                    "room": "48-frame 256x144 handheld video, every 8th frame held out, default config",
                    "psnr": "8-bit quantised render vs the stored image, per view then mean",
                    "ssim": "3DGS (zero padding, full map) and valid (skimage gaussian) conventions",
                    "lpips": "alex, inputs in [-1, 1]", "cameras": "dataset"}


def summarize_quality(runs: list[dict]) -> list[dict]:
    """Mean figures per (scene kind, model) over the runs that finished, in the order the runs came. The gain over
    the static baseline is paired: the mean over the seeds that both the model and ``none`` ran of their PSNR
    difference (``static_pair_seeds`` names them), so a model that ran on fewer seeds is not compared with another
    seed's baseline."""
    done = [r for r in runs if "psnr" in r]
    summary = []
    for kind, model in dict.fromkeys((r["scene"], r["model"]) for r in done):
        rows = [r for r in done if r["scene"] == kind and r["model"] == model]
        row = {"scene": kind, "model": model, "runs": len(rows),
               **{k: round(statistics.mean(r[k] for r in rows), 4)
                  for k in ("psnr", "ssim_3dgs", "ssim_valid", "lpips_alex", "optimize_s", "gaussians")}}
        static = {r["seed"]: r["psnr"] for r in done if r["scene"] == kind and r["model"] == "none"}
        pairs = [(r["psnr"] - static[r["seed"]], r["seed"]) for r in rows if r["seed"] in static]
        row["psnr_over_static"] = round(statistics.mean(d for d, _ in pairs), 3) if pairs else None
        row["static_pair_seeds"] = sorted(seed for _, seed in pairs)
        summary.append(row)
    return summary


def print_quality(summary: list[dict], what: str) -> None:
    table(f"Quality on held-out views ({what}); targets: object >= 25.5 dB within 140 s, each model >= +5 dB over "
          "'none' (paired by seed)",
          ["scene", "model", "runs", "PSNR", "dB vs none", "SSIM 3dgs", "SSIM valid", "LPIPS alex", "optimize s",
           "gaussians"],
          [[s["scene"], s["model"], s["runs"], s["psnr"], s["psnr_over_static"], s["ssim_3dgs"], s["ssim_valid"],
            s["lpips_alex"], s["optimize_s"], s["gaussians"]] for s in summary])


def merge_quality(parts: list[Path], note: str) -> dict[str, Any]:
    """One quality record from several results files of this script (e.g. one process per model, side by side on
    one GPU): their runs, finished or not, re-summarized; each part's environment is kept."""
    runs, sources, geometries = [], [], set()
    for path in parts:
        record = json.loads(path.read_text())
        quality = record.get("quality", {})
        runs += quality.get("runs", [])
        geometries.add(quality.get("geometry", ""))
        sources.append({"file": path.name, "command": record.get("environment", {}).get("command"),
                        "complete": quality.get("complete", True), "overrides": quality.get("overrides", [])})
    if not runs:
        raise ValueError("no quality runs in " + ", ".join(str(p) for p in parts))
    summary = summarize_quality(runs)
    print_quality(summary, f"merged from {len(parts)} files")
    return {"protocol": QUALITY_PROTOCOL, "geometry": "/".join(sorted(geometries)),
            "seeds": sorted({r["seed"] for r in runs}), "note": note, "sources": sources, "summary": summary,
            "runs": runs}


def bench_quality(workdir: Path, geometry: str, seeds: list[int], models: list[str], quick: bool,
                  save: Callable[[dict], None] = lambda partial: None, kinds_wanted: tuple[str, ...] = ("object", "room"),
                  extra_overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Held-out quality per scene kind, seed and model; ``save`` gets the finished runs after each one (a cut run
    keeps them)."""
    missing = synthetic_available()
    if missing:
        print(f"\n[quality] {missing}")
        return {"skipped": missing}
    runs = []
    kinds = {"object": lambda s: make_object(workdir / f"object_q{s}", s, 50, 200, 20),
             "room": lambda s: make_room(workdir / f"room_q{s}", s, 48, 256)}
    kinds = {k: v for k, v in kinds.items() if k in kinds_wanted}
    presets = {"object": ("dnerf", []), "room": ("default", [])}
    for kind, make in kinds.items():
        for seed in seeds:
            try:
                scene = make(seed)
            except Exception as err:
                print(f"[quality] could not make the {kind} scene (seed {seed}): {err}")
                continue
            for model in models:
                preset, extra = presets[kind]
                overrides = [f"geometry.model={geometry}", f"optimize.deformation={model}", *extra,
                             *extra_overrides]
                if quick:
                    overrides.append("optimize.iterations=500")
                try:
                    row = run_scene(scene, workdir / f"run_{kind}_{seed}_{model}", preset, overrides)
                except Exception:
                    traceback.print_exc()
                    row = {"error": traceback.format_exc(limit=3).splitlines()[-1]}
                runs.append({"scene": kind, "seed": seed, "model": model, **row})
                save({"geometry": geometry, "seeds": seeds, "overrides": list(extra_overrides), "runs": runs,
                      "complete": False})
                print(f"  {kind} seed {seed} {model}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
    summary = summarize_quality(runs)
    print_quality(summary, f"{geometry} geometry, dataset cameras, seeds {seeds}")
    return {"protocol": QUALITY_PROTOCOL, "geometry": geometry, "seeds": seeds, "overrides": list(extra_overrides),
            "summary": summary, "runs": runs}


# ----------------------------------------------------------------------------------------------------------------
# CPU: the demo's optimize stage


def bench_cpu_demo(workdir: Path) -> dict[str, Any]:
    """The optimize stage of the CPU demo (configs/demo.yaml on the demo scene, oracle geometry): wall time."""
    try:
        from pipeline.synthetic.demo import demo_scene_path
    except ImportError as err:
        return {"skipped": f"pipeline.synthetic is not available ({err})"}
    preset = "demo" if (Path(__file__).resolve().parents[1] / "configs/demo.yaml").exists() else "default"
    row = run_scene(demo_scene_path(), workdir / "run_demo", preset, ["geometry.model=oracle", "device=cpu"])
    table(f"CPU demo, optimize stage ({preset} preset, oracle geometry, {torch.get_num_threads()} threads)",
          ["initialize s", "optimize s", "gaussians", "test PSNR"],
          [[row["initialize_s"], row["optimize_s"], row["gaussians"], row["psnr"]]])
    return {"preset": preset, **row}


# ----------------------------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true")
    mode.add_argument("--cpu", action="store_true")
    parser.add_argument("--only", default="speed,render,scene,quality",
                        help="comma-separated sections (GPU): speed, render, scene, quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=DEFORMATIONS)
    parser.add_argument("--geometry", default="oracle", choices=("oracle", "page4d-tiny", "page4d-1b"),
                        help="geometry stage model for the scene sections")
    parser.add_argument("--quick", action="store_true", help="fewer steps/frames (smoke test of the script)")
    parser.add_argument("--kinds", nargs="+", default=["object", "room"], choices=("object", "room"),
                        help="quality: scene kinds")
    parser.add_argument("--merge-quality", nargs="+", type=Path, default=[], metavar="FILE",
                        help="no benchmark: merge the quality runs of these results files (bench/results/ names or "
                             "paths) into the quality section of --json (default optimize.json), keeping its other "
                             "sections")
    parser.add_argument("--note", default="", help="with --merge-quality: how the merged runs were made")
    parser.add_argument("--variants", nargs="+", default=list(SPEED_VARIANTS), choices=list(SPEED_VARIANTS),
                        help="speed section: training-step variants timed side by side (default all)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="speed section: run the whole sweep this many times in turn; each row's it/s is the "
                             "median (a host's drift over the call then spreads over every row)")
    parser.add_argument("--json", default="", help="results file name in bench/results (default optimize.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="quality and scene: a config override for every run, repeatable (a sweep: one call per "
                             "setting, each with its own --json)")
    parser.add_argument("--workdir", type=Path, default=None, help="scenes and runs (default: a temporary folder)")
    parser.add_argument("--import-compiler", action="store_true",
                        help="import torch._dynamo before any section (the stages no longer do): an A/B of whether "
                             "the import itself changes a training step's speed; recorded in the environment")
    args = parser.parse_args(argv)
    if args.import_compiler:
        importlib.import_module("torch._dynamo")     # (the A/B's point: its side effects, if any)
    if args.merge_quality:
        return merge_command(args)
    if not (args.gpu or args.cpu):
        parser.error("one of the arguments --gpu --cpu is required (or --merge-quality)")

    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("optimize_bench: --gpu needs CUDA", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="optimize_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    here = {**environment(device), "compiler_imported_up_front": args.import_compiler}
    result: dict[str, Any] = {"environment": here}
    print(json.dumps(result["environment"], indent=1))
    out = RESULTS / (args.json or ("optimize.json" if args.gpu else "optimize_cpu.json"))

    def write(record: dict) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, default=float) + "\n")

    sections: dict[str, Callable[[], dict]] = {
        "speed": lambda: bench_speed(device, workdir, args.quick, variants=tuple(args.variants),
                                     models=tuple(dict.fromkeys([*args.models, "none"])),
                                     repeats=args.repeats),
        "render": lambda: bench_render(device, args.quick, tuple(args.models)),
        "scene": lambda: bench_scene_time(workdir, args.geometry, args.quick, tuple(args.overrides)),
        "quality": lambda: bench_quality(workdir, args.geometry, args.seeds, args.models, args.quick,
                                         lambda partial: write({**result, "quality": partial}),
                                         tuple(args.kinds), tuple(args.overrides)),
    } if args.gpu else {"cpu_demo": lambda: bench_cpu_demo(workdir)}
    wanted = [s.strip() for s in args.only.split(",")] if args.gpu else list(sections)
    for name in wanted:
        if name not in sections:
            print(f"optimize_bench: unknown section '{name}' (sections: {', '.join(sections)})", file=sys.stderr)
            return 2
        start = time.perf_counter()
        try:
            result[name] = sections[name]()
        except Exception:
            traceback.print_exc()
            result[name] = {"error": traceback.format_exc(limit=4)}
        result[name]["section_seconds"] = round(time.perf_counter() - start, 1)
        write(result)                                                           # after every section
    print(f"\nwrote {out}")
    return 0


def merge_command(args: argparse.Namespace) -> int:
    parts = [p if p.is_file() else RESULTS / p for p in args.merge_quality]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        print(f"optimize_bench: results file not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = RESULTS / (args.json or "optimize.json")
    record = json.loads(out.read_text()) if out.is_file() else {}
    try:
        record["quality"] = merge_quality(parts, args.note)
    except (ValueError, KeyError, json.JSONDecodeError) as err:
        print(f"optimize_bench: cannot merge: {err}", file=sys.stderr)
        return 2
    out.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"\nwrote the quality section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
