"""The optimize stage's speed benchmark and its CPU operator count: the setting they share, the timing windows,
the self-rendered targets, and an operator counter that sees host synchronisations."""

from __future__ import annotations

import torch

from bench.optimize_ops import OpCounter, count_step_ops


def test_the_op_counter_separates_kernels_views_and_host_synchronisations():
    x = torch.arange(6.0)
    with OpCounter() as counter:
        y = (x * 2).view(2, 3).t()                     # one kernel, two views
        torch.nonzero(y > 4)                           # a kernel whose output size the host must wait for
        float(y.sum())                                 # .item(): a device-to-host copy
        torch.tensor([1.0, 2.0])                       # from Python data: a blocking copy on CUDA
    summary = counter.summary()
    assert summary["sync_ops"] == {"nonzero": 1, "_local_scalar_dense": 1, "lift_fresh": 1}
    assert summary["ops"] - summary["kernels"] == 3    # view, t and lift_fresh (an alias of the new tensor)


def test_a_training_step_has_no_host_synchronisation_and_its_op_count_does_not_depend_on_the_size():
    for kind in ("bases", "planes"):
        small = count_step_ops(kind, gaussians=150, size=16)
        large = count_step_ops(kind, gaussians=300, size=24)
        assert small["syncs"] == 0, small["sync_ops"]
        assert small["by_op"] == large["by_op"]
        assert 100 < small["kernels"] < small["ops"]


def test_the_speed_section_runs_on_a_cpu_and_times_windows_on_self_rendered_targets(tmp_path):
    from bench.optimize_bench import bench_speed, orbit_views, own_render_views, random_gaussians, speed_config

    torch.manual_seed(0)
    result = bench_speed("cpu", tmp_path, quick=True, n=150, size=16, n_views=8, steps=(2, 4))
    assert [r["model"] for r in result["models"]] == ["bases", "mlp", "planes", "none"]
    for row in result["models"]:
        assert row["it_per_s"] > 0 and len(row["window_it_per_s"]) == 2 and row["gaussians"] == 150
        assert 0 < row["visible_per_view"] <= 150
    static = next(r for r in result["models"] if r["model"] == "none")
    assert static["vs_static"] == 1.0 and result["rasterization_only_it_per_s"] > 0

    gaussians, views = random_gaussians(150), orbit_views(4, 16, "cpu")
    cfg = speed_config("bases", 1, backend="torch")
    targets = own_render_views(cfg, gaussians, views, "cpu", noise=0.02)
    clean = own_render_views(cfg, gaussians, views, "cpu", noise=0.0)
    residual = torch.stack([t.image - c.image for t, c in zip(targets, clean)])
    assert abs(float(residual.std()) - 0.02) < 0.002 and abs(float(residual.mean())) < 0.002
    assert float(clean[0].image.min()) < 0.9                         # the Gaussians are in the picture
