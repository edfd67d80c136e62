"""The cost of one deformation: forward and backward of ``displacement`` for every dynamic Gaussian at one render
time, per model, beside the baselines of the rigid model's faster forms:

- ``rigid``: all Gaussians, anchor groups kept (``AnchorGroups``), eager; ``rigid-fused`` the same with the tables
  compiled (``optimize.rigid_fused_tables``, as training on a GPU computes them); baselines ``rigid-gather`` (one
  gather of K maps per Gaussian, the thirty-first session's form) and ``rigid-pointwise`` (each point moved by each
  basis, positions only, so a little less work than the model, which also turns the rotations);
- ``rigid-visible`` / ``rigid-visible-fused``: as training renders call it, a random ``--visible`` fraction of the
  Gaussians (those ``optimize.skip_invisible`` deforms; a new tensor every step, whose distinct anchor times are
  found at each call), eager / with the tables compiled (``optimize.rigid_fused_tables``, the default) / with the
  whole displacement compiled (``rigid-visible-fused-all``, ``optimize.rigid_fused_all``); baseline
  ``rigid-visible-rows`` (one table row per Gaussian, the thirty-first session's);
- ``rigid-motion`` / ``rigid-motion-fused``: the motion regulariser (second differences of 4,096 Gaussians at random
  times, as the step draws them), eager / compiled (``optimize.rigid_fused_all``); baseline ``rigid-motion-maps``
  (composing the two times' affine maps, the thirty-first session's).

    python -m bench.deformation_bench [--device cpu|cuda] [--gaussians 15000] [--anchors 50] [--repeats 20]
                                      [--models bases rigid rigid-fused rigid-visible ...] [--visible 0.12]
                                      [--threads 1] [--json NAME]

Each model gets random per-Gaussian parameters and moved shared parameters, anchor times on ``--anchors`` training
times, and a loss summing the squared displacement; the time per call is the median over ``--repeats`` calls after
three warm-up calls (CUDA: synchronised). This is the deformation alone, not a training step (rasterization and the
optimizer are left out: ``bench.optimize_bench --gpu --only speed`` times whole steps). Writes
``bench/results/deformation_<device>.json`` (or ``--json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.common import RESULTS, environment
from stages.optimize.deformation import AnchorGroups, Box, RigidBases, build_deformation, rigid_positions_reference

MOTION_SAMPLES = 4096                             # Gaussians per motion-regulariser term (stages/optimize/trainer.py)
VISIBLE = 0.12         # share of dynamic Gaussians visible at one time in the speed setting (docs/gaussians.md)


def gathered_mix(groups: AnchorGroups, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Baseline of :meth:`AnchorGroups.mix`: each Gaussian's K maps gathered (M, K, C), then blended."""
    rows = torch.div(groups.slots, max(groups.width, 1), rounding_mode="floor")            # (M,) its group
    return torch.bmm(weights.unsqueeze(1), table.index_select(0, rows)).squeeze(1)        # (M, C)


def second_difference_by_maps(model: RigidBases, means, times, step, coefs) -> torch.Tensor:
    """Baseline of :meth:`RigidBases.second_difference` (positions, (M, 3)): the affine maps from each Gaussian's
    anchor time to t - h, t and t + h, blended, applied and differenced."""
    m = times.shape[0]
    at = model.basis_weights(torch.cat([times - step, times, times + step]))                 # (3M, knots)
    anchors = model.basis_weights(coefs["anchor_times"].to(times.dtype)).repeat(3, 1)
    positions, _ = model.blend(means.repeat(3, 1), model.transforms(at, anchors), None,
                               coefs["rigid_logits"].repeat(3, 1))
    before, now, after = positions.view(3, m, 3).unbind(0)
    return before - 2 * now + after

SPECS = {
    "bases": {"kind": "bases", "count": 4, "knots": 16},                      # configs/dnerf.yaml
    "rigid": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-fused": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-visible": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-visible-fused": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-visible-fused-all": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-visible-rows": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-gather": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-pointwise": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-motion": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-motion-fused": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-motion-maps": {"kind": "rigid", "count": 32, "knots": 16},
    "mlp": {"kind": "mlp", "width": 256, "depth": 4, "position_octaves": 8, "time_octaves": 2},
    "planes": {"kind": "planes", "resolutions": [16, 32], "time_resolution": 6, "features": 16, "head_width": 64},
}


def time_model(name: str, gaussians: int, anchors: int, repeats: int, device: torch.device,
               profile: bool = False, visible: float = VISIBLE) -> float:
    """Median seconds of one forward + backward of the displacement of ``gaussians`` Gaussians (the ``*-visible``
    rows: of a random ``visible`` fraction of them, a new subset each call)."""
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(gaussians, 3, generator=generator).to(device)
    anchor_times = (torch.randint(0, anchors, (gaussians,), generator=generator) / max(anchors - 1, 1)).to(device)
    model = build_deformation(SPECS[name], Box.around(means)).to(device)
    coefs = {k: (torch.randn(gaussians, *shape, generator=generator) * 0.1).to(device).requires_grad_()
             for k, shape in model.per_gaussian_shapes().items()}
    if model.kind == "rigid":
        coefs["rigid_logits"] = model.initialize(means)["rigid_logits"].requires_grad_()
        coefs["quats"] = torch.randn(gaussians, 4, generator=generator).to(device).requires_grad_()
        coefs["anchor_times"] = anchor_times
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator).to(device) * 0.1)
    if name in ("rigid-fused", "rigid-visible-fused", "rigid-visible-fused-all", "rigid-motion-fused"):
        model.fuse_tables("inductor", everything=name.endswith("-all") or name == "rigid-motion-fused")
        # (compiled in the warm-up calls)

    pick = torch.randperm(gaussians, generator=generator)[:MOTION_SAMPLES].to(device)

    def call(i: int) -> None:
        time_now = 0.3 + 0.4 * (i % 50) / 50                                     # another render time each call
        if name == "rigid-pointwise":
            loss = (rigid_positions_reference(model, means, time_now, anchor_times, coefs["rigid_logits"])
                    - means).square().sum()
        elif name in ("rigid-motion", "rigid-motion-fused", "rigid-motion-maps"):
            times = torch.rand(len(pick), generator=generator).to(device) * 0.9 + 0.05
            motion_coefs = {k: v[pick] for k, v in coefs.items()}                # as the step picks them
            second = (second_difference_by_maps(model, means[pick], times, 0.02, motion_coefs)
                      if name == "rigid-motion-maps" else model.second_difference(means[pick], times, 0.02,
                                                                                  motion_coefs)[:, :3])
            loss = second.square().sum()
        elif name.startswith("rigid-visible"):         # as training renders with skip_invisible: a subset, no cache
            count = int(visible * gaussians) + i % 3                      # sizes vary, as the visible set does
            rows = torch.randperm(gaussians, generator=generator)[:count].to(device)
            when = torch.full((count,), time_now, device=device) if name == "rigid-visible-rows" else time_now
            loss = model.displacement(means[rows], when, anchor_times[rows], {k: v[rows] for k, v in coefs.items()},
                                      cache=False).square().sum()
        else:
            loss = model.displacement(means, time_now, anchor_times, coefs).square().sum()
        loss.backward()

    seconds = []
    profiler = None
    for i in range(3 + repeats):
        if profile and i == 3:
            activities = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
            profiler = torch.profiler.profile(activities=activities)
            profiler.__enter__()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            seconds.append(time.perf_counter() - start)
    if profiler is not None:
        profiler.__exit__(None, None, None)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        events = profiler.key_averages()
        calls = sum(e.count for e in events if e.key.startswith("aten::")) / repeats
        print(events.table(sort_by=key, row_limit=10))
        print(f"{name}: {calls:.0f} aten operator calls per forward and backward")
    return statistics.median(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--gaussians", type=int, default=15000)
    parser.add_argument("--anchors", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on the CPU (1: what training on a CPU uses, optimize.cpu_threads)")
    parser.add_argument("--json", default="")
    parser.add_argument("--visible", type=float, default=VISIBLE,
                        help="the fraction of the Gaussians the *-visible rows deform per call")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's ten costliest operators of each model's timed calls and "
                             "the operator calls per call")
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs CUDA")
    device = torch.device(args.device)
    record = {"benchmark": "deformation", "environment": environment(args.device),
              "setting": {"gaussians": args.gaussians, "anchor_times": args.anchors, "repeats": args.repeats,
                          "torch_threads": torch.get_num_threads()},
              "about": __doc__.split("\n\n")[0], "rows": []}
    out = RESULTS / (args.json or f"deformation_{args.device}.json")
    for name in args.models:                          # the file is rewritten after each model: a stopped run keeps
        mix = AnchorGroups.mix                                                               # what it measured
        if name == "rigid-gather":
            AnchorGroups.mix = gathered_mix
        try:
            seconds = time_model(name, args.gaussians, args.anchors, args.repeats, device, args.profile,
                                 args.visible)
        finally:
            AnchorGroups.mix = mix
        record["rows"].append({"model": name, "spec": SPECS[name], "ms_per_forward_backward": round(seconds * 1000, 3)})
        print(f"{name:16s} {seconds * 1000:9.2f} ms")
        out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
