"""Model cameras with and without the geometry stage's photometric refinement, against the ground truth.

    python -m bench.camera_refinement_bench                      # -> bench/results/camera_refinement.json
    python -m bench.camera_refinement_bench --seeds 1000000 --pan-scales 1 --frames 16   # a quick look

For each held-out room (`make-scene room --seed S --pan-scale P`, seeds >= 10^6 as in the page4d-tiny evaluation;
pan 1 is the rooms make-scene writes by default, pan 4 a camera that turns about three times as far) the geometry
stage runs twice with the bundled page4d-tiny and `geometry.cameras=model` - `geometry.refine_cameras` false, then
true - and `geometry/cameras.json` is scored against the scene's cameras over all frames in time order
(stages/evaluate/pose_metrics.py: Sim(3) Umeyama alignment of the camera centres, ATE = RMSE of the aligned
centres in the scene's units (metres), RPE over consecutive frames, RMSE of translation and of rotation angle).
The identity trajectory (every camera at the first one's pose, centres spread by 1 micrometre along x so that the
alignment is defined) is scored beside them. Also recorded: the stage's wall time, the refinement's own seconds and
record (costs, rotation changes), and the dynamic masks' IoU against the scene's (pooled over frames).
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

from bench.common import RESULTS, environment
from pipeline.io import write_json


VARIANTS = {    # name -> geometry overrides (with geometry.cameras=model)
    "network": ["geometry.refine_cameras=false"],
    "refined": ["geometry.refine_cameras=true", "geometry.refine_focal=false"],
    "refined_focal": ["geometry.refine_cameras=true", "geometry.refine_focal=true"],
}


def identity_trajectory(frames: int) -> np.ndarray:
    out = np.tile(np.eye(4), (frames, 1, 1))
    out[:, 0, 3] = -np.linspace(0.0, 1e-6, frames)          # centres x = +t: alignment needs a spread
    return out


def horizontal_fov_deg(fx: float, width: int) -> float:
    """Horizontal field of view (degrees) of a pinhole camera with focal length fx (pixels) and image width."""
    return float(np.degrees(2.0 * np.arctan(width / (2.0 * fx))))


def score(scene, run_dir: Path) -> dict[str, Any]:
    from stages.evaluate.pose_metrics import pose_errors
    from stages.initialize.geometry_io import read_cameras
    from PIL import Image

    frames = sorted(scene.frames, key=lambda f: f.index)
    truth = np.stack([f.camera.world_to_camera for f in frames])
    cameras, _ = read_cameras(run_dir / "geometry" / "cameras.json")
    by_name = {c.name: c for c in cameras}
    errors = pose_errors(np.stack([by_name[f.name].world_to_camera for f in frames]), truth)
    fov_error = [abs(horizontal_fov_deg(by_name[f.name].K[0, 0], f.camera.width)
                     - horizontal_fov_deg(f.camera.K[0, 0], f.camera.width)) for f in frames]
    inter = union = 0
    for f in frames:
        predicted = np.asarray(Image.open(run_dir / "geometry" / "dynamic_mask" / f"{f.name}.png")) > 0
        true = np.asarray(f.load_dynamic_mask(), dtype=bool)
        inter += int((predicted & true).sum())
        union += int((predicted | true).sum())
    geometry = json.loads((run_dir / "geometry" / "geometry.json").read_text())
    return {"ate_m": errors.ate, "rpe_trans_m": errors.rpe_trans, "rpe_rot_deg": errors.rpe_rot_deg,
            "fov_error_deg": float(np.mean(fov_error)), "mask_iou": inter / max(union, 1),
            "refinement_s": geometry["timings"].get("camera_refinement_s"),
            "refinement": geometry.get("camera_refinement")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000000, 1000001, 1000002])
    parser.add_argument("--pan-scales", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--frames", type=int, default=48, help="frames per room (make-scene's default 48)")
    parser.add_argument("--res", type=int, default=256, help="image width (make-scene's default 256)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every variant (e.g. geometry.refine_iterations=60)")
    parser.add_argument("--out", type=Path, default=RESULTS / "camera_refinement.json")
    args = parser.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.scene import load_scene
    from pipeline.scene.config import SceneConfig
    from pipeline.synthetic.writer import RoomSceneOptions, make_room_scene
    from stages.evaluate.pose_metrics import pose_errors

    rows = []
    work = Path(tempfile.mkdtemp(prefix="camera_refinement_"))
    try:
        for pan in args.pan_scales:
            for seed in args.seeds:
                scene_dir = make_room_scene(work / f"room-{seed}-pan{pan:g}", seed,
                                            RoomSceneOptions(frames=args.frames, width=args.res,
                                                             pan_scale=pan))
                scene = load_scene(SceneConfig(source=str(scene_dir)))
                truth = np.stack([f.camera.world_to_camera for f in sorted(scene.frames, key=lambda f: f.index)])
                identity = pose_errors(identity_trajectory(len(truth)), truth)
                row = {"seed": seed, "pan_scale": pan, "frames": len(truth),
                       "identity": {"ate_m": identity.ate, "rpe_trans_m": identity.rpe_trans,
                                    "rpe_rot_deg": identity.rpe_rot_deg}}
                for variant in args.variants:
                    config = load_config("default", [f"device={args.device}", "geometry.cameras=model",
                                                     *VARIANTS[variant], *args.set])
                    run_dir = work / f"run-{seed}-pan{pan:g}-{variant}"
                    start = time.perf_counter()
                    run_pipeline(config, run_dir, scene, until_stage="geometry")
                    result = score(scene, run_dir)
                    result["geometry_s"] = time.perf_counter() - start
                    row[variant] = result
                    shutil.rmtree(run_dir)
                rows.append(row)
                print(f"room {seed} pan x{pan:g}: identity RPE-rot {row['identity']['rpe_rot_deg']:.3f} deg, "
                      f"ATE {row['identity']['ate_m']:.4f} m | " + " | ".join(
                          f"{v}: RPE-rot {row[v]['rpe_rot_deg']:.3f}, ATE {row[v]['ate_m']:.4f}, "
                          f"FoV error {row[v]['fov_error_deg']:.2f} deg, mask IoU {row[v]['mask_iou']:.3f}"
                          for v in args.variants), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for pan in args.pan_scales:
        chosen = [r for r in rows if r["pan_scale"] == pan]
        groups = {"identity": {key: float(np.mean([r["identity"][key] for r in chosen]))
                               for key in ("ate_m", "rpe_trans_m", "rpe_rot_deg")}}
        for variant in args.variants:
            groups[variant] = {key: float(np.mean([r[variant][key] for r in chosen]))
                               for key in ("ate_m", "rpe_trans_m", "rpe_rot_deg", "fov_error_deg", "mask_iou")}
            times = [r[variant]["refinement_s"] for r in chosen if r[variant]["refinement_s"] is not None]
            if times:
                groups[variant]["refinement_s"] = float(np.mean(times))
        summary[f"pan{pan:g}"] = groups
    print("\n| rooms | cameras | ATE (m) | RPE-trans (m) | RPE-rot (deg) | FoV error (deg) | mask IoU |")
    print("|---|---|---|---|---|---|---|")
    for key, groups in summary.items():
        for which, values in groups.items():
            fov = f"{values['fov_error_deg']:.2f}" if "fov_error_deg" in values else ""
            iou = f"{values['mask_iou']:.3f}" if "mask_iou" in values else ""
            print(f"| {key} x{len(args.seeds)} | {which} | {values['ate_m']:.4f} | {values['rpe_trans_m']:.4f} | "
                  f"{values['rpe_rot_deg']:.3f} | {fov} | {iou} |")
    record = {"benchmark": "camera_refinement", **environment(args.device),
              "protocol": ("make-scene rooms (seeds, pan scales, frames as listed), geometry stage with the bundled "
                           "page4d-tiny and geometry.cameras=model, each variant's overrides (variants) and the common ones "
                           "(overrides); geometry/cameras.json "
                           "against the scene's cameras over all frames in time order: Sim(3) Umeyama alignment of "
                           "camera centres, ATE = RMSE of aligned centres (metres), RPE over consecutive frames "
                           "(RMSE of translation, metres, and of rotation angle, degrees); identity = every camera "
                           "at the first one's pose; FoV error = mean over frames of |horizontal field of view - "
                           "the scene's| (degrees); mask IoU pooled over all frames"),
              "variants": {v: VARIANTS[v] for v in args.variants}, "overrides": args.set,
              "seeds": args.seeds, "pan_scales": args.pan_scales, "frames": args.frames, "width": args.res,
              "summary": summary,
              "rows": rows}
    write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
