"""The training-scaling benchmark's reading of a run's log: median frames/s after the warm-up, steps/s, efficiency."""

from __future__ import annotations

from bench.train_scaling_bench import summarize


def _setting(processes, fps_by_step):
    return {"processes": processes, "wall_s": 1.0,
            "windows": [{"step": s, "frames_per_s": f, "seq_per_s": 0.0, "gpu_mem_gb": 1.5} for s, f in fps_by_step]}


def test_the_median_leaves_out_the_warm_up_windows_and_steps_count_every_rank():
    one = summarize(_setting(1, [(10, 5.0), (20, 100.0), (30, 120.0), (40, 110.0)]), warmup=10, frames_per_step=32)
    assert one["frames_per_s"] == 110.0 and one["windows"] == 3         # the first window (step 10) is warm-up
    assert one["steps_per_s"] == round(110.0 / 32, 2)
    four = summarize(_setting(4, [(10, 50.0), (20, 400.0), (30, 440.0)]), warmup=10, frames_per_step=32)
    assert four["frames_per_s"] == 420.0
    assert four["steps_per_s"] == round(420.0 / (4 * 32), 2)          # a step holds 32 frames per rank
    assert four["peak_gpu_gb"] == 1.5
