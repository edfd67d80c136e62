"""page4d-tiny in 8 bits: file size, per-tensor quantization error and the accuracy change on held-out scenes.

    python -m bench.quantization_bench --weights FP16      # CPU: 2 rooms + 2 objects, windows of 8 frames (~3-6 min)
    python -m bench.quantization_bench --weights FP16 --gpu  # CUDA, bench.train_eval_bench's full size (16 frames)
    python -m bench.quantization_bench --weights FP16 [--rooms N --objects N --frames S --max-windows W]

FP16 is a float weights file, e.g. a training run's runs/train/page4d-tiny/export/page4d-tiny.safetensors (the bundled
file is itself 8-bit, so it cannot be the reference). It is re-encoded as 8-bit (``weights_format`` int8-per-channel-symmetric,
exactly what ``python -m stages.geometry.page4d.export_weights WEIGHTS --int8 --out FILE`` writes) into a temporary
file, and both files are loaded through the geometry stage's loader and evaluated on the same held-out synthetic
sequences with :mod:`bench.train_eval_bench`'s scenes, network wrapper and metrics (depth Abs Rel and delta < 1.25
with a median scale per sequence, RPE-rot, ATE in normalised units, mask IoU; see its docstring). Reported:
- file sizes (fp16 and 8-bit);
- per 8-bit tensor, against the fp16 values it was made from: the max relative error max|w_hat - w| / max|w| (at
  most 1/254 = 0.0039370 for round to nearest with scale max|w| / 127, up to float32 rounding of the scale and the
  product, ~1e-7) and the relative RMS error ||w_hat - w|| / ||w||;
- the metrics of both files per kind, their change (8-bit minus fp16), and how far the predictions themselves move:
  depth (relative, over valid pixels), camera rotation (degrees) and the fraction of mask pixels that flip.
Writes bench/results/page4d_tiny_int8.json (device, versions, date, exact command).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from bench.common import RESULTS, environment
from bench.train_eval_bench import (OBJECT_SEED_BASE, ROOM_SEED_BASE, TARGETS, meets, pool, scene_sequences,
                                    sequence_metrics, trained_network)

RESULT = RESULTS / "page4d_tiny_int8.json"
METRICS = list(TARGETS)


# ----------------------------------------------------------------------------------------------------------------
# Weights


def tensor_errors(reference: dict[str, torch.Tensor], quantized: dict[str, torch.Tensor],
                  names: list[str]) -> list[dict]:
    """Per 8-bit tensor: shape, max relative error (to the tensor's max |w|) and relative RMS error, in float64."""
    rows = []
    for name in names:
        w = reference[name].double()
        error = quantized[name].double() - w
        rows.append({"name": name, "shape": list(w.shape),
                     "max_rel_error": float(error.abs().max() / w.abs().max()),
                     "rel_rms_error": float(error.norm() / w.norm())})
    return rows


def encode_int8(weights: Path, out: Path) -> dict:
    """Re-encode ``weights`` as 8-bit into ``out``; sizes, the 8-bit tensors and their errors."""
    from safetensors import safe_open

    from stages.geometry.page4d.checkpoint import INT8_VALUES, read_checkpoint
    from stages.geometry.page4d.export_weights import convert_weights

    t = time.perf_counter()
    convert_weights(weights, out, int8=True)
    seconds = time.perf_counter() - t
    reference, _, metadata = read_checkpoint(weights)
    quantized, _, _ = read_checkpoint(out)
    with safe_open(str(out), framework="pt") as f:
        names = sorted(k.removesuffix(INT8_VALUES) for k in f.keys() if k.endswith(INT8_VALUES))
    rows = tensor_errors(reference, quantized, names)
    eight_bit = sum(reference[k].numel() for k in names)
    total = sum(v.numel() for v in reference.values())
    squared_error = sum(float((quantized[k].double() - reference[k].double()).pow(2).sum()) for k in names)
    squared_norm = sum(float(reference[k].double().pow(2).sum()) for k in names)
    return {"fp16_bytes": weights.stat().st_size, "int8_bytes": out.stat().st_size,
            "size_ratio": out.stat().st_size / weights.stat().st_size, "encode_s": round(seconds, 2),
            "parameters": total, "parameters_8bit": eight_bit, "tensors_8bit": len(names),
            "tensors_fp16": len(reference) - len(names),
            "max_rel_error_worst_tensor": max(r["max_rel_error"] for r in rows),
            "rel_rms_error_all_8bit": (squared_error / squared_norm) ** 0.5,
            "weights_metadata": {k: metadata.get(k) for k in ("weights_format", "train_state", "device")},
            "tensors": rows}


# ----------------------------------------------------------------------------------------------------------------
# Predictions


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (degrees) between the rotations of two (S, 4, 4) world-to-camera stacks, in float64 and through
    :func:`rotation_angle_rad` (arccos of the trace cannot resolve the small angles 8 bits change)."""
    from stages.evaluate.pose_metrics import rotation_angle_rad

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    relative = np.einsum("sij,skj->sik", a[:, :3, :3], b[:, :3, :3])            # R_a R_b^T per frame
    return np.degrees(rotation_angle_rad(relative))


def prediction_change(seq, fp16, int8) -> dict:
    """How far the 8-bit predictions move from the fp16 ones on one sequence."""
    valid = [d > 0 for d in seq.depth]
    relative = np.concatenate([np.abs(q[v] - r[v]) / np.abs(r[v]).clip(1e-6)
                               for q, r, v in zip(int8.depth, fp16.depth, valid)])
    flips = sum(int(np.count_nonzero(q != r)) for q, r in zip(int8.dynamic, fp16.dynamic))
    pixels = sum(r.size for r in fp16.dynamic)
    return {"depth_rel_change_median": float(np.median(relative)),
            "depth_rel_change_p99": float(np.percentile(relative, 99)),
            "rotation_change_deg_max": float(_rotation_deg(int8.world_to_camera, fp16.world_to_camera).max()),
            "mask_flips": flips, "mask_pixels": pixels}


def evaluate_pair(networks: dict, sequences: list) -> dict:
    """Both networks on every sequence: metrics per method and kind (train_eval_bench's pooling), and the changes."""
    rows = {name: [] for name in networks}
    changes = []
    seconds = {name: 0.0 for name in networks}
    for seq in sequences:
        outputs = {}
        for name, network in networks.items():
            t = time.perf_counter()
            outputs[name] = network(seq)
            seconds[name] += time.perf_counter() - t
            rows[name].append(sequence_metrics(seq, outputs[name]))
        changes.append({"sequence": seq.name, "kind": seq.kind, **prediction_change(seq, *outputs.values())})
    kinds = sorted({s.kind for s in sequences})
    per_kind = {name: {kind: pool([r for r, s in zip(rows[name], sequences) if s.kind == kind]) for kind in kinds}
                for name in networks}
    fp16, int8 = networks
    delta = {kind: {m: per_kind[int8][kind][m] - per_kind[fp16][kind][m] for m in METRICS} for kind in kinds}
    change = {kind: {"depth_rel_change_median": float(np.median([c["depth_rel_change_median"] for c in kc])),
                     "depth_rel_change_p99_max": max(c["depth_rel_change_p99"] for c in kc),
                     "rotation_change_deg_max": max(c["rotation_change_deg_max"] for c in kc),
                     "mask_flip_fraction": sum(c["mask_flips"] for c in kc) / sum(c["mask_pixels"] for c in kc)}
              for kind in kinds for kc in [[c for c in changes if c["kind"] == kind]]}
    return {"per_kind": per_kind, "delta_int8_minus_fp16": delta, "prediction_change": change,
            "sequences": {name: rows[name] for name in networks}, "prediction_change_per_sequence": changes,
            "network_seconds": {name: round(s, 2) for name, s in seconds.items()}}


# ----------------------------------------------------------------------------------------------------------------


def print_report(weights: dict, evaluation: dict) -> None:
    print(f"file: fp16 {weights['fp16_bytes'] / 1e6:.2f} MB -> 8-bit {weights['int8_bytes'] / 1e6:.2f} MB "
          f"({weights['size_ratio']:.3f}); {weights['tensors_8bit']} tensors / {weights['parameters_8bit']:,} of "
          f"{weights['parameters']:,} parameters in 8 bits")
    print(f"quantization error: worst tensor max|dw|/max|w| = {weights['max_rel_error_worst_tensor']:.7f} "
          f"(bound 1/254 = {1 / 254:.7f} + float32 rounding); all 8-bit weights ||dw||/||w|| = "
          f"{weights['rel_rms_error_all_8bit']:.5f}")
    worst = sorted(weights["tensors"], key=lambda r: -r["rel_rms_error"])[:5]
    for r in worst:
        print(f"  {r['name']:60s} {str(tuple(r['shape'])):18s} max {r['max_rel_error']:.5f}  "
              f"rms {r['rel_rms_error']:.5f}")
    print()
    print(f"{'weights':24s} {'kind':7s} " + " ".join(f"{m:>16s}" for m in METRICS))
    print(f"{'target':24s} {'':7s} " + " ".join(f"{op + ' ' + str(b):>16s}" for op, b in TARGETS.values()))
    for name, kinds in evaluation["per_kind"].items():
        for kind, values in kinds.items():
            cells = [f"{values[m]:.4f}{'' if meets(m, values[m]) else ' x':2s}".rjust(16) for m in METRICS]
            print(f"{name:24s} {kind:7s} " + " ".join(cells))
    for kind, values in evaluation["delta_int8_minus_fp16"].items():
        print(f"{'8-bit - fp16':24s} {kind:7s} " + " ".join(f"{values[m]:+16.5f}" for m in METRICS))
    print("(x: target missed)")
    for kind, c in evaluation["prediction_change"].items():
        print(f"predictions, {kind}: depth change median {c['depth_rel_change_median']:.2e} (worst sequence p99 "
              f"{c['depth_rel_change_p99_max']:.2e}), camera rotation change max {c['rotation_change_deg_max']:.4f}"
              f" deg, mask pixels flipped {c['mask_flip_fraction']:.2e}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="float (fp16/fp32) weights file to compare with")
    parser.add_argument("--rooms", type=int, default=2)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per sequence (default 8 on the CPU, 16 with --gpu as in train_eval_bench)")
    parser.add_argument("--max-windows", type=int, default=0, help="windows per scene (0 = all)")
    parser.add_argument("--gpu", action="store_true", help="require CUDA (full evaluation size)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        print("quantization_bench: --gpu given but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.gpu else "cpu")
    frames = args.frames or (16 if args.gpu else 8)
    from stages.geometry.page4d.checkpoint import read_checkpoint

    weights_path = args.weights
    if not weights_path.is_file():
        print(f"quantization_bench: weights file not found: {weights_path}", file=sys.stderr)
        return 2
    if read_checkpoint(weights_path)[2].get("weights_format", "float16").startswith("int8"):
        print(f"quantization_bench: {weights_path} is already 8-bit: give the float weights it was made from",
              file=sys.stderr)
        return 2
    record = {"benchmark": "page4d_tiny_int8", **environment(device.type), "weights": str(weights_path),
              "frames_per_sequence": frames, "max_windows": args.max_windows,
              "seeds": {"room": [ROOM_SEED_BASE, ROOM_SEED_BASE + args.rooms - 1],
                        "object": [OBJECT_SEED_BASE, OBJECT_SEED_BASE + args.objects - 1]}}
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "page4d-tiny-int8.safetensors"
        record["weights_8bit"] = encode_int8(Path(weights_path), int8_path)
        networks = {"fp16": trained_network(str(weights_path), device),
                    "8-bit": trained_network(str(int8_path), device)}
        sequences = []
        for kind, base, count in (("room", ROOM_SEED_BASE, args.rooms), ("object", OBJECT_SEED_BASE, args.objects)):
            for seed in range(base, base + count):
                sequences += scene_sequences(kind, seed, frames, args.max_windows)
        record["evaluation"] = evaluate_pair(networks, sequences)
    print_report(record["weights_8bit"], record["evaluation"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
