"""page4d-tiny's dynamic masks at other decision thresholds: is train_eval_bench's p > 0.5 the right cut?

    python -m bench.mask_threshold_sweep --out bench/results/sweeps/page4d_tiny_mask_thresholds.json   # CPU, ~4 min

The mask head's probability (score + 0.5, upsampled and mapped back to the stored frames exactly as
``bench.train_eval_bench`` does) is cut at each of ``--thresholds``; IoU is pooled over all frames of a kind
(windows of 16 training frames). Validation scenes choose (rooms from 1,000,050, objects from 1,000,150; never
trained on, not the evaluation's), the evaluation's six rooms and six objects report. One threshold serves both kinds
(the network is not told which kind it sees), so the choice maximises the mean of the two kinds' IoU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from bench.common import RESULTS, environment
from pipeline.io import write_json

THRESHOLDS = (0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
BUNDLED = "stages/geometry/page4d/weights/page4d-tiny.safetensors"


def threshold_counts(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                     thresholds: Sequence[float]) -> np.ndarray:
    """Pixels moving in both and in either (intersection, union) at each threshold: probabilities and truths are
    frames (H, W) of one sequence (float in [0, 1] and bool); moving where p > threshold. Returns (T, 2) int64."""
    counts = np.zeros((len(thresholds), 2), dtype=np.int64)
    for p, truth in zip(probabilities, truths):
        for k, threshold in enumerate(thresholds):
            moving = p > threshold
            counts[k] += (np.count_nonzero(moving & truth), np.count_nonzero(moving | truth))
    return counts


def scene_counts(network, kind: str, seed: int, frames: int, thresholds: Sequence[float]) -> np.ndarray:
    """(T, 2) intersection and union of one held-out scene's windows at each threshold."""
    import torch.nn.functional as F

    from bench.train_eval_bench import scene_sequences
    from stages.geometry.page4d.preprocess import prepare_frames

    config = network.model.config
    counts = np.zeros((len(thresholds), 2), dtype=np.int64)
    for seq in scene_sequences(kind, seed, frames):
        prepared = prepare_frames(seq.images, "crop", config.input_width, config.patch_size)
        pred = network.predictor(prepared.batch(slice(None), network.device))
        h, w = pred.depth.shape[1:]
        probability = F.interpolate(torch.from_numpy(pred.mask_score)[:, None] + 0.5, size=(h, w), mode="bilinear",
                                    align_corners=False)[:, 0]                          # (S, h, w)
        stored = [m.to_stored(probability[i][None])[0].numpy() for i, m in enumerate(prepared.mappings)]
        counts += threshold_counts(stored, list(seq.dynamic), thresholds)
    return counts


def sweep(network, scenes: dict[str, range], frames: int, thresholds: Sequence[float]) -> dict:
    """Pooled IoU per kind and threshold, and per scene."""
    out = {}
    for kind, seeds in scenes.items():
        per_scene, pooled = {}, np.zeros((len(thresholds), 2), dtype=np.int64)
        for seed in seeds:
            counts = scene_counts(network, kind, seed, frames, thresholds)
            pooled += counts
            per_scene[str(seed)] = [iou(c) for c in counts]
            print(f"{kind} {seed}: " + " ".join(f"{v:.3f}" for v in per_scene[str(seed)]), flush=True)
        out[kind] = {"seeds": [seeds.start, seeds.stop - 1], "iou": [iou(c) for c in pooled], "per_scene": per_scene}
    return out


def iou(counts: np.ndarray) -> float:
    return float(counts[0] / counts[1]) if counts[1] else float("nan")


def best_threshold(result: dict, thresholds: Sequence[float]) -> float:
    """The threshold with the highest mean IoU over the kinds (the first of equals)."""
    means = np.mean([result[kind]["iou"] for kind in result], axis=0)
    return float(thresholds[int(np.argmax(means))])


def main(argv: Optional[list[str]] = None) -> int:
    from bench.train_eval_bench import (OBJECT_SEED_BASE, ROOM_SEED_BASE, VALIDATION_OBJECT_SEED_BASE,
                                        VALIDATION_ROOM_SEED_BASE, trained_network)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=BUNDLED)
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--validation-rooms", type=int, default=20)
    parser.add_argument("--validation-objects", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=6, help="evaluation rooms (train_eval_bench's six)")
    parser.add_argument("--objects", type=int, default=6, help="evaluation objects")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "sweeps" / "page4d_tiny_mask_thresholds.json")
    args = parser.parse_args(argv)
    if not Path(args.weights).is_file():
        print(f"mask_threshold_sweep: no weights file at {args.weights}", file=sys.stderr)
        return 2
    network = trained_network(args.weights, torch.device("cpu"))
    thresholds = sorted(args.thresholds)
    validation_scenes = {"room": range(VALIDATION_ROOM_SEED_BASE, VALIDATION_ROOM_SEED_BASE + args.validation_rooms),
                         "object": range(VALIDATION_OBJECT_SEED_BASE,
                                         VALIDATION_OBJECT_SEED_BASE + args.validation_objects)}
    validation = sweep(network, validation_scenes, args.frames, thresholds)
    chosen = best_threshold(validation, thresholds)
    evaluation = sweep(network, {"room": range(ROOM_SEED_BASE, ROOM_SEED_BASE + args.rooms),
                                 "object": range(OBJECT_SEED_BASE, OBJECT_SEED_BASE + args.objects)},
                       args.frames, thresholds)
    print(f"{'threshold':>10} " + " ".join(f"{'val ' + k:>11} {'eval ' + k:>12}" for k in validation))
    for i, t in enumerate(thresholds):
        print(f"{t:>10.2f} " + " ".join(f"{validation[k]['iou'][i]:>11.3f} {evaluation[k]['iou'][i]:>12.3f}"
                                        for k in validation) + ("   <- chosen on validation" if t == chosen else ""))
    write_json(args.out, {"benchmark": "page4d_tiny_mask_thresholds", "environment": environment("cpu"),
                          "weights": args.weights, "frames_per_sequence": args.frames, "thresholds": thresholds,
                          "validation": validation, "evaluation": evaluation,
                          "chosen_on_validation": chosen})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
