"""Which training views does a moving part's held-out quality depend on? Per test view of end-to-end object runs.

    python -m bench.view_coverage sweeps/e2e_obj_pb_heldout44_s14 [...] [--json sweeps/view_coverage44.json]

For every run of the named result files (``bench/results/NAME.json``, written by ``bench.e2e_bench synthetic``)
whose metrics keep the per-view ``moving`` section, the scene is made again (``make-scene`` is deterministic in its
seed; the same arguments as ``bench.e2e_bench``), and for each test view at time t and each window k (in median
training-frame gaps) this computes the **angle between the test camera and the nearest training camera whose time
lies within k gaps of t** (degrees, between the cameras' directions from the world origin, where make-scene's
objects stand). Then, per run and window, the Spearman rank correlation of that angle with the view's PSNR over the
moving pixels (and with its whole-image PSNR), over the run's test views.

Reading it: if the moving parts' appearance at a new viewpoint were carried across time by a correct motion, the
angle to the nearest view at *any* time (the widest window) would predict their quality; if each moving part is
only as good as the views taken close to its time, a narrow window predicts it best. The window where the
correlation is strongest is how far in time the learned motion carries what a view saw.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from bench.common import RESULTS, environment, utc_now
from bench.e2e_bench import make_scene

# Windows in median training-frame gaps; math.inf = any training time.
WINDOWS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 9.0, 12.0, math.inf)


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (ties get their mean rank); nan when either is
    constant or shorter than 2."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or x.size != y.size:
        return math.nan

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        for value in np.unique(v):                      # ties: the mean of their ranks
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def nearest_angles(train_directions: np.ndarray, train_times: np.ndarray, direction: np.ndarray, time: float,
                   gap: float, windows=WINDOWS) -> dict[float, float]:
    """Angle (degrees) from ``direction`` (3,) unit to the nearest of ``train_directions`` (N, 3) unit whose
    ``train_times`` (N,) lie within k * ``gap`` of ``time``, for each window k; 180 where no training time does."""
    cosines = np.clip(train_directions @ direction, -1.0, 1.0)
    angles = np.degrees(np.arccos(cosines))
    out = {}
    for k in windows:
        inside = np.abs(train_times - time) <= k * gap + 1e-9
        out[k] = float(angles[inside].min()) if inside.any() else 180.0
    return out


def camera_directions(frames: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """D-NeRF frames -> (unit directions of the camera centres from the origin (N, 3), times (N,))."""
    centres = np.array([np.asarray(f["transform_matrix"], dtype=np.float64)[:3, 3] for f in frames])
    return centres / np.linalg.norm(centres, axis=1, keepdims=True), np.array([float(f["time"]) for f in frames])


def analyse_run(run: dict, scene: Path, windows=WINDOWS) -> dict:
    """Per view angles and the per-window correlations of one e2e run (its ``metrics.moving.views``) on its scene."""
    train = json.loads((scene / "transforms_train.json").read_text())["frames"]
    test = json.loads((scene / "transforms_test.json").read_text())["frames"]
    train_dirs, train_times = camera_directions(train)
    gap = float(np.median(np.diff(np.sort(np.unique(train_times)))))
    test_dirs, test_times = camera_directions(test)
    by_name = {v["name"]: v for v in run["metrics"]["moving"]["views"]}
    views = []
    for frame, direction, time in zip(test, test_dirs, test_times):
        name = Path(frame["file_path"]).name.removesuffix(".png")
        if name not in by_name:
            raise SystemExit(f"view_coverage: test view {name} of {scene} is not in run {run['id']}'s metrics")
        angles = nearest_angles(train_dirs, train_times, direction, float(time), gap, windows)
        views.append({"name": name, "time": float(time), "psnr": by_name[name]["psnr"],
                      "psnr_moving": by_name[name]["psnr_moving"],
                      "angles": {window_key(k): a for k, a in angles.items()}})
    correlations = {}
    for k in windows:
        angle = [v["angles"][window_key(k)] for v in views]
        correlations[window_key(k)] = {"moving": spearman(angle, [v["psnr_moving"] for v in views]),
                                       "psnr": spearman(angle, [v["psnr"] for v in views]),
                                       "median_angle": float(np.median(angle))}
    return {"id": run["id"], "seed": run.get("seed"), "frame_gap": gap, "views": views, "correlations": correlations}


def window_key(k: float) -> str:
    return "any" if math.isinf(k) else f"{k:g}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help="result files bench/results/NAME.json of bench.e2e_bench synthetic")
    parser.add_argument("--scenes-dir", help="where the scenes are made again (default: a temporary folder)")
    parser.add_argument("--json", help="write the result to bench/results/JSON")
    args = parser.parse_args(argv)
    runs = []
    for name in args.names:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            print(f"view_coverage: no result file {path}", file=sys.stderr)
            return 2
        for run in json.loads(path.read_text()).get("runs", []):
            views = (run.get("metrics") or {}).get("moving", {}).get("views")
            if run.get("kind") == "object" and run.get("returncode") == 0 and views:
                runs.append((name, run))
    if not runs:
        print("view_coverage: no object run with per-view moving metrics in those files", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="view_coverage_") as temporary:
        scenes_dir = Path(args.scenes_dir or temporary)
        scenes_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for name, run in runs:
            scene, _ = make_scene("object", int(run["seed"]), scenes_dir)
            results.append({"file": name, **analyse_run(run, scene)})
    keys = [window_key(k) for k in WINDOWS]
    summary = {k: {"moving": statistics.fmean(r["correlations"][k]["moving"] for r in results),
                   "psnr": statistics.fmean(r["correlations"][k]["psnr"] for r in results),
                   "median_angle": float(np.median([v["angles"][k] for r in results for v in r["views"]]))}
               for k in keys}
    print("Spearman(angle to the nearest training view within the window, PSNR of the moving pixels) per run; "
          "mean over runs; and with the whole image's PSNR")
    print(f"{'window (gaps)':>14} " + " ".join(f"{r['id']:>26}" for r in results) + "     mean  whole  median angle")
    for k in keys:
        cells = " ".join(f"{r['correlations'][k]['moving']:>+26.2f}" for r in results)
        means = f"{summary[k]['moving']:>+8.2f} {summary[k]['psnr']:>+6.2f} {summary[k]['median_angle']:>8.1f}"
        print(f"{k:>14} {cells} {means}")
    if args.json:
        out = RESULTS / args.json
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"benchmark": "view_coverage", "date": utc_now(), "environment": environment("cpu"),
                  "command": "python -m bench.view_coverage " + " ".join(args.names) + f" --json {args.json}",
                  "about": __doc__.split("\n\n")[2].replace("\n", " "), "windows_in_gaps": keys,
                  "summary": summary, "runs": results}
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
