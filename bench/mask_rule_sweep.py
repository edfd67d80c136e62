"""Dynamic-mask rules on make-scene rooms with refined model cameras, against the ground truth (how the
photometric votes' weight and threshold were chosen; docs/geometry.md, "Dynamic masks").

    python -m bench.mask_rule_sweep --out bench/results/sweeps/mask_rule_sweep.json

For each room the geometry stage runs once (bundled page4d-tiny, `geometry.cameras=model`, refinement on) and the
cues the fused rule blends are kept at the network resolution: the free-space vote fraction, the mask head's
probability, and the photometric vote fraction at each colour threshold. Every rule of the grid (head weight,
photometric weight, colour threshold, vote fraction: the blend of `stages.geometry.consistency.dynamic_masks`) is
then scored against the scene's masks, sampled at the network pixels' centres: IoU, recall and precision pooled
over frames per room, then averaged over the rooms of each group. Validation rooms choose; evaluation rooms report.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, environment
from pipeline.io import write_json

GRID = {"head_weight": (0.5, 0.75, 1.0), "photometric_weight": (0.0, 0.5, 1.0, 2.0),
        "colour_threshold": (0.1, 0.15), "vote_fraction": (0.2, 0.25, 0.3, 0.35, 0.4)}


def room_cues(seed: int, work: Path) -> dict[str, np.ndarray]:
    """The cues of one 48-frame room (S, h, w) and its ground truth at the network pixels."""
    import stages.geometry.stage as stage
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.scene import load_scene
    from pipeline.scene.config import SceneConfig
    from pipeline.synthetic.writer import RoomSceneOptions, make_room_scene
    from stages.geometry.consistency import geometric_scores, photometric_scores

    scene = load_scene(SceneConfig(source=str(make_room_scene(work / f"room-{seed}", seed,
                                                              RoomSceneOptions(frames=48, width=256)))))
    seen: dict = {}
    masks, refine = stage.dynamic_masks, stage.refine_predicted_cameras

    def keep_masks(depth, K, w2c, params, confidence, head, device, images=None):
        seen.update(depth=depth, K=K, w2c=w2c, params=params, confidence=confidence, head=head)
        return masks(depth, K, w2c, params, confidence, head, device, images)

    def keep_frames(pred, prepared, head, cfg, device):
        seen.update(prepared=prepared)
        return refine(pred, prepared, head, cfg, device)

    stage.dynamic_masks, stage.refine_predicted_cameras = keep_masks, keep_frames
    try:
        run_pipeline(load_config("default", ["device=cpu", "geometry.cameras=model"]), work / f"run-{seed}", scene,
                     until_stage="geometry")
    finally:
        stage.dynamic_masks, stage.refine_predicted_cameras = masks, refine
    truth = []
    for mapping, frame in zip(seen["prepared"].mappings, sorted(scene.frames, key=lambda f: f.index)):
        stored = np.asarray(frame.load_dynamic_mask(), bool)
        W, H = mapping.net_size
        cols = np.floor(mapping.scale_x * (np.arange(W) + 0.5 - mapping.offset_x)).astype(int)
        rows = np.floor(mapping.scale_y * (np.arange(H) + 0.5 - mapping.offset_y)).astype(int)
        truth.append(stored[np.clip(rows, 0, stored.shape[0] - 1)][:, np.clip(cols, 0, stored.shape[1] - 1)])
    tensors = [torch.as_tensor(seen[k]) for k in ("depth", "K", "w2c")]
    geometric, counts = geometric_scores(*tensors, seen["params"], torch.as_tensor(seen["confidence"]))
    cues = {"truth": np.stack(truth), "head": seen["head"], "geometric": geometric.numpy(),
            "geometric_counts": counts.numpy()}
    images = seen["prepared"].batch(slice(None))
    for threshold in GRID["colour_threshold"]:
        score, valid = photometric_scores(images, *tensors, dataclasses.replace(seen["params"],
                                                                               colour_threshold=threshold))
        cues[f"photometric_{threshold:g}"], cues[f"photometric_counts_{threshold:g}"] = score.numpy(), valid.numpy()
    return cues


def rule(cues: dict, head_weight: float, photometric_weight: float, colour_threshold: float,
         vote_fraction: float) -> np.ndarray:
    """The fused rule of dynamic_masks on the stored cues."""
    fused = np.where(cues["geometric_counts"] > 0,
                     (1 - head_weight) * cues["geometric"] + head_weight * cues["head"], cues["head"])
    if photometric_weight > 0:
        votes = cues[f"photometric_{colour_threshold:g}"]
        fused = np.where(cues[f"photometric_counts_{colour_threshold:g}"] > 0,
                         (fused + photometric_weight * votes) / (1 + photometric_weight), fused)
    return fused > vote_fraction


def scores(moving: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp, fp, fn = (moving & truth).sum(), (moving & ~truth).sum(), (~moving & truth).sum()
    return {"iou": float(tp / max(tp + fp + fn, 1)), "recall": float(tp / max(tp + fn, 1)),
            "precision": float(tp / max(tp + fp, 1))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validation", type=int, nargs="+", default=[1000050, 1000051, 1000052])
    parser.add_argument("--evaluation", type=int, nargs="+", default=[1000000, 1000001, 1000002])
    parser.add_argument("--out", type=Path, default=RESULTS / "sweeps" / "mask_rule_sweep.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mask_rules_") as work:
        cues = {seed: room_cues(seed, Path(work)) for seed in args.validation + args.evaluation}
    rules = []
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(GRID, values))
        if setting["photometric_weight"] == 0 and setting["colour_threshold"] != GRID["colour_threshold"][0]:
            continue                                            # the threshold does nothing without the votes
        row = {"rule": setting}
        for group, seeds in (("validation", args.validation), ("evaluation", args.evaluation)):
            per_room = [scores(rule(cues[s], **setting), cues[s]["truth"]) for s in seeds]
            row[group] = {k: float(np.mean([r[k] for r in per_room])) for k in per_room[0]}
            row[group]["iou_per_room"] = [r["iou"] for r in per_room]
        rules.append(row)
    rules.sort(key=lambda r: -r["validation"]["iou"])
    cue_alone = {}
    for seed in args.validation + args.evaluation:
        c = cues[seed]
        cue_alone[str(seed)] = {"free_space_votes": scores(c["geometric"] > 0.2, c["truth"]),
                                "head_above_0.3": scores(c["head"] > 0.3, c["truth"])}
    print("| head weight | photometric weight | colour threshold | vote fraction | validation IoU | recall | "
          "precision | evaluation IoU |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rules[:12]:
        r, v, e = row["rule"], row["validation"], row["evaluation"]
        print(f"| {r['head_weight']} | {r['photometric_weight']} | {r['colour_threshold']} | {r['vote_fraction']} | "
              f"{v['iou']:.3f} | {v['recall']:.3f} | {v['precision']:.3f} | {e['iou']:.3f} |")
    record = {"benchmark": "mask_rule_sweep", **environment("cpu"), "grid": GRID,
              "validation_seeds": args.validation, "evaluation_seeds": args.evaluation,
              "cue_alone": cue_alone, "rules": rules}
    write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
