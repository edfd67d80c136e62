"""Where held-out quality goes with a predicted geometry: the same object scene optimized from geometry artifacts
mixed from the network and from the ground truth.

    python -m bench.geometry_ablation --gpu --seeds 0            # -> bench/results/geometry_ablation.json
    python -m bench.geometry_ablation --cpu --quick --seeds 0    # a small smoke run of the script

A `make-scene object` scene (the quality protocol of bench/optimize_bench.py: 50 monocular training views at random
viewpoints, 200x200, 20 test views at new viewpoints and times, `configs/dnerf.yaml`, dataset cameras) runs the
geometry stage twice: with ``--network`` (default page4d-tiny) and with ``oracle`` (the scene's exact depth and
dynamic masks). Two more runs take their geometry artifacts from both: the network's depth with the true dynamic
masks, and the true depth with the network's masks (``geometry/dynamic_mask/`` swapped; the run's manifest is told,
so the geometry stage is not redone). All four then run initialize and optimize with the same settings, and the
test views are scored as in the quality section (PSNR of the 8-bit render, SSIM, LPIPS-alex).

Beside each run: the dynamic masks against the true ones over the object's pixels (true depth > 0; the background
of an RGBA capture never becomes Gaussians): recall, precision, IoU; and the depth's Abs Rel over those pixels.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, environment
from bench.optimize_bench import make_object, table, test_metrics

# name -> (where the depth comes from, where the dynamic masks come from)
VARIANTS = {"oracle": ("oracle", "oracle"), "network": ("network", "network"),
            "network depth + true masks": ("network", "oracle"), "true depth + network masks": ("oracle", "network")}


def geometry_run(config, scene, run_dir: Path) -> None:
    from pipeline.runner import run_pipeline

    shutil.rmtree(run_dir, ignore_errors=True)
    run_pipeline(config, run_dir, scene, until_stage="geometry")


def swap_masks(depth_run: Path, mask_run: Path, out: Path) -> None:
    """``out``: a copy of ``depth_run`` whose dynamic masks are ``mask_run``'s; the manifest's record of the
    geometry outputs is updated so that the runner keeps them (it checks the files' sizes)."""
    from pipeline.runner import STAGES, Manifest, output_hash, tree_files

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(depth_run, out)
    shutil.rmtree(out / "geometry" / "dynamic_mask")
    shutil.copytree(mask_run / "geometry" / "dynamic_mask", out / "geometry" / "dynamic_mask")
    spec = next(s for s in STAGES if s.name == "geometry")
    manifest = Manifest(out)
    entry = dict(manifest.stage("geometry"))
    entry["files"] = tree_files(out, spec.outputs)
    entry["output_hash"] = output_hash(out, entry["files"])
    manifest.update("geometry", **entry)


def geometry_figures(run: Path, truth: Path) -> dict[str, float]:
    """Masks (recall, precision, IoU) and depth Abs Rel of ``run`` against the oracle run ``truth``, over the
    training frames' object pixels (true depth > 0)."""
    from PIL import Image

    from stages.initialize.geometry_io import read_cameras

    cameras, _ = read_cameras(truth / "geometry" / "cameras.json")
    tp = fp = fn = 0
    rel = []
    for cam in (c for c in cameras if c.split == "train"):
        true_depth = np.load(truth / "geometry" / "depth" / f"{cam.name}.npy")
        depth = np.load(run / "geometry" / "depth" / f"{cam.name}.npy")
        obj = (true_depth > 0) & np.isfinite(true_depth)
        true_mask = np.array(Image.open(truth / "geometry" / "dynamic_mask" / f"{cam.name}.png")) > 127
        mask = np.array(Image.open(run / "geometry" / "dynamic_mask" / f"{cam.name}.png")) > 127
        tp += int((mask & true_mask & obj).sum())
        fp += int((mask & ~true_mask & obj).sum())
        fn += int((~mask & true_mask & obj).sum())
        ok = obj & (depth > 0) & np.isfinite(depth)
        rel.append(np.abs(depth[ok] - true_depth[ok]) / true_depth[ok])
    rel_all = np.concatenate(rel) if rel else np.zeros(0)
    return {"mask_recall": tp / max(1, tp + fn), "mask_precision": tp / max(1, tp + fp),
            "mask_iou": tp / max(1, tp + fp + fn), "depth_abs_rel": float(rel_all.mean()) if rel_all.size else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--gpu", action="store_true")
    which.add_argument("--cpu", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--model", default="bases", help="deformation model (optimize.deformation)")
    parser.add_argument("--network", default="page4d-tiny", help="geometry.model of the network runs")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a small scene and 300 steps (smoke test)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, repeatable")
    parser.add_argument("--json", default="geometry_ablation.json", help="results file name in bench/results")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.scene import load_scene

    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("geometry_ablation: --gpu needs CUDA", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="geometry_ablation_"))
    frames, size, tests = (12, 64, 4) if args.quick else (50, 200, 20)
    extra = [f"device={device}", f"optimize.deformation={args.model}", *args.overrides]
    if args.quick:
        extra += ["optimize.iterations=300", "optimize.refine_start=50", "optimize.refine_stop=250",
                  "initialize.max_gaussians=4000"]
    record: dict[str, Any] = {"environment": environment(device),
                              "protocol": f"make-scene object, {frames} monocular training views at random viewpoints "
                                          f"(one per time), {tests} test views at new viewpoints and times, "
                                          f"{size}x{size}, configs/dnerf.yaml, dataset cameras; PSNR of the 8-bit "
                                          "render per test view, then the mean; masks and depth over the training "
                                          "views' object pixels",
                              "network": args.network, "model": args.model, "overrides": extra, "runs": []}
    out = RESULTS / args.json
    for seed in args.seeds:
        scene_dir = make_object(workdir / f"object_{seed}", seed, frames, size, tests)
        configs = {source: load_config("dnerf", [f"scene.source={scene_dir}", f"geometry.model={model}", *extra])
                   for source, model in (("oracle", "oracle"), ("network", args.network))}
        scene = load_scene(configs["oracle"].scene)
        bases = {source: workdir / f"s{seed}_geometry_{source}" for source in configs}
        for source, cfg in configs.items():
            geometry_run(cfg, scene, bases[source])
        for name in args.variants:
            depth_from, masks_from = VARIANTS[name]
            run_dir = workdir / f"s{seed}_{name.replace(' ', '_').replace('+', 'and')}"
            if depth_from == masks_from:
                shutil.rmtree(run_dir, ignore_errors=True)
                shutil.copytree(bases[depth_from], run_dir)
            else:
                swap_masks(bases[depth_from], bases[masks_from], run_dir)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            results = run_pipeline(configs[depth_from], run_dir, scene, until_stage="optimize")
            wall = time.perf_counter() - start
            row = {"seed": seed, "variant": name, "depth_from": depth_from, "masks_from": masks_from,
                   **{k: round(v, 4) for k, v in geometry_figures(run_dir, bases["oracle"]).items()},
                   "optimize_s": results["optimize"]["wall_s"], "wall_s": round(wall, 1),
                   "gaussians": results["optimize"]["summary"]["gaussians"],
                   "train_psnr": results["optimize"]["summary"]["train_psnr"],
                   **test_metrics(run_dir, scene, device)}
            print(f"  seed {seed} {name}: {json.dumps(row)}", flush=True)
            record["runs"].append(row)
            out.write_text(json.dumps(record, indent=1, default=float) + "\n")        # after every run
    table(f"Held-out quality by geometry source (object scenes, {args.model}, network {args.network})",
          ["seed", "variant", "PSNR", "SSIM 3dgs", "LPIPS alex", "mask recall", "mask precision", "depth Abs Rel",
           "optimize s", "gaussians"],
          [[r["seed"], r["variant"], r["psnr"], r["ssim_3dgs"], r["lpips_alex"], r["mask_recall"],
            r["mask_precision"], r["depth_abs_rel"], r["optimize_s"], r["gaussians"]] for r in record["runs"]])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
