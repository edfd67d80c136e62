"""``page4dgs evaluate RUN``: recompute ``metrics.json`` and ``report.html`` of a finished run, in place."""

from __future__ import annotations

import argparse

from pipeline.log import get_logger

log = get_logger("evaluate")


def evaluate_command(args: argparse.Namespace) -> int:
    from pipeline.scene import load_scene
    from stages.evaluate.stage import evaluate_run, write_outputs
    from stages.render.cli import load_run_config, run_device

    config = load_run_config(args.run, reads=("geometry", "initialize", "optimize", "render"))
    scene = load_scene(config.scene)
    evaluation = evaluate_run(args.run, config, scene, run_device(args, config))
    write_outputs(evaluation, args.run, args.run, config, scene)
    m = evaluation.metrics
    summary = ", ".join(f"{k} {m[k]:.4g}" for k in ("psnr", "ssim", "lpips_alex", "lpips_vgg") if m.get(k) is not None)
    log.info(f"wrote {args.run / 'metrics.json'} and report.html" + (f": {summary}" if summary else ""))
    return 0
