"""page4d-tiny: held-out evaluation against the targets, training throughput, and the lady-running picture.

    python -m bench.train_eval_bench [--weights PATH] [--rooms 6 --objects 6 --frames 16]   # the evaluation
    python -m bench.train_eval_bench --weights W --rooms 12 --objects 12 --out R.json   # more scenes, elsewhere
    python -m bench.train_eval_bench --validation --weights W --out R.json    # the validation scenes instead
    python -m bench.train_eval_bench --fixed-only        # only the small fixed scene the bundled-weights test redoes
    python -m bench.train_eval_bench --throughput [--steps 40]                                # GPU training speed
    python -m bench.train_eval_bench --lady-running [--weights PATH]     # docs/images/page4d-tiny-lady-running.png
    python -m bench.train_eval_bench --lady-running --weights W --picture P.png --out R.json   # other weights
    (or through the runner: scripts/gpu_host.sh train_eval [ARGS])

Evaluation (bench/results/page4d_tiny_eval.json). Scenes come from :mod:`pipeline.synthetic.writer` exactly as
``make-scene`` writes them, rendered in memory, from seeds never used in training: training batches draw seeds in
[0, 10^6) (:func:`stages.geometry.page4d.train_data.step_seed`); rooms here use 1,000,000 + i and objects 1,000,100 + i.
Each scene is cut into windows of ``--frames`` consecutive training frames (time order); one window is one forward
pass and one sequence of the metrics:
- depth: Abs Rel and delta < 1.25 after one **median** scale per sequence (metrics-and-data §7), at the stored
  resolution (predictions mapped back exactly as the geometry stage does), pooled over sequences by valid pixels;
- cameras: ATE after Sim(3) Umeyama alignment, divided by the sequence's normalisation scale (the mean distance of
  its valid ground-truth points from the first camera, as in training), and RPE-rot (degrees, consecutive frames),
  each averaged over sequences (metrics-and-data §6); also, without a target, the field-of-view error (mean absolute
  difference of the horizontal field of view per frame, degrees; nan for a method without intrinsics);
- dynamic masks: IoU pooled over all frames of a kind; a pixel is moving where the upsampled mask-head probability
  (score + 0.5) exceeds 0.5.
Beside the model: two baselines in the same run, identity cameras with constant depth (and no moving pixel), and the
untrained network (page4d-tiny at its seed-0 initialisation).

Throughput (bench/results/page4d_tiny_throughput.json): a few dozen training steps of the page4d-tiny recipe on the
device, bf16 autocast beside fp32 (the baseline), frames and sequences per second after warm-up, peak GPU memory.

Picture: runs the pipeline's geometry stage on ../shared/data/lady-running with the given weights (windows of 16
frames, the longest sequence page4d-tiny trained on; the network's own cameras unless ``--refined-cameras``), then
draws the fused point cloud and the camera trajectory from two viewpoints with a small numpy point rasterizer,
beside the first input frame. The JSON also describes the camera path, which has no ground truth
(:func:`trajectory_statistics`: rotations from the first frame and between consecutive frames, steps of the camera
centre).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from bench.common import environment
from pipeline.cameras import camera_centres
from pipeline.io import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LADY_RUNNING = REPO.parent / "shared" / "data" / "lady-running"
PICTURE = REPO / "docs" / "images" / "page4d-tiny-lady-running.png"
ROOM_SEED_BASE, OBJECT_SEED_BASE = 1_000_000, 1_000_100
# Validation scenes (--validation): what chooses between weights, never the evaluation's figures.
VALIDATION_ROOM_SEED_BASE, VALIDATION_OBJECT_SEED_BASE = 1_000_050, 1_000_150
TARGETS = {"depth_abs_rel": ("<=", 0.12), "depth_delta_1.25": (">=", 0.85), "rpe_rot_deg": ("<=", 1.0),
           "ate_normalized": ("<=", 0.05), "mask_iou": (">=", 0.5)}
FIXED_SCENE = {"kind": "room", "seed": ROOM_SEED_BASE, "frames": 8}   # what tests/geometry/test_bundled_weights redoes


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------------------------------------------
# Held-out sequences


@dataclass
class Sequence:
    kind: str
    seed: int
    window: int
    images: list[np.ndarray]          # S x (H, W, 3) float32 in [0, 1], as the loaders give them
    depth: np.ndarray                 # (S, H, W) z-depth, 0 = background
    dynamic: np.ndarray               # (S, H, W) bool
    world_to_camera: np.ndarray       # (S, 4, 4) float64 OpenCV
    points: np.ndarray                # (S, H, W, 3) world points (0 = background)
    K: np.ndarray                     # (S, 3, 3) float64 intrinsics in stored pixels

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.seed}-w{self.window}"

    def normalisation_scale(self) -> float:
        """Mean distance of the valid ground-truth points from the first camera (the training normalisation)."""
        from stages.geometry.page4d.normalize import normalize_targets

        valid = torch.from_numpy(self.depth > 0)[None]
        out = normalize_targets(torch.from_numpy(self.world_to_camera)[None], torch.from_numpy(self.points)[None],
                                torch.from_numpy(self.depth)[None], valid)
        return float(out.scale[0])


def scene_sequences(kind: str, seed: int, frames: int, max_windows: int = 0) -> list[Sequence]:
    """The training frames of a held-out scene, in time order, cut into windows of ``frames``."""
    from pipeline.synthetic.writer import object_scene, render_scene, room_scene

    scene = room_scene(seed) if kind == "room" else object_scene(seed)
    order = sorted((i for i, r in enumerate(scene.records) if r.split == "train"), key=lambda i: scene.records[i].time)
    windows = len(order) // frames
    if max_windows:
        windows = min(windows, max_windows)
    out = []
    for w in range(windows):
        index = order[w * frames:(w + 1) * frames]
        rendered = [render_scene(scene, slice(i, i + 1)) for i in index]
        rgb = torch.cat([r["rgb"] for r in rendered]).numpy()
        alpha = torch.cat([r["alpha"] for r in rendered]).numpy()[..., None]
        if scene.transparent:   # on white, as the D-NeRF loader composites RGBA frames
            rgb = rgb * alpha + (1.0 - alpha)
        out.append(Sequence(kind, seed, w, [np.ascontiguousarray(x, dtype=np.float32) for x in rgb],
                            torch.cat([r["depth"] for r in rendered]).numpy().astype(np.float64),
                            torch.cat([r["dynamic"] for r in rendered]).numpy().astype(bool),
                            scene.world_to_camera[index].double().numpy(),
                            torch.cat([r["points"] for r in rendered]).numpy().astype(np.float64),
                            scene.K[index].double().numpy()))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Methods


@dataclass
class Output:
    world_to_camera: np.ndarray       # (S, 4, 4)
    depth: list[np.ndarray]           # S x (H, W) at the stored resolution
    dynamic: list[np.ndarray]         # S x (H, W) bool
    K: Optional[np.ndarray] = None    # (S, 3, 3) in stored pixels; None: the method predicts no intrinsics


class IdentityConstant:
    """Baseline: every camera at the identity, depth 1 everywhere, no moving pixel."""

    name = "identity cameras + constant depth"

    def __call__(self, seq: Sequence) -> Output:
        S, H, W = seq.depth.shape
        return Output(np.tile(np.eye(4), (S, 1, 1)), [np.ones((H, W)) for _ in range(S)],
                      [np.zeros((H, W), bool) for _ in range(S)])


class PatchMaskBound:
    """Not a method: how far a mask predicted per patch can go. The true masks, prepared as the network's frames are
    (resized and cropped to its input), averaged over each patch (the mask head's resolution), then upsampled and
    thresholded as the network's probabilities are. Cameras and depth as the identity baseline's."""

    name = "true masks at patch resolution (mask bound)"

    def __init__(self, input_width: int, patch_size: int):
        self.input_width, self.patch_size = input_width, patch_size

    def __call__(self, seq: Sequence) -> Output:
        import torch.nn.functional as F

        from stages.geometry.page4d.preprocess import prepare_frames

        masks = [np.repeat(m[..., None].astype(np.float32), 3, axis=2) for m in seq.dynamic]
        prepared = prepare_frames(masks, "crop", self.input_width, self.patch_size)
        frames = prepared.batch(slice(None))[:, :1]                                    # (S, 1, h*p, w*p) in [0, 1]
        per_patch = F.avg_pool2d(frames, self.patch_size)                              # (S, 1, h, w)
        probability = F.interpolate(per_patch, size=frames.shape[2:], mode="bilinear", align_corners=False)[:, 0]
        dynamic = [mapping.to_stored(probability[i][None])[0].numpy() > 0.5
                   for i, mapping in enumerate(prepared.mappings)]
        S, H, W = seq.depth.shape
        return Output(np.tile(np.eye(4), (S, 1, 1)), [np.ones((H, W)) for _ in range(S)], dynamic)


class Network:
    """page4d-tiny through the geometry stage's preprocessing, precision policy and resampling to stored pixels."""

    def __init__(self, name: str, model, device: torch.device):
        from stages.geometry.page4d.inference import Predictor, prepare_model

        self.name = name
        self.model = prepare_model(model, device)
        self.device = device
        self.predictor = Predictor(self.model, device, ("camera", "depth"), want_mask_score=True)

    def __call__(self, seq: Sequence) -> Output:
        import torch.nn.functional as F

        from stages.geometry.page4d.preprocess import prepare_frames

        prepared = prepare_frames(seq.images, "crop", self.model.config.input_width, self.model.config.patch_size)
        pred = self.predictor(prepared.batch(slice(None), self.device))
        h, w = pred.depth.shape[1:]
        probability = F.interpolate(torch.from_numpy(pred.mask_score)[:, None] + 0.5, size=(h, w), mode="bilinear",
                                    align_corners=False)[:, 0]
        depth, dynamic = [], []
        for i, mapping in enumerate(prepared.mappings):
            depth.append(mapping.to_stored(torch.from_numpy(pred.depth[i][None]))[0].numpy())
            dynamic.append(mapping.to_stored(probability[i][None])[0].numpy() > 0.5)
        K = np.stack([m.intrinsics_to_stored(k) for m, k in zip(prepared.mappings, pred.intrinsics)])
        return Output(pred.world_to_camera, depth, dynamic, K)


def trained_network(weights: str, device: torch.device) -> Network:
    from stages.geometry.page4d.checkpoint import load_model

    model, info = load_model("page4d-tiny", weights, "auto", "cpu", allow_download=False)
    return Network(f"page4d-tiny ({Path(info.path).name})", model, device)


def untrained_network(device: torch.device) -> Network:
    from stages.geometry.page4d.config import ModelConfig
    from stages.geometry.page4d.model import PAGE4D

    torch.manual_seed(0)
    return Network("untrained page4d-tiny (seed-0 init)", PAGE4D(ModelConfig.load("page4d-tiny")), device)


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def sequence_metrics(seq: Sequence, out: Output) -> dict:
    from stages.evaluate.depth_metrics import depth_errors
    from stages.evaluate.pose_metrics import pose_errors

    depth = depth_errors(out.depth, list(seq.depth), method="median")
    pose = pose_errors(out.world_to_camera, seq.world_to_camera)
    scale = seq.normalisation_scale()
    intersection = sum(int(np.count_nonzero(p & g)) for p, g in zip(out.dynamic, seq.dynamic))
    union = sum(int(np.count_nonzero(p | g)) for p, g in zip(out.dynamic, seq.dynamic))
    predicted = sum(int(np.count_nonzero(p)) for p in out.dynamic)
    truth = int(np.count_nonzero(seq.dynamic))
    width = seq.depth.shape[2]
    fov_error = (float(np.mean(np.abs(horizontal_fov_deg(out.K, width) - horizontal_fov_deg(seq.K, width))))
                 if out.K is not None else float("nan"))
    return {"sequence": seq.name, "frames": len(seq.images), "depth_abs_rel": depth["abs_rel"],
            "depth_delta_1.25": depth["delta_1.25"], "valid_pixels": depth["valid_pixels"],
            "ate_normalized": pose.ate / scale, "rpe_rot_deg": pose.rpe_rot_deg, "gt_scale": scale,
            "mask_intersection": intersection, "mask_union": union, "mask_predicted": predicted,
            "mask_truth": truth, "fov_error_deg": fov_error}


def horizontal_fov_deg(K: np.ndarray, width: int) -> np.ndarray:
    """(S, 3, 3) intrinsics in pixels of images ``width`` wide -> (S,) horizontal field of view, degrees."""
    return np.degrees(2.0 * np.arctan(0.5 * width / np.asarray(K)[:, 0, 0]))


def pool(rows: list[dict]) -> dict:
    """Depth weighted by valid pixels, pose averaged over sequences, IoU (and the masks' precision and recall)
    pooled over frames."""
    weights = np.array([r["valid_pixels"] for r in rows], dtype=np.float64)
    union = sum(r["mask_union"] for r in rows)
    inter = sum(r["mask_intersection"] for r in rows)
    predicted, truth = sum(r["mask_predicted"] for r in rows), sum(r["mask_truth"] for r in rows)
    return {"depth_abs_rel": float(np.average([r["depth_abs_rel"] for r in rows], weights=weights)),
            "depth_delta_1.25": float(np.average([r["depth_delta_1.25"] for r in rows], weights=weights)),
            "ate_normalized": float(np.mean([r["ate_normalized"] for r in rows])),
            "rpe_rot_deg": float(np.mean([r["rpe_rot_deg"] for r in rows])),
            "mask_iou": inter / union if union else float("nan"),
            "mask_precision": inter / predicted if predicted else float("nan"),
            "mask_recall": inter / truth if truth else float("nan"),
            "fov_error_deg": float(np.mean([r["fov_error_deg"] for r in rows])),
            "sequences": len(rows), "frames": int(sum(r["frames"] for r in rows))}


def meets(metric: str, value: float) -> bool:
    op, bound = TARGETS[metric]
    return bool(value <= bound) if op == "<=" else bool(value >= bound)


def evaluate(methods: list, sequences: list[Sequence]) -> dict:
    results = {}
    for method in methods:
        rows = []
        t = time.perf_counter()
        for seq in sequences:
            rows.append(sequence_metrics(seq, method(seq)))
        per_kind = {kind: pool([r for r, s in zip(rows, sequences) if s.kind == kind])
                    for kind in sorted({s.kind for s in sequences})}
        results[method.name] = {"per_kind": per_kind, "sequences": rows,
                                "seconds": round(time.perf_counter() - t, 2)}
    return results


def print_table(results: dict) -> None:
    metrics = list(TARGETS)
    print(f"{'method':44s} {'kind':7s} " + " ".join(f"{m:>16s}" for m in metrics))
    print(f"{'target':44s} {'':7s} " + " ".join(f"{op + ' ' + str(b):>16s}" for op, b in TARGETS.values()))
    for name, result in results.items():
        for kind, values in result["per_kind"].items():
            cells = [f"{values[m]:.4f}{'' if meets(m, values[m]) else ' x':2s}".rjust(16) for m in metrics]
            print(f"{name[:44]:44s} {kind:7s} " + " ".join(cells) + f"   FoV error {values['fov_error_deg']:.2f} deg"
                  f", masks precision {values['mask_precision']:.3f} recall {values['mask_recall']:.3f}")
    print("(x: target missed; FoV error: no target)")


# ----------------------------------------------------------------------------------------------------------------
# Throughput


def throughput(device: torch.device, steps: int, warmup: int, overrides: list[str] = ()) -> dict:
    """Training speed of the page4d-tiny recipe for ``steps`` steps, bf16 autocast and fp32 (baseline)."""
    import csv

    from stages.geometry.page4d.train import load_train_config, train

    out = {}
    for precision in ("bf16", "none"):
        with tempfile.TemporaryDirectory() as tmp:
            config = load_train_config("page4d-tiny", [f"out_dir={tmp}", f"autocast={precision}", "log_every=1",
                                                       f"stop_after={steps}", "checkpoint_every=1000000",
                                                       f"device={device.type}", *overrides])
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            train(config)
            wall = time.perf_counter() - t
            with open(Path(tmp) / "train_log.csv", newline="") as f:
                rows = list(csv.DictReader(f))[warmup:]
        seconds = sum(float(r["B"]) * float(r["S"]) / float(r["frames_per_s"]) for r in rows)  # one row per step
        frames = sum(float(r["B"]) * float(r["S"]) for r in rows)
        sequences = sum(float(r["B"]) for r in rows)
        out[precision] = {"steps_timed": len(rows), "frames_per_s": frames / seconds,
                          "sequences_per_s": sequences / seconds, "seconds_per_step": seconds / len(rows),
                          "peak_gpu_mem_gb": float(rows[-1]["gpu_mem_gb"]), "wall_s_with_setup": round(wall, 1)}
        print(f"{precision:5s}: {out[precision]['frames_per_s']:.1f} frames/s, "
              f"{out[precision]['sequences_per_s']:.2f} sequences/s, {out[precision]['seconds_per_step']:.3f} s/step, "
              f"peak {out[precision]['peak_gpu_mem_gb']:.1f} GiB")
    out["bf16_speedup_vs_fp32"] = out["bf16"]["frames_per_s"] / out["none"]["frames_per_s"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Picture of a real clip


def _rotation_look(forward: np.ndarray, up_hint: np.ndarray) -> np.ndarray:
    """Rows (right, down, forward) of an OpenCV camera looking along ``forward`` with ``up_hint`` up."""
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up_hint)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def rasterize(points: np.ndarray, colours: np.ndarray, R: np.ndarray, eye: np.ndarray, focal: float, size: tuple,
              radius: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Splat (N, 3) points with (N, 3) colours in [0, 1] through a pinhole camera (rows of R, centre ``eye``) into a
    white (H, W, 3) image with a z-buffer (nearest point wins), squares of side 2 * radius + 1 pixels."""
    H, W = size
    cam = (points - eye) @ R.T
    keep = cam[:, 2] > 1e-3
    cam, colours = cam[keep], colours[keep]
    u = np.round(focal * cam[:, 0] / cam[:, 2] + W / 2).astype(np.int64)
    v = np.round(focal * cam[:, 1] / cam[:, 2] + H / 2).astype(np.int64)
    image = np.ones((H, W, 3))
    zbuffer = np.full((H, W), np.inf)
    order = np.argsort(-cam[:, 2])                          # far to near: nearer points overwrite
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            x, y = u[order] + dx, v[order] + dy
            ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
            image[y[ok], x[ok]] = colours[order][ok]
            zbuffer[y[ok], x[ok]] = np.minimum(zbuffer[y[ok], x[ok]], cam[order][ok, 2])
    return image, zbuffer


def draw_polyline(image: np.ndarray, uv: np.ndarray, colour, width: int = 1) -> None:
    """Line segments through (N, 2) pixel positions, drawn in place (dense sampling of each segment)."""
    H, W = image.shape[:2]
    for a, b in zip(uv[:-1], uv[1:]):
        n = int(max(abs(b - a).max(), 1)) * 2
        for t in np.linspace(0.0, 1.0, n + 1):
            x, y = np.round(a + t * (b - a)).astype(int)
            image[max(0, y - width):min(H, y + width + 1), max(0, x - width):min(W, x + width + 1)] = colour


def trajectory_view(points, colours, centres, forwards, eye, target, up, size=(300, 400), fov_deg=60.0):
    R = _rotation_look(target - eye, up)
    focal = 0.5 * size[1] / math.tan(math.radians(fov_deg) / 2)
    image, _ = rasterize(points, colours, R, eye, focal, size)
    cam = (centres - eye) @ R.T
    uv = np.stack([focal * cam[:, 0] / cam[:, 2] + size[1] / 2, focal * cam[:, 1] / cam[:, 2] + size[0] / 2], -1)
    draw_polyline(image, uv, (0.85, 0.1, 0.1), width=1)
    tips = centres + 0.15 * np.linalg.norm(np.ptp(centres, 0) + 1e-9) * forwards
    for c, tip in zip(centres[::4], tips[::4]):                # viewing directions of every 4th camera
        ends = np.stack([c, tip]) - eye
        ends = ends @ R.T
        draw_polyline(image, np.stack([focal * ends[:, 0] / ends[:, 2] + size[1] / 2,
                                       focal * ends[:, 1] / ends[:, 2] + size[0] / 2], -1), (0.1, 0.3, 0.9))
    for i, colour in ((0, (0.0, 0.7, 0.0)), (-1, (0.85, 0.1, 0.1))):
        x, y = np.round(uv[i]).astype(int)
        image[max(0, y - 3):y + 4, max(0, x - 3):x + 4] = colour
    return image


def trajectory_statistics(world_to_camera: np.ndarray) -> dict:
    """How a camera path without ground truth behaves: (S, 4, 4) world-to-camera -> the rotation of each frame
    relative to the first (largest, last; degrees), the rotation between consecutive frames (largest, mean, and
    the three frames where it is largest: a window join of the geometry stage shows up there) and the steps of
    the camera centre between consecutive frames (largest, median; the run's units)."""
    from stages.evaluate.pose_metrics import rotation_angle_rad

    R = world_to_camera[:, :3, :3]
    from_first = np.degrees(rotation_angle_rad(R @ np.swapaxes(R[:1], -1, -2)))                    # (S,)
    consecutive = np.degrees(rotation_angle_rad(R[1:] @ np.swapaxes(R[:-1], -1, -2)))             # (S-1,)
    steps = np.linalg.norm(np.diff(camera_centres(world_to_camera), axis=0), axis=1)               # (S-1,)
    largest = np.argsort(consecutive)[::-1][:3] + 1
    return {"rotation_from_first_max_deg": float(from_first.max()), "rotation_last_deg": float(from_first[-1]),
            "consecutive_rotation_max_deg": float(consecutive.max()),
            "consecutive_rotation_mean_deg": float(consecutive.mean()),
            "largest_consecutive_rotation_at_frames": [int(i) for i in largest],
            "centre_step_max": float(steps.max()), "centre_step_median": float(np.median(steps))}


def lady_running_command(weights: str, device: torch.device, refine_cameras: bool, out: Path) -> list[str]:
    """The geometry stage on the clip, as the picture runs it: the model's cameras in windows of 16 frames (4
    shared), refined photometrically only with ``refine_cameras``."""
    return [sys.executable, "-m", "pipeline.cli", "reconstruct", str(LADY_RUNNING), "geometry.model=page4d-tiny",
            f"geometry.checkpoint={weights}", "geometry.cameras=model", "geometry.window=16", "geometry.overlap=4",
            f"geometry.refine_cameras={str(refine_cameras).lower()}", f"device={device.type}", "--out", str(out),
            "--until", "geometry"]


def lady_running_picture(weights: str, out_png: Path, device: torch.device, refine_cameras: bool = False) -> dict:
    """Geometry stage on the clip -> fused points + cameras -> PNG (first frame | behind-above view | top view).

    The network's own cameras by default (``geometry.refine_cameras=false``: what the model card describes);
    ``refine_cameras``: after the geometry stage's photometric refinement, as the pipeline uses them."""
    from plyfile import PlyData

    from pipeline.io import write_png

    with tempfile.TemporaryDirectory() as tmp:
        cmd = lady_running_command(weights, device, refine_cameras, Path(tmp) / "run")
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        seconds = time.perf_counter() - t
        cameras = json.loads((Path(tmp) / "run" / "geometry" / "cameras.json").read_text())["frames"]
        predicted_fx = json.loads((Path(tmp) / "run" / "geometry" / "geometry.json").read_text())["predicted_fx_px"]
        ply = PlyData.read(str(Path(tmp) / "run" / "geometry" / "points.ply"))["vertex"]
        points = np.stack([ply["x"], ply["y"], ply["z"]], -1).astype(np.float64)
        colours = np.stack([ply["red"], ply["green"], ply["blue"]], -1) / 255.0
    w2c = np.array([c["world_to_camera"] for c in cameras])
    centres = camera_centres(w2c)
    forwards = w2c[:, 2, :3]
    ups = -w2c[:, 1, :3]
    up = ups.mean(0) / np.linalg.norm(ups.mean(0))
    target = np.median(points, axis=0)
    extent = np.percentile(np.linalg.norm(points - target, axis=1), 80)
    behind = centres[0] - forwards[0] * 1.2 * extent + up * 0.6 * extent
    above = target + up * 2.5 * extent - forwards[0] * 0.3 * extent
    view_a = trajectory_view(points, colours, centres, forwards, behind, target, up)
    view_b = trajectory_view(points, colours, centres, forwards, above, target, forwards[0])
    from PIL import Image

    first = np.asarray(Image.open(sorted(LADY_RUNNING.glob("*.jpg"))[0]).convert("RGB"), dtype=np.float64) / 255.0
    h = view_a.shape[0]
    w = int(round(first.shape[1] * h / first.shape[0]))
    first = np.asarray(Image.fromarray((first * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)) / 255.0
    gap = np.ones((h, 6, 3))
    write_png(out_png, np.concatenate([first, gap, view_a, gap, view_b], axis=1))
    png = out_png.resolve()
    return {"png": str(png.relative_to(REPO) if png.is_relative_to(REPO) else png), "frames": len(cameras),
            "points": int(len(points)), "refined_cameras": refine_cameras,
            "geometry_stage_s": round(seconds, 1), "command": " ".join(cmd[2:]),
            "trajectory": trajectory_statistics(w2c), "predicted_fx_px": predicted_fx,
            "fx_px_used": sorted({round(c["K"][0][0], 3) for c in cameras})}


# ----------------------------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="", help="weights file ('' = the bundled page4d-tiny)")
    parser.add_argument("--rooms", type=int, default=6, help="room scenes (six since the tenth session; two before)")
    parser.add_argument("--objects", type=int, default=6, help="object scenes (six since the tenth session; two before)")
    parser.add_argument("--frames", type=int, default=16, help="frames per sequence (one forward pass)")
    parser.add_argument("--max-windows", type=int, default=0, help="windows per scene (0 = all)")
    parser.add_argument("--validation", action="store_true",
                        help="the validation scenes (rooms from 1,000,050, objects from 1,000,150) that choose between "
                             "weights, instead of the evaluation's; needs --out")
    parser.add_argument("--mask-bound", action="store_true",
                        help="also the true masks at the mask head's patch resolution: the IoU a head could reach")
    parser.add_argument("--fixed-only", action="store_true", help="only the fixed scene of the bundled-weights test")
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--steps", type=int, default=40, help="throughput: steps per precision")
    parser.add_argument("--train-overrides", nargs="*", default=[], metavar="key=value",
                        help="throughput: changes to the page4d-tiny training config")
    parser.add_argument("--lady-running", action="store_true")
    parser.add_argument("--picture", type=Path, default=PICTURE, help="lady-running: the PNG to write")
    parser.add_argument("--refined-cameras", action="store_true",
                        help="lady-running: the cameras after the geometry stage's photometric refinement (default: "
                             "the network's own, geometry.refine_cameras=false)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON to write (default bench/results/page4d_tiny_eval.json, or "
                             "page4d_tiny_lady_running.json with --lady-running)")
    parser.add_argument("--gpu", action="store_true", help="require CUDA")
    parser.add_argument("--cpu", action="store_true", help="force the CPU")
    args = parser.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        print("train_eval: --gpu given but CUDA is not available", file=sys.stderr)
        return 2
    if args.validation and args.out is None:
        print("train_eval: --validation writes elsewhere than the evaluation's file: give --out", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    record = {"benchmark": "page4d_tiny_eval", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m bench.train_eval_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": device_name(device), "versions": versions(), "environment": environment(device.type)}
    RESULTS.mkdir(parents=True, exist_ok=True)

    if args.throughput:
        speeds = throughput(device, args.steps, warmup=5, overrides=args.train_overrides)
        record.update(benchmark="page4d_tiny_throughput", throughput=speeds,
                      note="bf16 autocast applies on CUDA only; on the CPU both rows run float32")
        write_json(RESULTS / "page4d_tiny_throughput.json", record)
        return 0
    weights = args.weights
    if not weights:
        from stages.geometry.page4d.checkpoint import BUNDLED

        weights = str(BUNDLED["page4d-tiny"])
    if args.lady_running:
        record.update(benchmark="page4d_tiny_lady_running", weights=weights,
                      picture=lady_running_picture(weights, args.picture, device, args.refined_cameras))
        write_json(args.out or RESULTS / "page4d_tiny_lady_running.json", record)
        print(json.dumps(record["picture"], indent=2))
        return 0

    methods = [trained_network(weights, device), untrained_network(device), IdentityConstant()]
    if args.mask_bound:
        config = methods[0].model.config
        methods.append(PatchMaskBound(config.input_width, config.patch_size))
    fixed = scene_sequences(FIXED_SCENE["kind"], FIXED_SCENE["seed"], FIXED_SCENE["frames"], max_windows=1)
    from pipeline.synthetic.writer import GENERATOR_VERSION

    record["fixed_scene"] = {**FIXED_SCENE, "generator_version": GENERATOR_VERSION,
                             "metrics": sequence_metrics(fixed[0], methods[0](fixed[0]))}
    if not args.fixed_only:
        sequences = []
        room_base, object_base = ((VALIDATION_ROOM_SEED_BASE, VALIDATION_OBJECT_SEED_BASE) if args.validation else
                                  (ROOM_SEED_BASE, OBJECT_SEED_BASE))
        for kind, base, count in (("room", room_base, args.rooms), ("object", object_base, args.objects)):
            for seed in range(base, base + count):
                sequences += scene_sequences(kind, seed, args.frames, args.max_windows)
        from pipeline.io import sha256_file

        record.update(weights=weights, weights_sha256=sha256_file(weights), frames_per_sequence=args.frames,
                      targets={k: list(v) for k, v in TARGETS.items()},
                      seeds={"room": [room_base, room_base + args.rooms - 1],
                             "object": [object_base, object_base + args.objects - 1]},
                      scenes="validation" if args.validation else "evaluation",
                      results=evaluate(methods, sequences))
        print_table(record["results"])
    print("fixed scene:", json.dumps(record["fixed_scene"]["metrics"]))
    name = "page4d_tiny_eval.json" if not args.fixed_only else "page4d_tiny_eval_fixed.json"
    (args.out or RESULTS / name).write_text(json.dumps(record, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
