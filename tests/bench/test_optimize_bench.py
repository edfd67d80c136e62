"""The optimize stage's speed benchmark and its CPU operator count: the setting they share, the timing windows,
the self-rendered targets, and an operator counter that sees host synchronisations."""

from __future__ import annotations

import json
from types import SimpleNamespace

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


def test_a_training_step_has_one_host_synchronisation_and_its_op_count_does_not_depend_on_the_size():
    """The one synchronisation is the count of the dynamic Gaussians visible at the step's time (only those are
    deformed: GaussianModel4D.gaussians_at(skip_invisible=True))."""
    for kind in ("bases", "planes"):
        small = count_step_ops(kind, gaussians=150, size=16)
        large = count_step_ops(kind, gaussians=300, size=24)
        assert small["sync_ops"] == {"nonzero": 1}, small["sync_ops"]
        assert small["by_op"] == large["by_op"]
        assert 100 < small["kernels"] < small["ops"]


def test_a_hybrid_step_evaluates_its_planes_once_with_either_motion_parts():
    """optimize_ops --set: the overrides are typed and checked as the pipeline's, only optimize.* apply. A
    planes_bases step samples its planes once (one ``_embedding_bag``): with motion_parts 'all' the regulariser's
    rows ride along with the render's (one evaluation for both, which took two calls until the fortieth session),
    with 'coefficients' the regulariser reads the bases alone (a few operators fewer still)."""
    import pytest

    from bench.optimize_ops import optimize_overrides
    from pipeline.errors import UserError

    assert optimize_overrides(["optimize.motion_parts=coefficients", "optimize.motion_lambda=0.5"]) == {
        "motion_parts": "coefficients", "motion_lambda": 0.5}
    with pytest.raises(UserError, match="only optimize"):
        optimize_overrides(["scene.max_size=3"])
    with pytest.raises(UserError, match="must be one of"):
        optimize_overrides(["optimize.motion_parts=some"])
    full = count_step_ops("planes_bases", gaussians=150, size=16)
    lean = count_step_ops("planes_bases", gaussians=150, size=16, motion_parts="coefficients")
    assert full["by_op"]["_embedding_bag"] == lean["by_op"]["_embedding_bag"] == 1
    assert full["ops"] - 40 < lean["ops"] < full["ops"], (lean["ops"], full["ops"])
    assert lean["sync_ops"] == full["sync_ops"] == {"nonzero": 1}


def test_a_presets_step_on_rgba_views_counts_the_terms_of_rgba_scenes():
    """optimize_ops --preset dnerf --rgba: the preset's silhouette loss and random background run only on views
    with alpha masks, so its step costs more there than on the same views without masks, and turning the silhouette
    loss off there takes away the operators of a projection and a bilinear read (forward and backward)."""
    from bench.optimize_ops import PARTS, preset_step_config

    settings = dict(gaussians=150, size=16, preset="dnerf")
    rgb = count_step_ops("", **settings)
    rgba = count_step_ops("", rgba=True, **settings)
    quiet = count_step_ops("", rgba=True, silhouette_lambda=0.0, **settings)
    assert rgb["model"] == rgba["model"] == "planes_bases"                      # the preset's own deformation
    assert rgba["sync_ops"] == {"nonzero": 1}          # the silhouette loss and backgrounds add no host sync
    assert rgba["kernels"] > quiet["kernels"] + 40 and quiet["kernels"] > rgb["kernels"]   # + random background
    assert rgba["by_op"].get("grid_sampler_2d", 0) == quiet["by_op"].get("grid_sampler_2d", 0) + 1
    # --parts: the parts that are on in the setting, each with what turning it off takes away
    from bench.optimize_ops import count_parts

    table = count_parts("bases", gaussians=150, size=16)
    parts = {row["part"]: row["kernels"] for row in table}
    assert list(parts) == ["whole step", "motion regulariser", "D-SSIM", "scale regulariser", "random background"]
    assert all(0 < parts[name] < parts["whole step"] for name in list(parts)[1:4])
    assert parts["random background"] == 0                          # on views without alpha it changes nothing
    cfg = preset_step_config("dnerf", "bases", 30, 10)
    assert (cfg.deformation, cfg.iterations, cfg.densify, cfg.silhouette_lambda) == ("bases", 30, False, 10.0)
    assert {key for _, key, _ in PARTS} <= set(vars(cfg))


def test_the_speed_section_runs_on_a_cpu_and_times_windows_on_self_rendered_targets(tmp_path):
    from bench.optimize_bench import bench_speed, orbit_views, own_render_views, random_gaussians, speed_config

    torch.manual_seed(0)
    result = bench_speed("cpu", tmp_path, quick=True, n=150, size=16, n_views=8, steps=(2, 4),
                         variants=("eager",))
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


def test_repeated_speed_sweeps_report_the_median_of_runs_taken_in_turn(tmp_path, monkeypatch):
    import bench.optimize_bench as ob

    calls = []

    def fake_rate(kind, gaussians, views, device, warmup, steps, workdir, variant="eager", **_):
        calls.append((variant, kind))
        return {"model": kind, "variant": variant, "it_per_s": float(10 * len(calls)), "warmup_s": 1.0,
                "window_it_per_s": [1.0], "visible_per_view": 1, "peak_mib": None,
                "restores": int(len(calls) == 8)}                  # the 2nd sweep's (compiled, none) restored once

    monkeypatch.setattr(ob, "training_rate", fake_rate)
    monkeypatch.setattr(ob, "gsplat_step_rate", lambda *a, **k: 1.0)
    result = ob.bench_speed("cpu", tmp_path, quick=True, n=10, size=8, n_views=2, steps=(1, 1),
                            variants=("eager", "compiled"), models=("bases", "none"), repeats=3)
    sweep = [(v, k) for v in ("eager", "compiled") for k in ("bases", "none")]
    assert calls == sweep * 3                                   # whole sweeps in turn, not one row three times
    rows = {(r["variant"], r["model"]): r for r in result["models"]}
    assert rows[("eager", "bases")]["it_per_s_runs"] == [10.0, 50.0, 90.0]
    assert rows[("eager", "bases")]["it_per_s"] == 50.0 and rows[("compiled", "none")]["it_per_s"] == 80.0
    assert rows[("eager", "bases")]["vs_static"] == round(50.0 / 60.0, 3) and result["repeats"] == 3
    assert rows[("compiled", "none")]["restores"] == 1 and rows[("eager", "bases")]["restores"] == 0


def _run(scene, seed, model, psnr):
    return {"scene": scene, "seed": seed, "model": model, "psnr": psnr, "ssim_3dgs": 0.9, "ssim_valid": 0.9,
            "lpips_alex": 0.1, "optimize_s": 10.0, "gaussians": 100}


def test_quality_gain_over_static_is_paired_by_seed_and_merged_files_keep_every_run(tmp_path):
    import json

    from bench.optimize_bench import merge_quality, summarize_quality

    runs = [_run("object", 0, "bases", 23.0), _run("object", 1, "bases", 24.0), _run("object", 0, "planes", 22.0),
            _run("object", 0, "none", 18.0), _run("object", 1, "none", 20.0), _run("room", 0, "mlp", 30.0),
            {"scene": "object", "seed": 1, "model": "planes", "error": "cut"}]
    rows = {(s["scene"], s["model"]): s for s in summarize_quality(runs)}
    assert rows[("object", "bases")]["psnr"] == 23.5 and rows[("object", "bases")]["psnr_over_static"] == 4.5
    # planes ran seed 0 only: compared with seed 0's baseline (18), not with the two-seed mean (19)
    assert rows[("object", "planes")]["psnr_over_static"] == 4.0
    assert rows[("object", "planes")]["static_pair_seeds"] == [0] and rows[("object", "planes")]["runs"] == 1
    assert rows[("room", "mlp")]["psnr_over_static"] is None and ("object", "none") in rows

    parts = []
    for i, chunk in enumerate((runs[:3], runs[3:])):
        path = tmp_path / f"part{i}.json"
        path.write_text(json.dumps({"environment": {"command": f"cmd {i}"},
                                    "quality": {"geometry": "oracle", "runs": chunk, "complete": i == 0}}))
        parts.append(path)
    merged = merge_quality(parts, "side by side")
    assert merged["runs"] == runs and merged["summary"] == summarize_quality(runs)
    assert [s["complete"] for s in merged["sources"]] == [True, False] and merged["geometry"] == "oracle"


def test_results_name_the_commit_given_by_whoever_sent_the_tree(monkeypatch):
    from bench.common import git_state

    monkeypatch.setenv("PAGE4DGS_GIT_COMMIT", "0123456789abcdef")
    assert git_state() == {"git_commit": "0123456789abcdef", "git_dirty": None,
                           "git_commit_source": "PAGE4DGS_GIT_COMMIT"}
    monkeypatch.delenv("PAGE4DGS_GIT_COMMIT")
    assert "git_commit_source" not in git_state()


def test_the_scene_section_passes_its_overrides_to_the_run_and_records_them(tmp_path, monkeypatch):
    import bench.optimize_bench as ob

    seen = {}

    def fake_run_scene(scene_dir, run_dir, preset, overrides):
        seen.update(preset=preset, overrides=list(overrides))
        return {"optimize_s": 1.0, "train_s": 0.9, "gaussians": 10, "psnr": 20.0, "peak_gpu_mib": None,
                "deformation": "bases"}

    monkeypatch.setattr(ob, "make_object", lambda out, **_: out)
    monkeypatch.setattr(ob, "run_scene", fake_run_scene)
    row = ob.bench_scene_time(tmp_path, "oracle", quick=True, overrides=("optimize.opacity_lambda=0",))
    assert seen == {"preset": "dnerf", "overrides": ["geometry.model=oracle", "optimize.opacity_lambda=0"]}
    assert row["overrides"] == ["optimize.opacity_lambda=0"] and row["frames"] == 30 and row["target_s"] == 120


def test_import_compiler_records_itself_in_the_environment(tmp_path, monkeypatch):
    """--import-compiler (the A/B of the torch._dynamo import) is written into the results file's environment."""
    import bench.optimize_bench as ob

    monkeypatch.setattr(ob.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ob, "environment", lambda device: {"device": device})
    monkeypatch.setattr(ob, "bench_scene_time", lambda *a, **k: {"optimize_s": 1.0})
    monkeypatch.setattr(ob, "RESULTS", tmp_path)
    for flag, want in (([], False), (["--import-compiler"], True)):
        assert ob.main(["--gpu", "--only", "scene", "--json", "a.json", "--workdir", str(tmp_path), *flag]) == 0
        record = json.loads((tmp_path / "a.json").read_text())
        assert record["environment"] == {"device": "cuda", "compiler_imported_up_front": want}
        assert record["scene"]["optimize_s"] == 1.0


def test_perturb_deformation_gives_every_model_motion_with_seeded_output_weights():
    """The render and speed sections time real motion: every deformation kind (the bases, whose only parameter is
    named 'control', included) gets random output-layer weights and per-Gaussian motion parameters, the same on
    every call."""
    from bench.optimize_bench import perturb_deformation, random_gaussians
    from stages.optimize.config import DEFORMATIONS, OptimizeConfig
    from stages.optimize.trainer import build_model

    for kind in (k for k in DEFORMATIONS if k != "none"):
        perturbed = []
        for _ in range(2):
            model = build_model(OptimizeConfig(deformation=kind, sh_degree=0), random_gaussians(64), 0.01, 10,
                                torch.device("cpu"))
            perturb_deformation(model)
            outputs = [p.detach().clone() for n, p in model.deformation.named_parameters() if ".out." in f".{n}"]
            extras = [model.splats[k].detach().clone() for k in model.deformation.per_gaussian_shapes()]
            assert outputs or extras, kind
            assert all(float(t.abs().max()) > 0 for t in outputs + extras), kind
            perturbed.append(outputs + extras)
        assert all(torch.equal(a, b) for a, b in zip(*perturbed)), kind


def test_training_windows_give_steps_per_second_between_flushes_and_the_count_at_each_end(tmp_path):
    from bench.optimize_bench import training_windows

    log = tmp_path / "log.csv"
    rows = ["step,loss,psnr,gaussians,seconds"]
    for step in range(60):                        # flushed every 10 steps: 2 s per flush until step 29, then 4 s
        flush = step // 10 + 1
        seconds = 2.0 * flush if flush <= 3 else 6.0 + 4.0 * (flush - 3)
        rows.append(f"{step},0.1,20,{100 + 10 * (step // 30)},{seconds}")
    log.write_text("\n".join(rows) + "\n")
    windows = training_windows(log, window=30)
    # marks at steps 9, 19, ..., 59 (2, 4, 6, 10, 14, 18 s): steps 9 -> 29 in 4 s, 29 -> 59 in 12 s
    assert windows == [{"from_step": 9, "to_step": 29, "steps_per_s": 5.0, "gaussians": 100},
                       {"from_step": 29, "to_step": 59, "steps_per_s": 2.5, "gaussians": 110}]
    assert training_windows(tmp_path / "missing.csv") == []


def test_visible_per_view_counts_the_dynamic_gaussians_among_the_visible_ones():
    """Half of the random Gaussians dynamic: the dynamic count is the visible ones that are dynamic, and a view
    that sees nothing counts zero of both."""
    from bench.optimize_bench import orbit_views, random_gaussians, speed_config, visible_per_view
    from stages.optimize.trainer import build_model

    gaussians, views = random_gaussians(200, dynamic_fraction=0.5), orbit_views(2, 16, "cpu")
    model = build_model(speed_config("bases", 1, backend="torch"), gaussians, 0.5, 2, torch.device("cpu"))
    counts = visible_per_view(model, views, "torch")
    seen = []
    with torch.no_grad():
        for v in views:
            _, _, meta = model.rasterize(v.time, v.world_to_camera[None], v.K[None], v.width, v.height,
                                         backend="torch")
            seen.append((meta["radii"] > 0).all(-1)[0])
    dynamic = torch.as_tensor(gaussians.is_dynamic)
    assert counts["visible_per_view"] == round(sum(float(s.sum()) for s in seen) / 2)
    assert counts["dynamic_visible_per_view"] == round(sum(float((s & dynamic).sum()) for s in seen) / 2)
    assert 0 < counts["dynamic_visible_per_view"] < counts["visible_per_view"]
    away = [SimpleNamespace(time=v.time, width=v.width, height=v.height, K=v.K,
                            world_to_camera=torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0])) @ v.world_to_camera)
            for v in views]                                # camera z flipped: everything behind the camera
    behind = visible_per_view(model, away, "torch")
    assert behind["visible_per_view"] == 0 and behind["dynamic_visible_per_view"] == 0
