"""Rasterizer benchmarks: CPU speed of the PyTorch backend; GPU parity with gsplat and GPU speed of both backends.

    python -m bench.rasterizer_bench --cpu [--repeats 9]    # -> bench/results/rasterizer_cpu.json
    python -m bench.rasterizer_bench --gpu                   # -> bench/results/rasterizer_gpu.json (needs CUDA)

CPU: forward and forward + backward at 256x144 with 20k Gaussians (the issue's target: <= 0.5 s on 2 cores) and two
other sizes, with 1 and 2 threads, min and median over repeats, beside a named baseline run in the same process:
the same backend with gsplat's binning (16x16 tiles, bounding-box tile lists). The load average is recorded with
each row, because a shared machine's other processes stretch wall times (2-thread runs suffer most: every op ends
in a barrier that waits for a descheduled thread).

GPU: (b) parity of our backend against gsplat.rasterization on the same random scenes (image / alpha max abs
difference, pixels above 1e-4, relative gradient errors for means, quats, scales, opacities, colours and means2d);
(c) speed of both backends at 400x400 with 100k Gaussians (forward + backward) and 800x800 (forward fps).
gsplat is imported and called only when CUDA is available. Every section catches its own errors, so a partial JSON
is still written. With $OUT set, the JSON is also copied there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import sys
import traceback
from pathlib import Path

import torch

from bench import common
from stages.optimize.rasterize import RasterSettings, gsplat_available, rasterization

RESULTS = Path(__file__).resolve().parent / "results"
# The gsplat-like work decomposition: its 16x16 tiles and bounding-box tile lists.
GSPLAT_LIKE = RasterSettings(tile_size=16, cull_tiles_exactly=False)


def random_scene(n: int, width: int, height: int, *, seed: int = 0, size_px: float = 1.5, n_cameras: int = 1,
                 sh_degree: int | None = None, device: str = "cpu"):
    """Gaussians spread uniformly over the view frustum of camera 0 (origin, looking down +z) at depths 2-8,
    random orientations, anisotropic scales with a projected standard deviation of about size_px pixels,
    opacities in [0.1, 0.9]. Extra cameras are shifted and turned a little. Returns the rasterization inputs."""
    g = torch.Generator().manual_seed(seed)
    fx = 0.9 * width
    z = torch.rand(n, generator=g) * 6 + 2
    x = (torch.rand(n, generator=g) * 2 - 1) * z * (0.55 * width / fx)
    y = (torch.rand(n, generator=g) * 2 - 1) * z * (0.55 * height / fx)
    means = torch.stack([x, y, z], -1)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.4) * (z * size_px / fx)[:, None]
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.2
        colors[:, 0] = (torch.rand(n, 3, generator=g) - 0.5) / 0.28209479177387814
    viewmats, Ks = [], []
    for c in range(n_cameras):
        angle = 0.04 * c
        view = torch.eye(4)
        view[:3, :3] = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                                     [-math.sin(angle), 0, math.cos(angle)]])
        view[:3, 3] = torch.tensor([0.1 * c, -0.05 * c, 0.1 * c])
        viewmats.append(view)
        Ks.append(torch.tensor([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1]]))
    tensors = [means, quats, scales, opacities, colors, torch.stack(viewmats), torch.stack(Ks)]
    return [t.to(device) for t in tensors]


def summary(times: list[float]) -> dict:
    return {"min_s": min(times), "median_s": statistics.median(times), "repeats": len(times)}


# ---------------------------------------------------------------------------------------------------------- CPU
CPU_CASES = [  # (width, height, n_gaussians, projected std in pixels)
    (256, 144, 20_000, 1.5),
    (128, 72, 5_000, 1.5),
    (400, 400, 100_000, 1.5),
]


def bench_cpu(repeats: int, quick: bool) -> dict:
    rows = []
    cases = CPU_CASES[:1] if quick else CPU_CASES
    for width, height, n, size_px in cases:
        inputs = random_scene(n, width, height, size_px=size_px)
        params = [t.requires_grad_() for t in inputs[:5]]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, settings in (("ours (default)", None), ("baseline: gsplat-like binning", GSPLAT_LIKE)):
                def forward():
                    with torch.no_grad():
                        rasterization(*params, *inputs[5:], width, height, backend="torch", settings=settings)

                def forward_backward():
                    image, alpha, _ = rasterization(*params, *inputs[5:], width, height, backend="torch",
                                                    settings=settings)
                    (image.sum() + alpha.sum()).backward()

                reps = max(3, repeats // 3) if n >= 100_000 else repeats
                row = {"width": width, "height": height, "n_gaussians": n, "size_px": size_px,
                       "threads": threads, "config": name,
                       "forward": summary(common.wall_times(forward, reps)),
                       "forward_backward": summary(common.wall_times(forward_backward, reps)),
                       "load_average_1min": os.getloadavg()[0]}
                rows.append(row)
                print(f"{width}x{height} N={n:>6} threads={threads} {name:<30} "
                      f"fwd {row['forward']['min_s']:.3f} s (median {row['forward']['median_s']:.3f})  "
                      f"fwd+bwd {row['forward_backward']['min_s']:.3f} s "
                      f"(median {row['forward_backward']['median_s']:.3f})  load {row['load_average_1min']:.1f}",
                      flush=True)
        rows[-4]["scene_stats"] = scene_stats(inputs, width, height)
    target = next(r for r in rows if r["width"] == 256 and r["threads"] == 2 and r["config"].startswith("ours"))
    return {"rows": rows, "target": {"case": "256x144, 20k Gaussians, forward + backward, 2 threads",
                                     "limit_s": 0.5, "min_s": target["forward_backward"]["min_s"],
                                     "median_s": target["forward_backward"]["median_s"],
                                     "met_by_min": target["forward_backward"]["min_s"] <= 0.5}}


def scene_stats(inputs, width: int, height: int) -> dict:
    """How much work the scene is: visible Gaussians, tile pairs, mean alpha."""
    from stages.optimize.rasterize.projection import project_gaussians
    from stages.optimize.rasterize.torch_backend import bin_gaussians

    with torch.no_grad():
        proj = project_gaussians(*inputs[:4], inputs[5], inputs[6], width, height)
        image, alpha, _ = rasterization(*inputs, width, height, backend="torch")
        stats = {"visible": int((proj.radii > 0).all(-1).sum()), "mean_alpha": float(alpha.mean())}
        for tile, cull in ((8, True), (16, False)):
            bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, width, height, tile,
                                 proj.conics if cull else None, proj.opacities if cull else None)
            stats[f"pixel_gaussian_pairs_tile{tile}{'_culled' if cull else '_bbox'}"] = len(bins.flat_ids) * tile ** 2
    return stats


# ---------------------------------------------------------------------------------------------------------- GPU
PARITY_CASES = [  # name, rasterization kwargs, scene kwargs
    ("rgb", {}, {"n": 20_000, "width": 256, "height": 256, "seed": 1, "size_px": 2.0}),
    ("rgb-2cams-background", {"backgrounds": "random"}, {"n": 20_000, "width": 320, "height": 240, "seed": 2,
                                                          "n_cameras": 2}),
    ("sh3", {"sh_degree": 3}, {"n": 20_000, "width": 256, "height": 256, "seed": 3, "sh_degree": 3}),
    ("antialiased-RGB+ED", {"rasterize_mode": "antialiased", "render_mode": "RGB+ED"},
     {"n": 20_000, "width": 256, "height": 256, "seed": 4}),
    ("large-gaussians", {}, {"n": 5_000, "width": 256, "height": 256, "seed": 5, "size_px": 8.0}),
]


def parity_case(name: str, kwargs: dict, scene: dict) -> dict:
    scene = dict(scene)
    n, width, height = scene.pop("n"), scene.pop("width"), scene.pop("height")
    inputs = random_scene(n, width, height, device="cuda", **scene)
    kwargs = dict(kwargs)
    if kwargs.get("backgrounds") == "random":
        kwargs["backgrounds"] = torch.rand(len(inputs[5]), 3, generator=torch.Generator().manual_seed(9)).cuda()
    results = {}
    for backend in ("gsplat", "torch"):
        params = [t.detach().clone().requires_grad_() for t in inputs[:5]]
        image, alpha, meta = rasterization(*params, *inputs[5:], width, height, backend=backend, **kwargs)
        assert meta["backend"] == backend, f"asked for {backend}, ran {meta['backend']}"
        meta["means2d"].retain_grad()
        g = torch.Generator(device="cuda").manual_seed(7)
        image_weights = torch.randn(image.shape, generator=g, device="cuda")
        alpha_weights = torch.randn(alpha.shape, generator=g, device="cuda")
        ((image * image_weights).sum() + (alpha * alpha_weights).sum()).backward()
        results[backend] = {"image": image.detach(), "alpha": alpha.detach(), "radii": meta["radii"],
                            "means2d_grad": meta["means2d"].grad,
                            "grads": dict(zip(["means", "quats", "scales", "opacities", "colors"],
                                              [p.grad for p in params]))}
    ours, ref = results["torch"], results["gsplat"]
    image_diff = (ours["image"] - ref["image"]).abs()
    row = {"case": name, "n_gaussians": n, "width": width, "height": height, "n_cameras": len(inputs[5]),
           "kwargs": {k: (v if not torch.is_tensor(v) else "tensor") for k, v in kwargs.items()},
           "image_max_abs_diff": float(image_diff.max()),
           "image_mean_abs_diff": float(image_diff.mean()),
           "image_pixels_above_1e-4": int((image_diff > 1e-4).any(-1).sum()),
           # a few pairs at a threshold (alpha = 1/255, T = 1e-4) may flip under last-bit differences of the
           # projection (projection_agreement); the percentiles show whether the rest agrees
           "image_abs_diff_quantiles": quantiles(image_diff.amax(-1), (0.5, 0.999, 0.9999)),
           "image_pixels": int(image_diff[..., 0].numel()),
           "alpha_max_abs_diff": float((ours["alpha"] - ref["alpha"]).abs().max()),
           "radii_equal_fraction": float((ours["radii"] == ref["radii"]).all(-1).float().mean()),
           "grad_relative_error": {}, "grad_max_abs_diff_over_max_abs": {}}
    for key in ["means", "quats", "scales", "opacities", "colors", "means2d"]:
        a = ours["means2d_grad"] if key == "means2d" else ours["grads"][key]
        b = ref["means2d_grad"] if key == "means2d" else ref["grads"][key]
        row["grad_relative_error"][key] = float((a - b).norm() / b.norm().clamp_min(1e-30))
        row["grad_max_abs_diff_over_max_abs"][key] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    row["projection_vs_gsplat"] = projection_agreement(inputs, width, height, kwargs, ref["image"])
    row["meets_targets"] = (row["image_max_abs_diff"] <= 1e-4
                            and max(row["grad_relative_error"].values()) <= 1e-3)
    print(f"{name:<22} image max {row['image_max_abs_diff']:.2e} (px>1e-4: {row['image_pixels_above_1e-4']}) "
          f"alpha max {row['alpha_max_abs_diff']:.2e}  grad rel " +
          " ".join(f"{k} {v:.1e}" for k, v in row["grad_relative_error"].items()), flush=True)
    agreement = row["projection_vs_gsplat"]
    print(f"{'':<22} bit-equal to gsplat's projection: " +
          " ".join(f"{k} {v:.3f}" for k, v in agreement["bit_equal_share"].items()) +
          f"; with gsplat's means2d and conics: image max "
          f"{agreement['image_max_abs_diff_with_gsplat_means_and_conics']:.2e}", flush=True)
    return row


@torch.no_grad()
def projection_agreement(inputs: list, width: int, height: int, kwargs: dict, gsplat_image: torch.Tensor) -> dict:
    """Where image differences come from: the share of projected quantities bit-equal to gsplat's own projection
    (Gaussians both keep), and our compositing's image difference when it is given gsplat's projected means and
    conics instead of ours (everything else ours). Threshold decisions (alpha >= 1/255, the transmittance stop) turn
    last-bit differences of the projection into pixel differences."""
    import dataclasses
    from unittest import mock

    import gsplat

    import stages.optimize.rasterize as rasterize_module

    means, quats, scales, opacities = inputs[:4]
    viewmats, Ks = inputs[5], inputs[6]
    antialiased = kwargs.get("rasterize_mode") == "antialiased"
    ours = rasterize_module.project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height,
                                              antialiased=antialiased)
    radii, means2d, depths, conics, _ = gsplat.fully_fused_projection(
        means, None, quats, scales, viewmats, Ks, width, height, calc_compensations=antialiased,
        opacities=opacities)
    both = (radii > 0).all(-1) & (ours.radii > 0).all(-1)                     # [C, N]

    def equal(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a == b)[both].float().mean())

    original = rasterize_module.project_gaussians

    def with_gsplat_means_and_conics(*args, **kw):
        projection = original(*args, **kw)
        return dataclasses.replace(projection, means2d=means2d, conics=conics)

    with mock.patch.object(rasterize_module, "project_gaussians", with_gsplat_means_and_conics):
        image, _, _ = rasterization(*inputs, width, height, backend="torch", **kwargs)
    diff = (image - gsplat_image).abs()
    return {"bit_equal_share": {"depths": equal(ours.depths, depths), "means2d": equal(ours.means2d, means2d),
                                "conics": equal(ours.conics, conics)},
            "compared": int(both.sum()),
            "image_max_abs_diff_with_gsplat_means_and_conics": float(diff.max()),
            "image_pixels_above_1e-4_with_gsplat_means_and_conics": int((diff > 1e-4).any(-1).sum())}


def quantiles(values: torch.Tensor, qs: tuple[float, ...]) -> dict[str, float]:
    flat = values.flatten().float()
    if flat.numel() > 1 << 24:                               # torch.quantile's input limit
        flat = flat[torch.randperm(flat.numel(), device=flat.device)[: 1 << 24]]
    return {str(q): float(torch.quantile(flat, q)) for q in qs}


SPEED_CASES = [  # name, width, height, n, size_px, what
    ("400x400-100k", 400, 400, 100_000, 1.5, "forward+backward"),
    ("800x800-100k", 800, 800, 100_000, 3.0, "forward"),
    ("800x800-300k", 800, 800, 300_000, 2.0, "forward"),
]


def speed_case(name: str, width: int, height: int, n: int, size_px: float, what: str) -> dict:
    inputs = random_scene(n, width, height, size_px=size_px, device="cuda")
    row = {"case": name, "width": width, "height": height, "n_gaussians": n, "size_px": size_px, "measure": what}
    for backend in ("gsplat", "torch"):
        params = [t.detach().clone().requires_grad_(what != "forward") for t in inputs[:5]]

        def step():
            if what == "forward":
                with torch.no_grad():
                    rasterization(*params, *inputs[5:], width, height, backend=backend)
            else:
                image, alpha, _ = rasterization(*params, *inputs[5:], width, height, backend=backend)
                (image.sum() + alpha.sum()).backward()

        repeats = 50 if backend == "gsplat" else 5
        times = common.wall_times(step, repeats, sync=torch.cuda.synchronize)
        row[backend] = {**summary(times), "per_second_at_median": 1.0 / statistics.median(times)}
    row["gsplat_speedup_over_torch_median"] = row["torch"]["median_s"] / row["gsplat"]["median_s"]
    unit = "fps" if what == "forward" else "it/s"
    print(f"{name:<14} {what:<17} gsplat {row['gsplat']['per_second_at_median']:8.1f} {unit}   "
          f"torch {row['torch']['per_second_at_median']:8.2f} {unit}", flush=True)
    return row


def bench_gpu() -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA")
    from stages.optimize.rasterize.fast_math import approximate_math_available

    out: dict = {"gsplat_available": gsplat_available(), "parity": [], "speed": [], "errors": [],
                 # whether our projection ran gsplat's approximate instructions (rasterize/fast_math.py)
                 "approximate_math": approximate_math_available()}
    print(f"approximate reciprocals/square roots as gsplat's fast-math build: {out['approximate_math']}", flush=True)
    if not out["gsplat_available"]:
        out["errors"].append("gsplat's CUDA extension did not load; only the torch backend can run")
        return out
    for case in PARITY_CASES:
        try:
            out["parity"].append(parity_case(*case))
        except Exception:                                   # keep going: a partial result is still a result
            out["errors"].append(f"parity {case[0]}: {traceback.format_exc()}")
            print(out["errors"][-1], file=sys.stderr)
    for case in SPEED_CASES:
        try:
            out["speed"].append(speed_case(*case))
        except Exception:
            out["errors"].append(f"speed {case[0]}: {traceback.format_exc()}")
            print(out["errors"][-1], file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------------------ common
def environment(device: str) -> dict:
    import gsplat

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "-m", "bench.rasterizer_bench", *sys.argv[1:]]),
            "python": platform.python_version(), "torch": torch.__version__, "gsplat": gsplat.__version__,
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    info["git_commit"] = common.git_state()["git_commit"]       # PAGE4DGS_GIT_COMMIT first (a GPU host's stale .git)
    if device == "cuda":
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = common.cpu_name()
    info["environment"] = common.environment(device)            # driver, versions, exact command (bench/common.py)
    return info


def write(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    if os.environ.get("OUT"):
        shutil.copy(path, Path(os.environ["OUT"]) / path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU timings of the PyTorch backend")
    parser.add_argument("--gpu", action="store_true", help="GPU parity with gsplat and GPU speed (needs CUDA)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per CPU row (min and median kept)")
    parser.add_argument("--quick", action="store_true", help="CPU: only the 256x144 / 20k case")
    parser.add_argument("--name", default="rasterizer", help="result file prefix: NAME_cpu.json / NAME_gpu.json")
    args = parser.parse_args(argv)
    if not (args.cpu or args.gpu):
        parser.error("choose --cpu and/or --gpu")
    if args.cpu:
        threads_before = torch.get_num_threads()
        write(f"{args.name}_cpu", {**environment("cpu"), **bench_cpu(args.repeats, args.quick)})
        torch.set_num_threads(threads_before)
    if args.gpu:
        write(f"{args.name}_gpu", {**environment("cuda"), **bench_gpu()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
