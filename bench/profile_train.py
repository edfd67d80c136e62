"""Where a training step of the geometry network spends its time, in one short GPU call.

    python -m bench.profile_train [--steps 60] [--profile-steps 20] [--config page4d-tiny] [key=value ...]

Measurements of the same recipe (``--config`` plus ``key=value`` overrides, default: the continuation recipe
of the bench's scaling run, 2-16 frames per sequence, 32 frames per step):

1. **data**: ``TrainingData.batch`` alone (the synthetic scenes rendered on the GPU, colour jitter), milliseconds per
   batch with a device synchronisation after each;
2. **steps**: an unprofiled run of ``--steps`` steps after a short warm-up run (cuDNN plans, allocator pools):
   milliseconds per step, the median over the log's windows of 10 steps after ``--warmup`` steps (what a long run
   sustains; the run's start - a data worker's start-up included - is left out), and the mean over the whole run;
3. **profile**: a ``torch.profiler`` run of ``--profile-steps`` steps: the device time of all kernels per step
   (what the GPU had to do), the host's time per step, how many host synchronisations a step makes
   (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize`` and device-to-host copies), the
   kernel launches per step, and the top operators by device time and by host time;
4. **syncs**: a run of ``--sync-steps`` steps under CUDA's sync debug mode, counting the synchronising operations by
   the line of this repository's code that called them.

``--count-ops`` instead counts, without a GPU, the aten operators each phase of a step dispatches (data, targets,
forward, losses, backward, clipping, optimizer; ``bench.optimize_ops.OpCounter``, views excluded from ``kernels``),
with the synthetic renderer tracing every frame at once as it does on CUDA (on the CPU it renders a frame at a
time), over ``--count-batches`` steps after one uncounted step. Writes ``profile_train_ops_cpu.json``.

If seconds per step is well above the kernels' device time per step, the step is bound by the host (Python,
launches, synchronisations); otherwise by the GPU. Writes ``bench/results/profiles/profile_train_<device>.json``
(``--out`` to change) with the environment and the tables as text.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import environment
from pipeline.io import write_json

RESULTS = Path(__file__).parent / "results" / "profiles"
CONTINUATION = ["decay_matrices_only=true", "frame_choices=[2,2,4,4,8,16]", "object_fraction=0.2",
                "room_pan_scale=[1,3]", "mask_head_backprop=true", "loss.camera_rotation_weight=5"]
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                 "cudaGraphLaunch")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_data(config, batches: int) -> dict:
    """Milliseconds per training batch of the data stream alone (median over ``batches`` after 3 warm-up ones)."""
    from stages.geometry.page4d.config import ModelConfig
    from stages.geometry.page4d.train import _device
    from stages.geometry.page4d.train_data import TrainingData

    device = _device(config.device)
    data = TrainingData(config, ModelConfig.load(config.model), device)
    times = []
    for index in range(batches + 3):
        _sync(device)
        start = time.perf_counter()
        batch = data.batch(10_000 + index)
        _sync(device)
        if index >= 3:
            times.append((time.perf_counter() - start) * 1e3)
        del batch
    return {"batches": batches, "median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def profile_totals(prof, steps: int) -> dict:
    """Per-step totals from a profiler's events: device kernel time, host synchronisations, launches."""
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
                    for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    counts = {e.key: e.count for e in events}
    syncs = sum(counts.get(name, 0) for name in SYNC_EVENTS)
    launches = sum(counts.get(name, 0) for name in LAUNCH_EVENTS)
    copies = sum(e.count for e in events if e.key.startswith("Memcpy DtoH"))
    return {"device_kernel_ms_per_step": device_us / 1e3 / steps, "host_syncs_per_step": syncs / steps,
            "device_to_host_copies_per_step": copies / steps, "launches_per_step": launches / steps,
            "sync_events": {name: counts.get(name, 0) for name in SYNC_EVENTS}}


def sync_sites(run, repo: Path) -> list[dict]:
    """Where the host waits for the GPU: run ``run()`` under ``torch.cuda.set_sync_debug_mode("warn")`` and count
    the synchronising operations by the innermost frame of this repository's code that called them."""
    import traceback
    import warnings

    counts: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(str(repo))
                  and "/bench/" not in f.filename and "/.venv/" not in f.filename]
        site = (f"{Path(frames[-1].filename).relative_to(repo)}:{frames[-1].lineno} {frames[-1].line}"
                if frames else f"{filename}:{lineno}")
        counts[site] = counts.get(site, 0) + 1

    previous = warnings.showwarning
    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = previous
    return [{"site": site, "count": count} for site, count in sorted(counts.items(), key=lambda kv: -kv[1])]


PHASES = ("data", "targets", "forward", "losses", "backward", "clip", "optimizer")


def operator_counts(config, batches: int) -> dict:
    """Operators and kernels per phase of a training step on the CPU, each batch's counts listed (see the module
    docstring); the loop's bookkeeping (logging, learning rates) is not counted."""
    from unittest import mock

    import pipeline.synthetic.render as render_module
    from bench.optimize_ops import OpCounter
    from stages.geometry.page4d.losses import objective
    from stages.geometry.page4d.train import (apply_trainable, build_model, build_optimizer, clip_gradients,
                                              score_to_logit)
    from stages.geometry.page4d.train_data import TrainingData, targets_from_batch

    device = torch.device("cpu")
    model = build_model(config, device).train()
    apply_trainable(model, config.trainable)
    optimizer, _ = build_optimizer(model, config)
    data = TrainingData(config, model.config, device)
    traced = render_module.render

    def render_all_frames(*args, **kwargs):        # CUDA's chunk: every frame of the batch at once
        return traced(*args, **{**kwargs, "max_rays": kwargs.get("max_rays") or 1 << 24})

    rows = []
    with mock.patch.object(render_module, "render", render_all_frames):
        import pipeline.synthetic.batch as batch_module
        with mock.patch.object(batch_module, "render", render_all_frames):
            for index in range(batches + 1):
                counters = {phase: OpCounter() for phase in PHASES}
                with counters["data"]:
                    batch = data.batch(index)
                with counters["targets"]:
                    targets = targets_from_batch(batch)
                with counters["forward"]:
                    predictions = model(batch["images"], want_mask_score=config.loss.mask_weight > 0)
                if "mask_score" in predictions and "mask_logits" not in predictions:
                    predictions["mask_logits"] = score_to_logit(predictions["mask_score"])
                with counters["losses"]:
                    total, _ = objective(predictions, targets, config.loss)
                with counters["backward"]:
                    total.backward()
                with counters["clip"]:
                    clip_gradients(model, config.clip_grad_norm)
                with counters["optimizer"]:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if index == 0:                         # texture banks and optimizer state are built once
                    continue
                row = {"shape": list(batch["images"].shape[:2]) + list(batch["images"].shape[-2:])}
                row.update({phase: counter.summary() for phase, counter in counters.items()})
                rows.append(row)
    return {"batches": rows,
            "median": {phase: {key: statistics.median(r[phase][key] for r in rows) for key in ("ops", "kernels", "syncs")}
                       for phase in PHASES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps of the unprofiled run")
    parser.add_argument("--profile-steps", type=int, default=20, help="steps of the profiled run (0: none)")
    parser.add_argument("--warmup", type=int, default=20, help="steps of the unprofiled run left out of its median")
    parser.add_argument("--data-batches", type=int, default=30)
    parser.add_argument("--config", default="page4d-tiny")
    parser.add_argument("--plain", action="store_true", help="the recipe as it is, without the continuation's "
                                                               "overrides")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--sync-steps", type=int, default=5, help="steps of a run that counts host synchronisations "
                                                                  "by call site (CUDA only; 0: skip)")
    parser.add_argument("--count-ops", action="store_true", help="count the operators of each phase of a step "
                                                                   "on the CPU instead (no GPU needed)")
    parser.add_argument("--count-batches", type=int, default=4, help="steps counted by --count-ops")
    parser.add_argument("--out", default="")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from stages.geometry.page4d.train import LOG_NAME, load_train_config, train

    overrides = ([] if args.plain else CONTINUATION) + list(args.overrides)
    work = Path(tempfile.mkdtemp(prefix="profile_train_"))

    def config_for(name: str, steps: int):
        return load_train_config(args.config, [f"out_dir={work / name}", "export=", f"steps={steps}",
                                               "checkpoint_every=100000", "log_every=10", *overrides])

    if args.count_ops:
        counts = operator_counts(config_for("ops", 1), args.count_batches)
        print("phase       ops  kernels  syncs  (median per step)")
        for phase, median in counts["median"].items():
            print(f"{phase:<10} {median['ops']:5.0f} {median['kernels']:8.0f} {median['syncs']:6.0f}")
        out = Path(args.out) if args.out else RESULTS / "profile_train_ops_cpu.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"environment": environment("cpu"), "config": args.config, "overrides": overrides,
                                   **counts}, indent=2) + "\n")
        print(f"wrote {out}")
        return
    data = time_data(config_for("data", 1), args.data_batches)
    print(f"data: {data['median_ms']:.1f} ms per batch (median of {args.data_batches})", flush=True)
    start = time.perf_counter()
    train(config_for("warm", 8))               # texture banks, cuDNN plans, allocator pools
    print(f"warm-up run: {time.perf_counter() - start:.1f} s", flush=True)
    result = train(config_for("plain", args.steps))
    frames_per_step = result.state.frames / result.state.step
    with open(result.out_dir / LOG_NAME) as handle:     # windows of log_every steps, after the warm-up
        windows = [float(row["frames_per_s"]) for row in csv.DictReader(handle) if int(row["step"]) > args.warmup]
    step_ms = statistics.median(frames_per_step / fps * 1e3 for fps in windows)
    mean_ms = result.state.train_seconds / result.state.step * 1e3
    print(f"unprofiled: {step_ms:.1f} ms per step ({1e3 / step_ms:.2f} steps/s; median of {len(windows)} windows "
          f"after step {args.warmup}; {mean_ms:.1f} ms on average over the whole run)", flush=True)
    record = {"environment": environment(), "config": args.config, "overrides": overrides, "data": data,
              "unprofiled": {"steps": result.state.step, "ms_per_step": step_ms, "mean_ms_per_step": mean_ms,
                             "window_ms": [frames_per_step / fps * 1e3 for fps in windows],
                             "frames_per_step": frames_per_step}}
    device = "gpu" if torch.cuda.is_available() else "cpu"
    out = Path(args.out) if args.out else RESULTS / f"profile_train_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.profile_steps <= 0:
        write_json(out, record)
        print(f"wrote {out}")
        return

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        profiled = train(config_for("profiled", args.profile_steps))
    totals = profile_totals(prof, args.profile_steps)
    sites = []
    if torch.cuda.is_available() and args.sync_steps > 0:
        repo = Path(__file__).resolve().parents[1]
        sites = sync_sites(lambda: train(config_for("syncs", args.sync_steps)), repo)
        for site in sites:
            site["per_step"] = site["count"] / args.sync_steps
        print(f"host synchronisations by call site ({args.sync_steps} steps, run set-up included):")
        for site in sites[:args.rows]:
            print(f"  {site['count']:6d}  {site['site']}")
    totals["host_ms_per_step"] = profiled.state.train_seconds / profiled.state.step * 1e3
    table = prof.key_averages()
    tables = {}
    if torch.cuda.is_available():
        tables["by_device_time"] = table.table(sort_by="self_cuda_time_total", row_limit=args.rows,
                                               max_name_column_width=70)
    tables["by_host_time"] = table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70)
    for text in tables.values():
        print(text)
    print(f"per step: {step_ms:.1f} ms unprofiled; kernels {totals['device_kernel_ms_per_step']:.1f} ms of device "
          f"time; {totals['host_syncs_per_step']:.1f} host synchronisations, "
          f"{totals['device_to_host_copies_per_step']:.1f} device-to-host copies, "
          f"{totals['launches_per_step']:.0f} launches; data {data['median_ms']:.1f} ms per batch")
    record.update({"profile": {"steps": args.profile_steps, **totals}, "sync_sites": sites, "tables": tables})
    write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
