"""The planes field's sampler alone: forward + backward time of each way of gathering the corners, side by side in
one run (``stages.optimize.plane_sampler.METHODS``; ``gather``, the earlier formulation, is the baseline).

    python -m bench.plane_sampler_bench [--points 23000 70000 200000] [--repeats 50] [--json NAME]

The layout is the dnerf preset's planes field (``configs/dnerf.yaml``: spatial planes of 16 and 32 cells, 6 cells in
time, 16 features: 12 planes, 4704 table rows); points uniform in [-1, 1]^4, an upstream gradient of standard normal
noise. Times: CUDA events around ``repeats`` calls of forward + backward (table and coordinate gradients), after 5
warm-up calls, median of 5 rounds; on the CPU the wall clock. The values and gradients of every method are checked
against the first method's before timing (float32: 1e-4 relative). Writes
``bench/results/plane_sampler_<device>.json`` (or ``--json``), prints a table. The training step evaluates the
sampler twice per step (the displacement over 2 M points - M visible dynamic Gaussians at the render time and at
their anchor time - and the motion regulariser over 3 x its sample), so its cost per step is about two rows of this
table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.common import RESULTS, environment
from stages.optimize.deformation import Box, PlanesField
from stages.optimize.plane_sampler import METHODS, sample_plane_products


def preset_field(device: str) -> PlanesField:
    """The dnerf preset's planes field (random table values: the cost does not depend on them)."""
    field = PlanesField(Box(), resolutions=(16, 32), time_resolution=6, features=16, head_width=64).to(device)
    with torch.no_grad():
        field.table.uniform_(0.1, 1.0)
    return field


def time_method(method: str, table: torch.Tensor, coords: torch.Tensor, upstream: torch.Tensor, layout,
                repeats: int, rounds: int = 5) -> list[float]:
    """Milliseconds per forward + backward call, one figure per round."""
    def once():
        out = sample_plane_products(table, coords, layout, method=method)
        torch.autograd.grad(out, [table, coords], upstream)

    for _ in range(5):
        once()
    per_round = []
    for _ in range(rounds):
        if table.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                once()
            end.record()
            torch.cuda.synchronize()
            per_round.append(start.elapsed_time(end) / repeats)
        else:
            begin = time.perf_counter()
            for _ in range(repeats):
                once()
            per_round.append(1000 * (time.perf_counter() - begin) / repeats)
    return per_round


def check_agreement(table, coords, upstream, layout) -> None:
    """Every method's values and gradients against the first's (float32 rounding)."""
    results = {}
    for method in METHODS:
        out = sample_plane_products(table, coords, layout, method=method)
        results[method] = (out, *torch.autograd.grad(out, [table, coords], upstream))
    reference = results[METHODS[0]]
    for method, got in results.items():
        for name, a, b in zip(("values", "table gradient", "coordinate gradient"), got, reference):
            scale = b.abs().max().clamp_min(1e-12)
            if (a - b).abs().max() > 1e-4 * scale:
                raise SystemExit(f"plane_sampler_bench: {method} disagrees with {METHODS[0]} on the {name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[23_000, 70_000, 200_000])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    where = environment(args.device)
    field = preset_field(args.device)
    table, layout = field.table, field.layout
    gen = torch.Generator(device=args.device).manual_seed(0)
    rows = []
    for m in args.points:
        coords = (torch.rand(m, 4, generator=gen, device=args.device) * 2 - 1).requires_grad_(True)
        upstream = torch.randn(m, layout.levels, table.shape[1], generator=gen, device=args.device)
        check_agreement(table, coords, upstream, layout)
        for method in METHODS:
            rounds = time_method(method, table, coords, upstream, layout, args.repeats)
            peak = None
            if args.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                out = sample_plane_products(table, coords, layout, method=method)
                torch.autograd.grad(out, [table, coords], upstream)
                torch.cuda.synchronize()
                peak = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
            rows.append({"points": m, "method": method, "ms_forward_backward": round(statistics.median(rounds), 4),
                         "ms_rounds": [round(r, 4) for r in rounds], "peak_extra_mib": peak})
    baseline = {r["points"]: r["ms_forward_backward"] for r in rows if r["method"] == "gather"}
    for r in rows:
        r["speedup_over_gather"] = round(baseline[r["points"]] / r["ms_forward_backward"], 2)
    print(f"Plane sampler, forward + backward ({where.get('device')}; dnerf preset layout: 12 planes, 16 features)")
    print(f"{'points':>8s} {'method':22s} {'ms':>9s} {'x gather':>9s} {'peak MiB':>9s}")
    for r in rows:
        print(f"{r['points']:8d} {r['method']:22s} {r['ms_forward_backward']:9.3f} {r['speedup_over_gather']:9.2f} "
              f"{'' if r['peak_extra_mib'] is None else r['peak_extra_mib']:>9}")
    record = {"benchmark": "plane_sampler", "environment": where, "about": __doc__.split("\n\n")[0],
              "setting": {"layout": "dnerf preset: resolutions (16, 32), 6 time cells, 16 features",
                          "repeats": args.repeats, "rounds": 5, "timing": "CUDA events" if args.device == "cuda"
                          else "wall clock"}, "rows": rows}
    out = RESULTS / (args.json or f"plane_sampler_{where['device_type']}.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
