"""How good could the per-time copies be if their motion were right? Optimizes an object scene with the scene's
true motion in place of a learned deformation, beside the learned one, and reports the held-out figures of both.

    python -m bench.oracle_motion SCENE OUT [KEY=VALUE ...] [--json NAME]   # SCENE: `page4dgs make-scene object`
    python -m bench.oracle_motion object:0 OUT [KEY=VALUE ...]               # or issue #6's scene of seed 0

The scene's generator is run again from ``SCENE/ground_truth/scene.json`` (seed and options), which gives every
primitive's pose and size at any time. Each dynamic Gaussian is given the primitive it lies on (the nearest
ground-truth surface point of its anchor time, ``ground_truth/points.npz``) and is carried from its anchor time t_a
to the render time t by that primitive's motion: x(t) = c(t) + R(t) (S(t) S(t_a)^-1 R(t_a)^T (x - c(t_a))), its
rotation turned by R(t) R(t_a)^T (S, the primitive's per-axis size, stands for the torso's breathing; the
Gaussians' scales are left as they are). Nothing of the motion is learned; everything else (initialization,
densification, losses, temporal opacity, evaluation) is the ``reconstruct`` command's, so the difference to a run
with the learned deformation (the same command and overrides, run first: ``OUT/learned``; then ``OUT/true-motion``)
is what learning the motion costs.

This is a diagnostic of the representation, not a method: it reads the scene's ground truth. It patches the
deformation model into ``page4dgs reconstruct`` in this process (kind ``oracle``, a name no config accepts) for
the second run. Prints both runs' headline figures and ``moving`` sections; ``--json`` also writes them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from stages.optimize import deformation as deformation_module
from stages.optimize.deformation import Deformation, quaternion_multiply


def rotation_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) [w, x, y, z] with w >= 0. Where the trace is
    positive (rotations under 120 degrees), the vector part from the antisymmetric part over 4 w, which stays exact
    near the identity; elsewhere from the diagonal with the antisymmetric part's signs."""
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    odd = torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    w = torch.sqrt((1 + trace).clamp_min(1e-12)) / 2
    near = torch.cat([w[..., None], odd / (4 * w[..., None])], dim=-1)
    diagonal = torch.stack([1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    far = torch.cat([w[..., None], torch.copysign(torch.sqrt(diagonal.clamp_min(0)) / 2, odd)], dim=-1)
    return torch.nn.functional.normalize(torch.where((trace > 0)[..., None], near, far), dim=-1)


class SceneMotion:
    """The true poses of an object scene's primitives at any time: centre (P, 3), rotation (P, 3, 3), size (P, 3)."""

    def __init__(self, scene_dir: Path):
        from pipeline.synthetic.writer import ObjectSceneOptions, object_scene

        info = json.loads((scene_dir / "ground_truth" / "scene.json").read_text())
        if info.get("kind") != "object":
            raise SystemExit(f"{scene_dir}: an object scene written by `page4dgs make-scene object` is needed")
        fields = ObjectSceneOptions.__dataclass_fields__
        options = ObjectSceneOptions(**{k: v for k, v in info["options"].items() if k in fields})
        self.spec = object_scene(int(info["seed"]), options).spec

    def at(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centres (T, P, 3), rotations (T, P, 3, 3), sizes (T, P, 3) at times (T,), float64."""
        from pipeline.synthetic.scenes import pose

        posed = pose(self.spec, times.double().cpu()[None].to(self.spec.offset.dtype))
        return (posed.translation[0].double(), posed.rotation[0].double(), posed.size[0].double())


class OracleMotion(Deformation):
    """Each dynamic Gaussian moves with the true motion of its primitive (per-Gaussian ``oracle_slot``)."""

    kind = "oracle"

    def __init__(self, scene_dir: str):
        super().__init__(False)
        self.scene_dir = scene_dir
        self.motion = SceneMotion(Path(scene_dir))

    def spec(self):
        return {"kind": self.kind, "scene_dir": self.scene_dir}

    def per_gaussian_shapes(self):
        return {"oracle_slot": ()}

    def per_gaussian_inputs(self):
        return ("quats", "anchor_times")

    def displacement(self, means, time, anchor_times, coefs, cache=True):
        times = deformation_module._times_like(time, anchor_times).detach()
        distinct, rows = torch.unique(torch.cat([times, anchor_times.detach()]), return_inverse=True)
        centre, rotation, size = (x.to(means.device) for x in self.motion.at(distinct))       # (U, P, ...)
        m = means.shape[0]
        slot = coefs["oracle_slot"].detach().round().long().clamp(0, centre.shape[1] - 1)   # (M,)
        now, then = rows[:m], rows[m:]
        c_t, r_t, s_t = centre[now, slot], rotation[now, slot], size[now, slot]
        c_a, r_a, s_a = centre[then, slot], rotation[then, slot], size[then, slot]
        local = torch.einsum("mji,mj->mi", r_a, means.double() - c_a) * (s_t / s_a)          # (M, 3)
        moved = c_t + torch.einsum("mij,mj->mi", r_t, local)                                 # (M, 3)
        turn = rotation_to_quaternion(r_t @ r_a.transpose(-1, -2)).to(means.dtype)          # (M, 4)
        quats = coefs["quats"]
        return torch.cat([moved.to(means.dtype) - means, quaternion_multiply(turn, quats) - quats,
                          means.new_zeros(m, 3)], dim=-1)

    def second_difference(self, means, times, step, coefs):
        return means.new_zeros(means.shape[0], self.channels)      # nothing learned: no motion regulariser


def primitive_slots(means: np.ndarray, anchors: np.ndarray, dynamic: np.ndarray, scene_dir: Path) -> np.ndarray:
    """The primitive (N,) of each dynamic Gaussian (means (N, 3), anchor times (N,), dynamic (N,) bool): that of the
    nearest ground-truth surface point of its anchor time; 0 for the others."""
    from scipy.spatial import cKDTree

    points = np.load(scene_dir / "ground_truth" / "points.npz")
    slots = np.zeros(len(means))
    for time in np.unique(anchors[dynamic]):
        here = dynamic & (np.abs(anchors - time) < 1e-6)
        near = (np.abs(points["time"] - time) < 1e-4) & points["is_dynamic"]
        if not near.any():
            raise SystemExit(f"{scene_dir}: no moving ground-truth point at time {time:.6f}, where "
                             f"{int(here.sum())} dynamic Gaussians are anchored")
        slots[here] = points["slot"][near][cKDTree(points["xyz"][near]).query(means[here])[1]]
    return slots


def assign_slots(model, scene_dir: Path) -> None:
    """Fill ``oracle_slot`` of a model built with :class:`OracleMotion` (:func:`primitive_slots`)."""
    splats = model.splats
    slots = primitive_slots(splats["means"].detach().cpu().numpy(), splats["anchor_times"].detach().cpu().numpy(),
                            splats["is_dynamic"].detach().cpu().numpy().astype(bool), scene_dir)
    with torch.no_grad():
        splats["oracle_slot"].copy_(torch.as_tensor(slots, dtype=splats["oracle_slot"].dtype))


def orbiter_slots() -> list[int]:
    """Slots of the object scene's orbiting rigid parts (the rest that moves is the articulated figure)."""
    from pipeline.synthetic.scenes import ORBITERS, object_layout

    layout = object_layout()
    return [layout.index(name) for name, _ in ORBITERS]


ARMS = ("learned", "true-motion")   # the runs main makes, in this order

MOTION_GAPS = (1, 3, 6)            # frame gaps at which motion_error compares the positions (6: the width floor)


@torch.no_grad()
def motion_error(run_dir: Path, scene_dir: Path, gaps=MOTION_GAPS, min_opacity: float = 0.05) -> dict:
    """How far a trained model's dynamic Gaussians are from where the true motion puts them, ``gaps`` training-frame
    gaps before and after their anchor times (those times that fall outside [0, 1] left out): the median and
    90th-percentile distance in world units over the dynamic Gaussians whose opacity is at least ``min_opacity``,
    beside the same for Gaussians left where they were (no motion), the medians again per part under ``parts``
    ('orbiters': the rigid parts circling the figure; 'figure': the articulated figure), and the median distance of
    those Gaussians from their centroid (the moving object's size)."""
    from stages.optimize.model import load_model

    model = load_model(run_dir / "optimize" / "model.pt")
    splats = model.splats
    opacity = torch.sigmoid(splats["opacities"])
    chosen = torch.nonzero(splats["is_dynamic"] & (opacity >= min_opacity)).squeeze(1)               # (M,)
    means, anchors = splats["means"][chosen], splats["anchor_times"][chosen]
    slots = primitive_slots(means.numpy(), anchors.numpy(), np.ones(len(chosen), bool), scene_dir)
    truth = OracleMotion(str(scene_dir))
    coefs = {"oracle_slot": torch.as_tensor(slots), "quats": splats["quats"][chosen], "anchor_times": anchors}
    distinct = torch.unique(anchors)
    gap = float(torch.diff(distinct).median()) if len(distinct) > 1 else 1.0
    rows = {"gaps": list(gaps), "learned_median": [], "still_median": [], "learned_p90": [], "still_p90": [],
            "gaussians": int(len(chosen))}
    orbiting = torch.as_tensor(np.isin(slots, orbiter_slots()))                                        # (M,) bool
    parts = {name: {"gaussians": int(mask.sum()), "learned_median": [], "still_median": []}
             for name, mask in (("orbiters", orbiting), ("figure", ~orbiting))}
    for k in gaps:
        learned, still, orbiter_rows = [], [], []
        for sign in (-1, 1):
            when = anchors + sign * k * gap                                                             # (M,)
            inside = (when >= 0) & (when <= 1)
            kept = torch.nonzero(inside).squeeze(1)
            part = {key: value[kept] for key, value in coefs.items()}
            true = means[kept] + truth.displacement(means[kept], when[kept], anchors[kept], part)[:, :3]
            ours = torch.empty_like(true)
            for value in torch.unique(when[kept]):             # positions_at_time takes one time per call
                at = torch.nonzero(when[kept] == value).squeeze(1)
                ours[at] = model.positions_at_time(float(value), chosen[kept[at]])
            learned.append((ours - true).norm(dim=-1))
            still.append((means[kept] - true).norm(dim=-1))
            orbiter_rows.append(orbiting[kept])
        on_orbiter = torch.cat(orbiter_rows)
        for name, values in (("learned", torch.cat(learned)), ("still", torch.cat(still))):
            rows[f"{name}_median"].append(float(values.median()))
            rows[f"{name}_p90"].append(float(torch.quantile(values.double(), 0.9)))
            for part, mask in (("orbiters", on_orbiter), ("figure", ~on_orbiter)):
                parts[part][f"{name}_median"].append(float(values[mask].median()) if mask.any() else float("nan"))
    rows["parts"] = parts
    rows["object_size"] = float((means - means.mean(0)).norm(dim=-1).median())
    rows["unit"] = "world units (the scene's); object_size: median distance of these Gaussians from their centroid"
    return rows


def reconstruct(scene_dir: Path, run_dir: Path, overrides: list[str]) -> dict:
    """``page4dgs reconstruct SCENE --out RUN --config dnerf OVERRIDES`` in this process; metrics.json's figures."""
    from pipeline.cli import main as cli

    code = cli(["reconstruct", str(scene_dir), "--out", str(run_dir), "--config", "dnerf", *overrides])
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
    return {"returncode": code, "psnr": metrics.get("psnr"), "ssim": metrics.get("ssim"),
            "lpips_alex": metrics.get("lpips_alex"), "lpips_vgg": metrics.get("lpips_vgg"),
            "moving": {k: v for k, v in metrics.get("moving", {}).items() if k != "per_view"},
            "optimize": manifest.get("stages", {}).get("optimize", {}).get("summary")}


def use_true_motion(scene_dir: Path, patch=setattr) -> None:
    """Patch the scene's true motion into this process's optimize stage (training, saving and loading); ``patch``
    (object, name, value) sets each attribute (pytest's ``monkeypatch.setattr`` undoes them after a test)."""
    import stages.optimize.model as model_module
    import stages.optimize.trainer as trainer

    build = deformation_module.build_deformation

    def build_deformation(spec, box=None):
        if spec is not None and spec.get("kind") == "oracle":
            return OracleMotion(spec["scene_dir"])
        return build(spec, box)

    build_model, rates = trainer.build_model, trainer.splat_learning_rates

    def build_model_with_slots(*args, **kwargs):
        model = build_model(*args, **kwargs)
        assign_slots(model, scene_dir)
        return model

    patch(model_module, "build_deformation", build_deformation)
    patch(trainer, "build_deformation", build_deformation)
    patch(trainer, "deformation_spec_from_config",
          lambda cfg, n_times: {"kind": "oracle", "scene_dir": str(scene_dir)})
    patch(trainer, "build_model", build_model_with_slots)
    patch(trainer, "splat_learning_rates",
          lambda cfg, scale: {**rates(cfg, scale), "oracle_slot": 0.0})                 # the slots are not learned


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", help="an object scene written by `page4dgs make-scene object`, or object:SEED to "
                                      "write issue #6's (50 training views, 20 test views, 200x200) into OUT/scene")
    parser.add_argument("out", type=Path, help="a new folder: runs 'learned' and 'true-motion' go in it")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs (KEY=VALUE)")
    parser.add_argument("--json", default="", help="results file in bench/results (default: print only)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="which runs, in this order (default both; on an H200 the true motion's run did not "
                             "finish 8000 steps in 270 s where the learned one took 119 s, so a host's 10 minutes "
                             "want one arm per call)")
    args = parser.parse_args(argv)
    from bench.common import RESULTS, environment

    if args.scene.startswith("object:"):            # as bench/e2e_bench.py writes the object scenes
        from bench.e2e_bench import SCENE_ARGS
        from pipeline.cli import main as cli

        scene = args.out / "scene"
        if not (scene / "transforms_train.json").is_file():
            cli(["make-scene", "object", "--out", str(scene), "--seed", args.scene.split(":", 1)[1],
                 *SCENE_ARGS["object"]])
        args.scene = scene
    args.scene = Path(args.scene)

    record = {"benchmark": "oracle_motion", "environment": environment(), "about": __doc__.split("\n\n")[0],
              "scene": str(args.scene), "command_overrides": ["--config", "dnerf", *args.overrides], "rows": []}
    for name in [arm for arm in ARMS if arm in args.arms]:
        if name == "true-motion":
            use_true_motion(args.scene)
        row = {"deformation": name, **reconstruct(args.scene, args.out / name, args.overrides)}
        if name == "learned" and (args.out / name / "optimize" / "model.pt").is_file():
            row["motion_error"] = motion_error(args.out / name, args.scene)
        record["rows"].append(row)
        if args.json:
            (RESULTS / args.json).write_text(json.dumps(record, indent=1) + "\n")
    for row in record["rows"]:
        moving = row["moving"]
        if row["psnr"] is None:                             # stopped or failed: no metrics to print
            print(f"{row['deformation']:12s} no metrics (return code {row['returncode']})")
            continue
        print(f"{row['deformation']:12s} PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.4f}  LPIPS-alex "
              f"{row['lpips_alex']:.4f}  moving pixels {moving.get('psnr_moving', float('nan')):.2f} dB, "
              f"error share on/around them {moving.get('error_share_moving', float('nan')):.2f} / "
              f"{moving.get('error_share_border', float('nan')):.2f}")
    learned = next((row.get("motion_error") for row in record["rows"] if row["deformation"] == "learned"), None)
    if learned:
        print(f"learned motion, median distance from the true position at {learned['gaps']} frame gaps from the "
              f"anchor: {[round(x, 4) for x in learned['learned_median']]} (left still: "
              f"{[round(x, 4) for x in learned['still_median']]}; object size {learned['object_size']:.3f})")
    return max(row["returncode"] for row in record["rows"])


if __name__ == "__main__":
    raise SystemExit(main())
