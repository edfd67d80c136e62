"""The optimize stage's Adam step on the CPU: ``torch.optim.Adam`` as torch builds it there by default (one tensor at
a time, no fused kernel) against :class:`stages.optimize.fused_adam.LeanFusedAdam` (torch's fused CPU kernel, the
stage's optimizer on every device since the forty-third session), side by side in one run.

    python -m bench.adam_cpu_bench [--gaussians 40000] [--steps 50] [--json NAME]

Parameter groups shaped like the splats of ``--gaussians`` Gaussians at SH degree 3 (means 3, quats 4, scales 3,
opacities, sh0 1x3, shN 15x3, time scales 1), a group each, as ``build_optimizer`` makes them; gradients of standard
normal noise, fixed per step. Each optimizer runs in a fresh interpreter (one thread), so its first step includes
what that step imports (``torch.optim.Adam``'s first step imports ``torch._dynamo``): first step in seconds, then
the median of ``--steps`` steps in milliseconds, and whether the compiler was imported. The two runs' parameters
after all steps are compared (the fused kernel rounds differently). Writes ``bench/results/adam_cpu.json`` (or
``--json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from bench.common import REPO, RESULTS, environment
from pipeline.io import write_json

SHAPES = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (), "sh0": (1, 3), "shN": (15, 3),
          "time_log_scales": ()}
METHODS = ("torch.optim.Adam", "LeanFusedAdam")


def run(method: str, gaussians: int, steps: int) -> dict:
    """One optimizer's timings (this process), and its parameters after the steps."""
    from stages.optimize.fused_adam import LeanFusedAdam

    generator = torch.Generator().manual_seed(0)
    params = {k: torch.randn(gaussians, *shape, generator=generator).requires_grad_() for k, shape in SHAPES.items()}
    grads = [{k: torch.randn(p.shape, generator=generator) for k, p in params.items()} for _ in range(2)]
    groups = [{"name": k, "params": [p], "lr": 1e-3} for k, p in params.items()]
    make = LeanFusedAdam if method == "LeanFusedAdam" else torch.optim.Adam
    times = []
    start = time.perf_counter()
    optimizer = make(groups, eps=1e-15)
    for step in range(steps + 1):
        for k, p in params.items():
            p.grad = grads[step % 2][k]
        if step:
            start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"method": method, "first_step_s": times[0], "step_ms": statistics.median(times[1:]) * 1e3,
            "compiler_imported": "torch._dynamo" in sys.modules,
            "fused": all(bool(g.get("fused")) for g in optimizer.param_groups),
            "params": {k: p.detach() for k, p in params.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=40_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", default="adam_cpu.json")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)     # one method in this process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        result = run(args.child, args.gaussians, args.steps)
        torch.save(result, args.out)
        return 0
    import tempfile
    rows, params = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, method in enumerate(METHODS):
            out = f"{tmp}/{i}.pt"
            subprocess.run([sys.executable, "-m", "bench.adam_cpu_bench", "--child", method, "--out", out,
                            "--gaussians", str(args.gaussians), "--steps", str(args.steps)], cwd=REPO, check=True)
            result = torch.load(out, weights_only=True)
            params.append(result.pop("params"))
            rows.append(result)
    difference = max((params[0][k] - params[1][k]).abs().max().item() for k in SHAPES)
    print(f"Adam on the CPU, {len(SHAPES)} groups shaped like {args.gaussians} Gaussians' splats, one thread")
    print(f"{'optimizer':<18} {'fused':>5} {'first step s':>12} {'step ms':>8} {'imports compiler':>16}")
    for r in rows:
        print(f"{r['method']:<18} {str(r['fused']):>5} {r['first_step_s']:>12.3f} {r['step_ms']:>8.2f} "
              f"{str(r['compiler_imported']):>16}")
    print(f"largest parameter difference after {args.steps + 1} steps: {difference:.2e}")
    record = {"environment": environment("cpu"), "gaussians": args.gaussians, "steps": args.steps,
              "groups": {k: list(s) for k, s in SHAPES.items()}, "rows": rows,
              "max_param_difference": difference, "baseline": METHODS[0]}
    path = RESULTS / args.json
    write_json(path, record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
