"""The cost of one deformation: forward and backward of ``displacement`` for every dynamic Gaussian at one render
time, per model, beside the rigid model's point-by-point form (the baseline its matrix form replaced; positions only,
so it does a little less than the model, which also turns the rotations).

    python -m bench.deformation_bench [--device cpu|cuda] [--gaussians 15000] [--anchors 50] [--repeats 20]
                                      [--models bases rigid rigid-pointwise mlp planes] [--threads 1] [--json NAME]

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
from stages.optimize.deformation import Box, build_deformation, rigid_positions_reference

SPECS = {
    "bases": {"kind": "bases", "count": 4, "knots": 16},                      # configs/dnerf.yaml
    "rigid": {"kind": "rigid", "count": 32, "knots": 16},
    "rigid-pointwise": {"kind": "rigid", "count": 32, "knots": 16},
    "mlp": {"kind": "mlp", "width": 256, "depth": 4, "position_octaves": 8, "time_octaves": 2},
    "planes": {"kind": "planes", "resolutions": [16, 32], "time_resolution": 6, "features": 16, "head_width": 64},
}


def time_model(name: str, gaussians: int, anchors: int, repeats: int, device: torch.device) -> float:
    """Median seconds of one forward + backward of the displacement of ``gaussians`` Gaussians."""
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

    def call(i: int) -> None:
        time_now = 0.3 + 0.4 * (i % 50) / 50                                     # another render time each call
        if name == "rigid-pointwise":
            loss = (rigid_positions_reference(model, means, time_now, anchor_times, coefs["rigid_logits"])
                    - means).square().sum()
        else:
            loss = model.displacement(means, time_now, anchor_times, coefs).square().sum()
        loss.backward()

    seconds = []
    for i in range(3 + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            seconds.append(time.perf_counter() - start)
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
        seconds = time_model(name, args.gaussians, args.anchors, args.repeats, device)      # what it measured
        record["rows"].append({"model": name, "spec": SPECS[name], "ms_per_forward_backward": round(seconds * 1000, 3)})
        print(f"{name:16s} {seconds * 1000:9.2f} ms")
        out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
