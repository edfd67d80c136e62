"""Does page4d-tiny relate frames to each other? Camera rotation from its camera head and from its point maps.

    python -m bench.pose_probe --weights W1 [W2 ...]          # CPU, ~1 min per weights file
    python -m bench.pose_probe --weights W1 --pan-scales 1 4 --sequences 6

Training-style sequences (``stages.geometry.page4d.train_data.SyntheticSource``: 8 frames of 252 x 168, the data
the network was trained on) from seeds outside the training range (``EVAL_SEED_BASE`` + 200 + i), for rooms at each
``--pan-scale`` (how far the handheld camera turns; 1 = the rooms make-scene writes and the evaluation uses) and for
objects (a random viewpoint per frame). For every frame after the first, the rotation of its camera relative to
frame 0 (geodesic angle, degrees) is compared with the ground truth, from three sources:

- ``head``: the camera head's world-to-camera rotation;
- ``points``: the rotation that best maps the frame's depth, unprojected with the head's intrinsics, onto its point
  map (which the network predicts in frame 0's camera): the least-squares similarity (Umeyama,
  ``pipeline.cameras.umeyama_sim3``) over the pixels above the median point confidence. A network that reasons
  across frames puts camera motion into its point maps too;
- ``identity``: no rotation (the baseline; its error is the true rotation's size).

A network that has learned relative pose has head and points errors well below identity.

Beside the rotations, per weights file, what the aggregator does with its attention (``attention_statistics``, on
one 8-frame room sequence): for each frame and global block the mean entropy of its attention rows as a fraction
of log(keys) (1 = uniform), for global blocks also the attention mass a query puts on its own frame (1/S when it
ignores which frame a key is in), and the mean absolute LayerScale gamma and q/k-norm weight per kind of block (the
vectors that set a block's share of the residual stream and its attention's sharpness).

Writes bench/results/page4d_tiny_pose_probe.json (device, versions, date, exact command).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from bench.common import RESULTS, command_line, device_name, environment, utc_now, versions
from pipeline.io import write_json

RESULT = RESULTS / "page4d_tiny_pose_probe.json"
SEED_OFFSET = 200            # seeds EVAL_SEED_BASE + 200 + i: outside training, apart from the evaluation's
FRAMES, SEQUENCES, HEIGHT, WIDTH = 8, 2, 168, 252


def rotation_error_deg(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Geodesic angle (degrees) between two rotations (3, 3)."""
    from stages.evaluate.pose_metrics import rotation_angle_rad

    return float(np.degrees(rotation_angle_rad(np.asarray(predicted, np.float64).T @ truth)))


def probe_batch(model, batch: dict[str, Tensor]) -> dict[str, list[float]]:
    """Per frame s >= 1 of every sequence: rotation errors (degrees) of head, points and identity vs the truth."""
    from pipeline.cameras import umeyama_sim3
    from stages.geometry.page4d.pose import pose_encoding_to_extri_intri, quat_to_mat
    from stages.geometry.page4d.train_data import targets_from_batch, unproject_depth

    targets = targets_from_batch(batch)
    with torch.no_grad():
        out = model(batch["images"])
    H, W = batch["images"].shape[-2:]
    extrinsics, intrinsics = pose_encoding_to_extri_intri(out["pose_enc"], (H, W))
    truth = quat_to_mat(targets["pose_enc"][..., 3:7])                                  # (B, S, 3, 3)
    # Each frame's depth in its own camera: unprojected with an identity world-to-camera.
    identity = torch.eye(4, dtype=out["depth"].dtype).expand(*truth.shape[:2], 4, 4)
    camera_points = unproject_depth(out["depth"][..., 0], intrinsics, identity)          # (B, S, H, W, 3)
    errors: dict[str, list[float]] = {"head": [], "points": [], "identity": []}
    B, S = truth.shape[:2]
    for b in range(B):
        for s in range(1, S):
            cam = camera_points[b, s].reshape(-1, 3)
            world = out["world_points"][b, s].reshape(-1, 3)
            confidence = out["world_points_conf"][b, s].reshape(-1)
            keep = confidence > confidence.median()
            # world ~ s R cam + t: R is camera-to-world, its transpose the predicted world-to-camera rotation.
            camera_to_world = umeyama_sim3(cam[keep].double().numpy(), world[keep].double().numpy()).rotation
            true_rotation = truth[b, s].double().numpy()
            errors["head"].append(rotation_error_deg(extrinsics[b, s, :3, :3].double().numpy(), true_rotation))
            errors["points"].append(rotation_error_deg(camera_to_world.T, true_rotation))
            errors["identity"].append(rotation_error_deg(np.eye(3), true_rotation))
    return errors


def attention_statistics(model, images: Tensor) -> dict:
    """Attention of the aggregator's frame and global blocks on ``images`` (1, S, 3, H, W); see the module doc."""
    from unittest import mock

    from stages.geometry.page4d import sdpa

    aggregator = model.aggregator
    S = images.shape[1]
    current: list[tuple[str, int]] = []              # the block whose attention is running
    found: dict[tuple[str, int], dict] = {}
    plain = sdpa.attention

    def recording(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        if current and current[-1] not in found:      # the block's own attention (not the mask bias's re-run)
            kind, _ = current[-1]
            weights = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1)   # (B, H, L, L)
            L = weights.shape[-1]
            entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean() / np.log(L)
            record = {"entropy_fraction": float(entropy)}
            if kind == "global":
                frame = torch.arange(L) // (L // S)                                              # key -> frame
                same = (frame[:, None] == frame[None, :]).to(weights.dtype)                     # (L, L)
                record["own_frame_mass"] = float((weights * same).sum(-1).mean())
            found[current[-1]] = record
        return plain(q, k, v, scale=scale)

    def enter(kind: str, index: int):
        return lambda module, args: current.append((kind, index))

    def leave(module, args, output) -> None:        # returns None: the block's output stays as it is
        current.pop()

    handles = []
    for kind in ("frame", "global"):
        for i, block in enumerate(getattr(aggregator, f"{kind}_blocks")):
            handles.append(block.register_forward_pre_hook(enter(kind, i)))
            handles.append(block.register_forward_hook(leave))
    try:
        with mock.patch.object(sdpa, "attention", recording), torch.no_grad():
            model(images, heads=("camera",))
    finally:
        for handle in handles:
            handle.remove()
    out: dict = {"frames": S, "uniform_own_frame_mass": 1.0 / S}
    for kind in ("frame", "global"):
        blocks = getattr(aggregator, f"{kind}_blocks")
        out[f"{kind}_blocks"] = [{"block": i, **found[(kind, i)]} for i in range(len(blocks))]
        out[f"{kind}_layerscale_abs_mean"] = float(torch.cat([b.ls1.gamma.detach().abs() for b in blocks]
                                                             + [b.ls2.gamma.detach().abs() for b in blocks]).mean())
        norms = [n.weight.detach().abs() for b in blocks for n in (b.attn.q_norm, b.attn.k_norm)
                 if isinstance(n, torch.nn.LayerNorm)]
        out[f"{kind}_qk_norm_weight_abs_mean"] = float(torch.cat(norms).mean()) if norms else None
    return out


def probe(weights: str, cases: list[tuple[str, float]], sequences: int) -> tuple[list[dict], dict]:
    from pipeline.io import sha256_file
    from stages.geometry.page4d.checkpoint import load_model
    from stages.geometry.page4d.train import load_train_config
    from stages.geometry.page4d.train_data import EVAL_SEED_BASE, BatchShape, SyntheticSource

    model, info = load_model("page4d-tiny", weights, "auto", "cpu", allow_download=False)
    model.eval()
    source = SyntheticSource(load_train_config("page4d-tiny"), torch.device("cpu"))
    shape = BatchShape(FRAMES, SEQUENCES, HEIGHT, WIDTH)
    rows = []
    for kind, pan_scale in cases:
        errors: dict[str, list[float]] = {"head": [], "points": [], "identity": []}
        for i in range(max(1, sequences // SEQUENCES)):
            batch = source.batch(shape, EVAL_SEED_BASE + SEED_OFFSET + i, kind, pan_scale)
            for key, values in probe_batch(model, batch).items():
                errors[key] += values
        step = (info.metadata.get("train_state") or {}).get("step")
        rows.append({"weights": weights, "sha256": sha256_file(weights), "step": step, "kind": kind,
                     "pan_scale": pan_scale if kind == "room" else None, "frames_compared": len(errors["head"]),
                     **{f"{key}_error_deg": float(np.mean(v)) for key, v in errors.items()}})
        r = rows[-1]
        print(f"{Path(weights).name:32s} {kind:6s} pan x{pan_scale:<4g} head {r['head_error_deg']:7.2f}  "
              f"points {r['points_error_deg']:7.2f}  identity {r['identity_error_deg']:7.2f}  (degrees, "
              f"{r['frames_compared']} frames)", flush=True)
    room = source.batch(shape, EVAL_SEED_BASE + SEED_OFFSET, "room", 1.0)
    attention = {"weights": weights, "step": rows[0]["step"], **attention_statistics(model, room["images"][:1])}
    g = attention["global_blocks"]
    print(f"{Path(weights).name:32s} global attention entropy / log L "
          f"{min(b['entropy_fraction'] for b in g):.2f}-{max(b['entropy_fraction'] for b in g):.2f}, own-frame mass "
          f"{min(b['own_frame_mass'] for b in g):.3f}-{max(b['own_frame_mass'] for b in g):.3f} (uniform "
          f"{attention['uniform_own_frame_mass']:.3f}); "
          f"LayerScale |gamma| {attention['global_layerscale_abs_mean']:.4f}, "
          f"q/k-norm |w| {attention['global_qk_norm_weight_abs_mean']:.3f}", flush=True)
    return rows, attention


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", required=True, help="page4d-tiny weights files")
    parser.add_argument("--pan-scales", nargs="+", type=float, default=[1.0, 4.0], help="room pan multipliers")
    parser.add_argument("--sequences", type=int, default=6, help="sequences per case (pairs of 2)")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    for path in args.weights:
        if not Path(path).is_file():
            print(f"pose_probe: weights file not found: {path}", file=sys.stderr)
            return 2
    torch.manual_seed(0)
    cases = [("room", s) for s in args.pan_scales] + [("object", 1.0)]
    results = [probe(weights, cases, args.sequences) for weights in args.weights]
    rows = [row for case_rows, _ in results for row in case_rows]
    record = {"benchmark": "page4d_tiny_pose_probe", "date": utc_now(), "command": command_line(),
              "device": device_name("cpu"), "versions": versions(), "environment": environment("cpu"),
              "protocol": (f"{FRAMES}-frame training-style sequences ({WIDTH}x{HEIGHT}, seeds EVAL_SEED_BASE + "
                           f"{SEED_OFFSET} + i); per frame after the first, the geodesic angle (degrees) between "
                           "the predicted and the true rotation relative to frame 0, averaged; head = camera head, "
                           "points = Umeyama similarity of the unprojected depth onto the point map (pixels above the "
                           "median point confidence), identity = no rotation"),
              "rows": rows, "attention": [attention for _, attention in results]}
    write_json(Path(args.out), record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
