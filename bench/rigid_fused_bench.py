"""What compiling the rigid model's motions costs and saves in training: the optimize stage's own clock on a real
object scene, per way of computing them, one after another in one run.

    python -m bench.rigid_fused_bench [--variants eager tables all] [--steps 3000] [--seed 0] [--json NAME]

Variants (``optimize.*`` settings):
- ``eager``: ``rigid_fused_tables=false`` (the baseline: every operator a kernel launch);
- ``tables``: ``rigid_fused_tables=true`` (the default: the tables of (anchor times x motions) compiled);
- ``all``: also ``rigid_fused_all=true`` (the visible subset's whole displacement and the motion regulariser).

Each variant runs ``page4dgs reconstruct`` on ``page4dgs make-scene object --seed SEED --frames 50 --test-views
20`` (issue #6's protocol) with ``--config dnerf optimize.deformation=rigid optimize.iterations=STEPS``, up to the
optimize stage, in its own process (a fresh compilation each: inductor's on-disk cache is pointed at a new folder
per variant, as on a fresh host). From the trainer's ``log.csv`` (training seconds at each flush, set-up and
checkpoints excluded): the seconds at every 500 steps, so that the first window shows the compilation and the
later ones the cost per step; and the dynamo recompilations logged. Needs CUDA for the compiled variants to differ
(the fusion is a GPU-only path). Writes ``bench/results/rigid_fused_<device>.json`` (or ``--json``), prints a
table. Exits 1 when a variant's run failed (its row keeps the return code).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, RESULTS, environment

VARIANTS = {
    "eager": ["optimize.rigid_fused_tables=false"],
    "tables": ["optimize.rigid_fused_tables=true", "optimize.rigid_fused_all=false"],
    "all": ["optimize.rigid_fused_tables=true", "optimize.rigid_fused_all=true"],
}
WINDOW = 500                                                 # steps per window of the table


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def seconds_at(log_csv: Path, window: int) -> dict[int, float]:
    """Training seconds after every ``window`` steps (and at the last step) from a trainer's log.csv."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = {int(r["step"]) + 1: float(r["seconds"]) for r in rows}       # steps done -> training seconds
    last = max(seconds)
    return {steps: round(value, 2) for steps, value in sorted(seconds.items()) if steps % window == 0 or steps == last}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="")
    parser.add_argument("--workdir", type=Path, default=None, help="scene and runs (default: a temporary folder)")
    args = parser.parse_args(argv)
    where = environment()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rigid-fused-"))
    scene = work / f"object-s{args.seed}"
    if not (scene / "transforms_train.json").is_file():
        subprocess.run(cli("make-scene", "object", "--out", str(scene), "--seed", str(args.seed), "--frames", "50",
                           "--test-views", "20"), check=True, cwd=REPO)
    record = {"benchmark": "rigid_fused", "environment": where, "about": __doc__.split("\n\n")[0],
              "setting": {"scene": f"make-scene object --seed {args.seed} --frames 50 --test-views 20",
                          "steps": args.steps, "window": WINDOW}, "rows": []}
    out = RESULTS / (args.json or f"rigid_fused_{where['device_type']}.json")
    for name in args.variants:
        run = work / f"run-{name}"
        shutil.rmtree(run, ignore_errors=True)
        env = {**os.environ, "TORCH_LOGS": "recompiles", "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{name}")}
        command = cli("reconstruct", str(scene), "--out", str(run), "--config", "dnerf", "--until", "optimize",
                      "optimize.deformation=rigid", f"optimize.iterations={args.steps}", *VARIANTS[name])
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
        log = done.stdout + done.stderr
        if done.returncode != 0:
            print(log[-3000:], file=sys.stderr)
        at = seconds_at(run / "optimize" / "log.csv", WINDOW) if (run / "optimize" / "log.csv").is_file() else {}
        marks = sorted(at)
        steady = ([round(1000 * (at[b] - at[a]) / (b - a), 1) for a, b in zip(marks, marks[1:])]
                  if len(marks) > 1 else [])
        record["rows"].append({"variant": name, "overrides": VARIANTS[name], "returncode": done.returncode,
                               "wall_s": round(time.perf_counter() - start, 1),
                               "recompilations": log.count("Recompiling function"),
                               "train_seconds_at_step": at, "ms_per_step_by_window": steady})
        out.write_text(json.dumps(record, indent=1) + "\n")          # kept as it goes: a stopped run keeps rows
    print(f"{'variant':8s} {'first ' + str(WINDOW) + ' steps s':>18s} {'ms/step, later windows':>28s} "
          f"{'total s':>8s} {'recompiles':>10s}")
    for row in record["rows"]:
        at = row["train_seconds_at_step"]
        first = at.get(WINDOW, float("nan"))
        print(f"{row['variant']:8s} {first:18.1f} {'/'.join(f'{x:g}' for x in row['ms_per_step_by_window']):>28s} "
              f"{max(at.values(), default=float('nan')):8.1f} {row['recompilations']:10d}")
    print(f"wrote {out}")
    return 1 if any(row["returncode"] != 0 for row in record["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
