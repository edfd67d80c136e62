"""The benchmark suite: ``python -m bench.run gpu`` (``make bench``), ``python -m bench.run cpu`` (``make bench-cpu``).

    python -m bench.run gpu [--only STEP,...] [--skip STEP,...]     # every GPU step, in order
    python -m bench.run cpu [--only STEP,...] [--skip STEP,...]     # what fits on a CPU
    python -m bench.run --list                                      # the steps and their exact commands
    python -m bench.run NAME [ARGS...]                              # one script: bench/NAME_bench.py or bench/NAME.py

Each step runs ``python -m bench.<module> ARGS`` in its own process and writes ``bench/results/*.json``; a step that
fails is reported and the suite goes on. A step that needs something the host lacks (the official PAGE-4D checkout
in $PAGE4D_OFFICIAL) is skipped with the reason. The suite's own record, ``bench/results/suite_GROUP.json``, lists
each step's command, exit code and wall time. ``python -m bench.summarize`` then regenerates bench/README.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.common import REPO, RESULTS, environment

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Step:
    name: str
    module: str                     # bench.<module>
    args: tuple[str, ...]
    about: str
    results: str                    # the results file it writes (FILE:SECTION where it updates one section)
    needs_env: Optional[str] = None  # an environment variable that must name an existing path
    # Commands for a GPU host reached through calls of at most 10 minutes (scripts/gpu_host.sh), where the step
    # needs more than `scripts/gpu_host.sh gpu --only NAME`: split over calls, or data carried along.
    host_calls: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return [sys.executable, "-m", f"bench.{self.module}", *self.args]

    def gpu_host_commands(self) -> tuple[str, ...]:
        return self.host_calls or (f"scripts/gpu_host.sh gpu --only {self.name}",)

    def missing(self) -> Optional[str]:
        if self.needs_env and not Path(os.environ.get(self.needs_env, "") or "/nonexistent").exists():
            return f"${self.needs_env} does not name an existing path"
        return None


GROUPS: dict[str, tuple[Step, ...]] = {
    # The order of issue 8: geometry, rasterizer, the synthetic suite end to end, the real clip end to end; then the
    # optimize-stage figures, the generator's throughput, page4d-tiny's evaluation and the evaluation costs.
    "gpu": (
        Step("geometry", "geometry_bench", ("--gpu",),
             "PAGE-4D 50/100/200 frames at 518x518 and 100 at 518x294 (ours beside the official code when "
             "$PAGE4D_OFFICIAL names its checkout), 1000 frames windowed", results="geometry.json",
             host_calls=tuple(f"PAGE4D_OFFICIAL=.official/PAGE4D scripts/gpu_host.sh geometry --gpu {sizes}"
                              for sizes in ("--sizes 50x518x518,100x518x518,100x518x294 --long-frames 0",
                                            "--merge --sizes 200x518x518 --long-frames 0",
                                            "--merge --sizes 50x518x518 --long-frames 1000"))),
        Step("rasterizer", "rasterizer_bench", ("--gpu",), "parity with gsplat and speed of both backends",
             results="rasterizer_gpu.json"),
        Step("e2e-synthetic", "e2e_bench", ("synthetic",),
             "make-scene object/room seeds 0 1, every deformation model and the static one, end to end",
             results="e2e_synthetic.json"),
        Step("e2e-lady-running", "e2e_bench", ("lady-running",), "the real clip, every 8th frame held out, end to end",
             results="e2e_lady_running.json",
             host_calls=("PAGE4DGS_LADY_RUNNING=.cache/lady-running scripts/gpu_host.sh gpu --only e2e-lady-running",)),
        Step("optimize", "optimize_bench", ("--gpu", "--only", "speed,render,scene"),
             "training it/s and render fps at 100k Gaussians per deformation model, 100-frame 400x400 scene time",
             results="optimize.json"),
        Step("optimize-scaling", "optimize_scaling_bench", ("--gpu",), "training step cost against Gaussian count",
             results="optimize_scaling_gpu.json"),
        Step("plane-sampler", "plane_sampler_bench", (), "the planes field's sampler, forward + backward, each way of "
             "gathering its corners beside the earlier gather", results="plane_sampler_cuda.json"),
        Step("synthetic", "synthetic_bench", ("--gpu",), "training-batch generator throughput",
             results="synthetic.json:gpu"),
        Step("page4d-tiny", "train_eval_bench", ("--gpu",), "page4d-tiny held-out evaluation beside two baselines",
             results="page4d_tiny_eval.json"),
        Step("evaluate", "evaluate_bench", ("--gpu",), "evaluation cost per view (LPIPS on CUDA and CPU)",
             results="evaluate_gpu.json"),
    ),
    "cpu": (
        Step("e2e-demo", "e2e_bench", ("demo", "--device", "cpu"),
             "make reconstruct on the demo scene (default model and static), per-stage time and memory",
             results="e2e_demo.json"),
        Step("rasterizer", "rasterizer_bench", ("--cpu",), "the PyTorch rasterizer, 1 and 2 threads",
             results="rasterizer_cpu.json"),
        Step("geometry", "geometry_bench", ("--cpu",), "page4d-tiny (bundled weights) on 48 demo frames",
             results="geometry_cpu.json"),
        Step("camera-refinement", "camera_refinement_bench", (),
             "model cameras of 6 held-out rooms with and without the photometric refinement, against the truth",
             results="camera_refinement.json"),
        Step("synthetic", "synthetic_bench", ("--cpu",), "demo scene generation time", results="synthetic.json:cpu"),
        Step("optimize-scaling", "optimize_scaling_bench", ("--cpu",), "training step cost against Gaussian count",
             results="optimize_scaling_cpu.json"),
        Step("adam-cpu", "adam_cpu_bench", (), "the optimize stage's Adam step on the CPU, fused against torch's "
             "default", results="adam_cpu.json"),
        Step("lpips-parity", "lpips_parity_bench", (), "LPIPS-alex against the official values, 5 fixture pairs",
             results="lpips_parity.json"),
        Step("page4d-parity", "page4d_parity", (), "our PAGE-4D against the official code, float32",
             results="page4d_parity.json", needs_env="PAGE4D_OFFICIAL"),
    ),
}


def scripts() -> list[str]:
    """Benchmark scripts runnable by name: NAME for bench/NAME_bench.py, and the other bench modules."""
    names = {p.stem.removesuffix("_bench") for p in BENCH_DIR.glob("*_bench.py")}
    names |= {p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_") and not p.stem.endswith("_bench")}
    return sorted(names - {"run", "common", "summarize", "plots"})


def run_script(name: str, args: list[str]) -> int:
    module = f"{name}_bench" if (BENCH_DIR / f"{name}_bench.py").is_file() else name
    if not (BENCH_DIR / f"{module}.py").is_file() or name not in scripts():
        print(f"bench: no benchmark named '{name}' (groups: {', '.join(GROUPS)}; scripts: {', '.join(scripts())})",
              file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", f"bench.{module}", *args]
    print(f"$ {shlex.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=REPO)


def call_step(argv: list[str], grace_s: float = 10.0) -> Optional[int]:
    """Run one step in its own process group; returns its exit code, or None when this process is interrupted
    (Ctrl-C, or SIGINT from a time budget): the whole group then gets SIGINT (a step's own children too, e.g. the
    reconstructions of an end-to-end suite), and whatever is left after ``grace_s`` seconds is killed."""
    process = subprocess.Popen(argv, cwd=REPO, start_new_session=True)
    try:
        return process.wait()
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def run_group(group: str, only: list[str], skip: list[str]) -> int:
    steps = [s for s in GROUPS[group] if (not only or s.name in only) and s.name not in skip]
    unknown = set(only + skip) - {s.name for s in GROUPS[group]}
    if unknown:
        print(f"bench: group '{group}' has no step {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    path = RESULTS / f"suite_{group}.json"
    env = environment("cuda" if group == "gpu" else "cpu")
    # A partial run (--only / --skip) updates its steps in the group's record and keeps the others' entries.
    kept = {}
    if (only or skip) and path.is_file():
        try:
            kept = {e["name"]: e for e in json.loads(path.read_text()).get("steps", [])}
        except (ValueError, KeyError, TypeError):
            kept = {}
    record = {"benchmark": "suite", "group": group, "environment": env, "steps": []}

    def write() -> None:
        ran = {e["name"]: e for e in record["steps"]}
        steps_now = [ran.get(s.name) or kept[s.name] for s in GROUPS[group] if s.name in ran or s.name in kept]
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**record, "steps": steps_now}, indent=2) + "\n")

    for step in steps:
        entry = {"name": step.name, "command": shlex.join(step.argv()), "about": step.about, "date": env["date"],
                 "git_commit": env.get("git_commit")}
        reason = step.missing()
        if reason:
            entry.update(status="skipped", reason=reason)
            print(f"\n=== {step.name}: skipped ({reason})", flush=True)
        else:
            print(f"\n=== {step.name}: {step.about}\n$ {entry['command']}", flush=True)
            start = time.perf_counter()
            code = call_step(step.argv())
            entry.update(status={0: "ok", None: "interrupted"}.get(code, "failed"), returncode=code,
                         seconds=round(time.perf_counter() - start, 1))
            if code:
                print(f"=== {step.name} failed with exit code {code}; going on", flush=True)
        record["steps"].append(entry)
        write()
        if entry["status"] == "interrupted":
            print(f"=== {step.name} interrupted; the suite stops here (what it wrote so far is kept)", flush=True)
            return 130
    print(f"\n{'step':<18} {'status':<8} {'seconds':>8}")
    for e in record["steps"]:
        print(f"{e['name']:<18} {e['status']:<8} {e.get('seconds', ''):>8}")
    return 1 if any(e["status"] == "failed" for e in record["steps"]) else 0


def print_steps() -> None:
    for group, steps in GROUPS.items():
        print(f"{group}:")
        for step in steps:
            needs = f"  [needs ${step.needs_env}]" if step.needs_env else ""
            print(f"  {step.name:<18} {shlex.join(['python', '-m', 'bench.' + step.module, *step.args])}{needs}\n"
                  f"  {'':<18} {step.about}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "--list":
        print_steps()
        return 0
    name, rest = argv[0], argv[1:]
    if name in GROUPS:
        options = {"--only": [], "--skip": []}
        while rest:
            flag = rest.pop(0)
            if flag not in options or not rest:
                print(f"bench: a group takes --only STEP,... and --skip STEP,...; got '{flag}'", file=sys.stderr)
                return 2
            options[flag] += [s for s in rest.pop(0).split(",") if s]
        return run_group(name, options["--only"], options["--skip"])
    return run_script(name, rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
