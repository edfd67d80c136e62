"""Training on a tiny dynamic scene with exact geometry: held-out PSNR rises, resume is exact, the NaN guard
restores, and the stages run through the real runner."""

from __future__ import annotations

import csv
import dataclasses
import math
import logging
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.runner import STAGES, StageSpec, run_pipeline
from pipeline.scene import SceneConfig, load_scene
from stages.initialize.geometry_io import read_cameras
from stages.optimize import trainer as trainer_module
from stages.optimize.config import OptimizeConfig
from stages.optimize.model import load_model
from stages.optimize.stage import load_initial, load_views
from stages.optimize.trainer import build_model, median_time_gap, train
from tests.initialize.spheres import make_scene
from tests.initialize.test_initialize import run_stage


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 16x16 sphere scene, 8 training views (one per time), 4 test views; initialized by the real stage."""
    root = tmp_path_factory.mktemp("tiny")
    files = make_scene(root / "scene", root / "run", n_train=8, n_test=4, size=16, seed=1)
    scene = load_scene(SceneConfig(source=str(files.root)))
    _, work = run_stage("initialize", files.geometry, scene, ["initialize.max_gaussians=250"])
    shutil.move(str(work / "initialize"), str(files.geometry / "initialize"))
    return files, scene


class _Ctx:
    """The parts of a StageContext that the optimize stage's loaders read."""

    def __init__(self, run_dir: Path, scene):
        self.run_dir, self.scene = run_dir, scene

    def artifact(self, relative):
        return self.run_dir / relative


def _inputs(files, scene, cfg, device: str = "cpu"):
    ctx = _Ctx(files.geometry, scene)
    return load_views(ctx, cfg, torch.device(device)), load_initial(ctx)


def heldout_psnr(model, files, scene) -> float:
    """Mean PSNR over the test views (dataset cameras, new viewpoints and times), white background."""
    cameras, _ = read_cameras(files.geometry / "geometry/cameras.json")
    values = []
    with torch.no_grad():
        for cam in (c for c in cameras if c.split == "test"):
            out = model.render(cam.world_to_camera, cam.K, cam.width, cam.height, cam.time, background=(1, 1, 1),
                               backend="torch")
            target = torch.from_numpy(scene.rgb(scene.frame(cam.name)))
            values.append(float(-10 * torch.log10((out["rgb"] - target).pow(2).mean())))
    return float(np.mean(values))


def small_config(**overrides) -> OptimizeConfig:
    base = dict(iterations=8, sh_degree=1, sh_degree_interval=3, refine_start=1, refine_every=2, refine_stop=8,
                reset_every=6, grow_grad2d=1e-5, checkpoint_every=4, log_every=2, backend="torch",
                rigidity_lambda=0.1)
    base.update(overrides)
    return OptimizeConfig(**base)


def _log(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def resumed_run_matches(cfg, data, initial, tmp_path, straight, straight_dir: str, seed: int):
    """Train ``cfg`` for 4 steps into tmp_path/resumed, stop, resume to the end: the same loss sequence as the run
    ``straight`` (its folder tmp_path/straight_dir) and the same final parameters. Returns the two logs."""
    train(cfg, data, initial, tmp_path / "resumed", seed=seed, stop_after=4)
    second = train(cfg, data, initial, tmp_path / "resumed", seed=seed)
    assert second.resumed_from == 4
    a, b = _log(tmp_path / straight_dir / "log.csv"), _log(tmp_path / "resumed/log.csv")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    for key, value in straight.model.splats.items():
        assert torch.equal(value, second.model.splats[key]), key
    return a, b


@pytest.mark.parametrize("kind", ["bases", "rigid", "rigid_bases"])
def test_resume_after_a_checkpoint_continues_the_same_loss_sequence(tiny, tmp_path, kind):
    files, scene = tiny
    cfg = small_config(deformation=kind, residual_lambda=1.0 if kind == "rigid_bases" else 0.0)
    data, initial = _inputs(files, scene, cfg)
    straight = train(cfg, data, initial, tmp_path / "straight", seed=3)
    first = train(cfg, data, initial, tmp_path / "resumed", seed=3, stop_after=4)
    assert first.steps == 4 and (tmp_path / "resumed/checkpoints/step_0000004.pt").exists()
    second = train(cfg, data, initial, tmp_path / "resumed", seed=3)
    assert second.resumed_from == 4 and second.steps == 8
    a, b = _log(tmp_path / "straight/log.csv"), _log(tmp_path / "resumed/log.csv")
    assert [r["step"] for r in b] == [str(i) for i in range(8)]
    for key in ("loss", "l1", "ssim", "rigidity", "psnr", "gaussians"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert int(a[-1]["gaussians"]) != int(a[0]["gaussians"]), "densification happened inside the window"
    for key, value in straight.model.splats.items():
        assert torch.equal(value, second.model.splats[key]), key
    for key, value in straight.model.deformation.state_dict().items():
        assert torch.equal(value, second.model.deformation.state_dict()[key]), key


def test_checkpoints_are_written_on_a_thread_whose_errors_reach_the_training_thread(tiny, tmp_path, monkeypatch):
    """The trainer hands each checkpoint to a writer thread and waits for the last before it returns; what a write
    raises (a full disk, a folder that is a file) is raised again in the training thread."""
    import threading

    from stages.optimize.trainer import CheckpointWriter, read_checkpoint

    files, scene = tiny
    cfg = small_config(iterations=6, checkpoint_every=2, keep_checkpoints=2, densify=False)
    data, initial = _inputs(files, scene, cfg)
    writers = []
    original = trainer_module.write_checkpoint

    def spy(directory, state, keep):
        writers.append((threading.current_thread().name, state["loop"]["step"]))
        return original(directory, state, keep)

    monkeypatch.setattr(trainer_module, "write_checkpoint", spy)
    result = train(cfg, data, initial, tmp_path / "run", seed=0)
    assert writers == [("optimize-checkpoint", 2), ("optimize-checkpoint", 4), ("optimize-checkpoint", 6)]
    kept = sorted((tmp_path / "run/checkpoints").glob("step_*.pt"))
    assert [p.name for p in kept] == ["step_0000004.pt", "step_0000006.pt"]          # written whole, then pruned
    assert read_checkpoint(kept[-1])["loop"]["step"] == 6 and "model" not in read_checkpoint(kept[-1])
    assert result.checkpoint_seconds > 0 and list(result.setup_parts) == [
        "model", "optimizer", "step functions", "strategy", "resume", "the rest"]
    assert sum(result.setup_parts.values()) == result.setup_seconds > 0

    monkeypatch.setattr(trainer_module, "write_checkpoint", original)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the checkpoint folder should be")
    writer = CheckpointWriter(blocked / "checkpoints", keep=2)
    writer.submit(read_checkpoint(kept[-1]))
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()                                                       # raised once, then clear


def test_an_error_in_training_waits_for_the_checkpoint_being_written(tiny, tmp_path, monkeypatch, caplog):
    """When training raises while a checkpoint is being written, train() lets the write finish (so a caller that
    handles the error and resumes reads whole files) and logs a failed write instead of hiding the training's
    error behind it."""
    import threading
    import time as time_module

    files, scene = tiny
    cfg = small_config(iterations=6, checkpoint_every=2, densify=False)
    data, initial = _inputs(files, scene, cfg)
    written = []

    def slow_write(directory, state, keep):
        time_module.sleep(0.3)
        written.append(state["loop"]["step"])
        raise OSError("disk full")

    def fail_at_step_3(optimizer, initial_rates, step, cfg):
        if step == 3:
            raise RuntimeError("device lost")

    monkeypatch.setattr(trainer_module, "write_checkpoint", slow_write)
    monkeypatch.setattr(trainer_module, "set_learning_rates", fail_at_step_3)
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match="device lost"):
        train(cfg, data, initial, tmp_path / "run", seed=0)
    assert written == [2] and not any(t.name == "optimize-checkpoint" for t in threading.enumerate())
    assert "writing a checkpoint failed too (OSError: disk full)" in caplog.text


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tiny, tmp_path, caplog):
    from pipeline.errors import UserError

    files, scene = tiny
    cfg = small_config(iterations=8, checkpoint_every=2, keep_checkpoints=2)
    data, initial = _inputs(files, scene, cfg)
    straight = train(cfg, data, initial, tmp_path / "straight", seed=3)
    first = train(cfg, data, initial, tmp_path / "resumed", seed=3, stop_after=6)
    checkpoints = sorted((tmp_path / "resumed/checkpoints").glob("step_*.pt"))
    assert [p.name for p in checkpoints] == ["step_0000004.pt", "step_0000006.pt"] and first.steps == 6
    checkpoints[-1].write_bytes(checkpoints[-1].read_bytes()[:1000])          # truncated from outside
    with caplog.at_level("WARNING"):
        second = train(cfg, data, initial, tmp_path / "resumed", seed=3)
    assert second.resumed_from == 4 and second.steps == 8
    assert "step_0000006.pt: unreadable checkpoint" in caplog.text
    a, b = _log(tmp_path / "straight/log.csv"), _log(tmp_path / "resumed/log.csv")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    # With no readable checkpoint left, the error names the newest.
    for path in (tmp_path / "resumed/checkpoints").glob("step_*.pt"):
        path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="step_0000008.pt: unreadable checkpoint"):
        train(cfg, data, initial, tmp_path / "resumed", seed=3)


def _damage(state: dict, change: str):
    """A checkpoint's state with one kind of damage from outside (what resuming must refuse in one line)."""
    if change == "list":
        return [state]
    state = dict(state)
    splats = state["splats"] = dict(state["splats"])
    if change == "no loop":
        del state["loop"]
    elif change == "rows":
        splats["means"] = splats["means"][:10]
    elif change == "shapes":
        splats["quats"] = splats["quats"][:, :3]
    elif change == "entries":
        del splats["time_centers"]
    elif change == "deformation":
        state["deformation"] = {k: v[..., :1] for k, v in state["deformation"].items()}
    elif change == "moments":
        optimizer = state["optimizer"] = dict(state["optimizer"])
        optimizer["state"] = {i: {k: v[:1] if v.dim() else v for k, v in s.items()}
                              for i, s in optimizer["state"].items()}
    elif change == "step":
        state["loop"] = {**state["loop"], "step": "four"}
    return state


@pytest.mark.parametrize("change, message", [
    ("list", "not an optimize checkpoint; delete it to start over"),
    ("no loop", r"incomplete checkpoint \(no loop\); delete it to start over"),
    ("rows", r"checkpoint does not fit this run \(the per-Gaussian tensors disagree on the Gaussian count: means "
             r"has 10 rows, \w+ \d+ rows\)"),
    ("shapes", r"checkpoint does not fit this run \(splats quats has shape \[\d+, 3\], expected \[\d+, 4\]\)"),
    ("entries", r"checkpoint does not fit this run \(its Gaussians have the entries"),
    ("deformation", r"checkpoint does not fit this run \(size mismatch for control"),
    ("moments", r"checkpoint does not fit this run \(the optimizer's exp_avg of \w+ has shape \[1"),
    ("step", r"checkpoint does not fit this run \(step 'four'\); delete it to start over"),
])
def test_a_checkpoint_that_does_not_fit_the_run_is_a_one_line_error(tiny, tmp_path, change, message):
    """A damaged checkpoint (a list, an entry missing, tensors of other shapes or counts) refuses to resume with a
    one-line error naming the file, before the loop, not with a traceback from inside it."""
    from pipeline.errors import UserError

    files, scene = tiny
    cfg = small_config(iterations=8, checkpoint_every=4)
    data, initial = _inputs(files, scene, cfg)
    train(cfg, data, initial, tmp_path / "run", seed=3, stop_after=4)
    path = tmp_path / "run/checkpoints/step_0000004.pt"
    torch.save(_damage(torch.load(path, weights_only=True), change), path)
    with pytest.raises(UserError, match=rf"step_0000004.pt: {message}") as caught:
        train(cfg, data, initial, tmp_path / "run", seed=3)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", ["bases", "planes"])
def test_a_nan_or_exploding_loss_restores_the_last_good_state(tiny, tmp_path, monkeypatch, caplog, kind):
    """(planes: the NaN parameters reach the plane sampler's coordinates, which must give NaN, not an error.)"""
    files, scene = tiny
    cfg = small_config(iterations=12, checkpoint_every=0, densify=False, log_every=3, deformation=kind)
    data, initial = _inputs(files, scene, cfg)
    calls = {"n": 0}
    original = trainer_module.photometric_loss

    def flaky(render, target, ssim_lambda):
        calls["n"] += 1
        loss, l1, s = original(render, target, ssim_lambda)
        if calls["n"] == 5:
            return loss * float("nan"), l1, s
        if calls["n"] == 10:
            return loss * 1e6, l1, s
        return loss, l1, s

    monkeypatch.setattr(trainer_module, "photometric_loss", flaky)
    with caplog.at_level(logging.WARNING, logger="page4dgs"):
        result = train(cfg, data, initial, tmp_path / "run", seed=0)
    messages = [r.getMessage() for r in caplog.records if "restored the state of step" in r.getMessage()]
    assert len(messages) == 2 and "nan" in messages[0].lower() and "restored the state of step 3" in messages[0]
    assert result.restores == 2 and result.steps == 12
    rows = _log(tmp_path / "run/log.csv")
    assert [r["step"] for r in rows] == [str(i) for i in range(12)], "the bad windows are replaced, not kept"
    assert all(np.isfinite(float(r["loss"])) and float(r["loss"]) < 10 for r in rows)
    assert all(torch.isfinite(p).all() for p in result.model.splats.values() if p.is_floating_point())


def test_optimization_raises_heldout_psnr_over_the_initialization(tiny, tmp_path):
    files, scene = tiny
    cfg = OptimizeConfig(iterations=150, sh_degree=0, refine_start=60, refine_every=30, refine_stop=120,
                         reset_every=0, checkpoint_every=0, log_every=25, backend="torch", lr_means=1e-3)
    data, initial = _inputs(files, scene, cfg)
    times = [v.time for v in data.views]
    start = build_model(cfg, initial, median_time_gap(times), len(times), torch.device("cpu"))
    before = heldout_psnr(start, files, scene)
    result = train(cfg, data, initial, tmp_path / "run", seed=0)
    after = heldout_psnr(result.model, files, scene)
    assert after > before + 3.0, (before, after)


@pytest.mark.parametrize("background", ["random", "black"])
def test_an_rgb_frame_in_an_rgba_scene_trains_as_opaque(tiny, tmp_path, background):
    """A D-NeRF folder may mix RGB and RGBA PNGs: the scene has alpha, one frame does not. Recompositing that frame
    on another background raised a TypeError; it is opaque, so its ground truth stays as loaded."""
    files, scene = tiny
    cfg = small_config(iterations=4, checkpoint_every=0, densify=False, background=background)
    data, initial = _inputs(files, scene, cfg)
    assert all(v.has_alpha for v in data.views)
    data.views[0].alpha = None                       # as the loader returns it for an RGB file
    result = train(cfg, data, initial, tmp_path / "run", seed=0)
    assert result.steps == 4
    assert all(np.isfinite(float(r["loss"])) for r in _log(tmp_path / "run/log.csv"))
    assert result.setup_seconds > 0 and result.checkpoint_seconds > 0      # the final checkpoint is always written


def test_stages_run_through_the_runner_and_write_their_artifacts(tiny, tmp_path):
    files, scene = tiny

    def oracle_geometry(ctx):
        shutil.copytree(files.geometry / "geometry", ctx.out("geometry"), dirs_exist_ok=True)
        return {}

    stages = (StageSpec("geometry", oracle_geometry, ("geometry",), (), ("scene", "geometry")),
              *(s for s in STAGES if s.name in ("initialize", "optimize")))
    config = load_config("default", ["initialize.max_gaussians=200", "optimize.iterations=4",
                                     "optimize.checkpoint_every=2", "optimize.log_every=2", "optimize.sh_degree=0",
                                     "optimize.backend=torch"])
    results = run_pipeline(config, tmp_path / "run", scene, stages=stages)
    assert results["optimize"]["summary"]["steps"] == 4
    parts = [results["optimize"]["summary"][k] for k in ("train_seconds", "load_seconds", "save_seconds",
                                                          "setup_seconds", "checkpoint_seconds")]
    assert all(p >= 0 for p in parts) and sum(parts) <= results["optimize"]["wall_s"] + 0.03   # parts of the stage
    run = tmp_path / "run"
    assert (run / "initialize/gaussians.ply").is_file() and (run / "initialize/labels.npz").is_file()
    model = load_model(run / "optimize/model.pt")
    assert model.num_gaussians() == results["optimize"]["summary"]["gaussians"]
    assert [r["step"] for r in _log(run / "optimize/log.csv")] == ["0", "1", "2", "3"]
    assert sorted(p.name for p in (run / "optimize/checkpoints").iterdir()) == ["step_0000002.pt", "step_0000004.pt"]
    again = run_pipeline(config, tmp_path / "run", scene, stages=stages)
    assert again["optimize"]["finished_at"] == results["optimize"]["finished_at"], "unchanged: skipped"


def test_frames_decoded_at_every_use_train_identically(tiny, tmp_path, monkeypatch):
    """Scenes too large for memory decode each frame when used; the result is the same as keeping them."""
    from stages.optimize import stage as stage_module

    files, scene = tiny
    cfg = small_config(iterations=4, densify=False, background="random")
    eager_data, initial = _inputs(files, scene, cfg)
    monkeypatch.setattr(stage_module, "DEVICE_IMAGE_BUDGET", 0)
    lazy_data, _ = _inputs(files, scene, cfg)
    assert lazy_data.views[0].image is None and lazy_data.views[0].has_alpha
    # ... and the stage does not log that random backgrounds need RGBA frames (it did, from the absent alpha)
    assert not stage_module.random_background_unusable(cfg, lazy_data)
    for view in eager_data.views:
        view.has_alpha = False
    assert stage_module.random_background_unusable(cfg, eager_data)
    for view in eager_data.views:
        view.has_alpha = True
    eager = train(cfg, eager_data, initial, tmp_path / "eager", seed=0)
    lazy = train(cfg, lazy_data, initial, tmp_path / "lazy", seed=0)
    assert [r["loss"] for r in _log(tmp_path / "eager/log.csv")] == [r["loss"] for r in _log(tmp_path / "lazy/log.csv")]
    assert torch.equal(eager.model.splats["means"], lazy.model.splats["means"])


def test_the_temporal_width_floor_rises_linearly_and_holds_every_dynamic_gaussian_above_it(tiny, tmp_path):
    from stages.optimize.trainer import temporal_width_floor

    cfg = small_config(temporal_opacity_init=2.0, temporal_width_floor=6.0, temporal_widen_from=2,
                       temporal_widen_until=6, iterations=8, densify=False, rigidity_lambda=0.0)
    gap = 0.1
    assert [round(temporal_width_floor(cfg, s, gap), 12) for s in (0, 1, 2, 3, 4, 6, 7)] == [
        0.0, 0.0, 0.2, 0.3, 0.4, 0.6, 0.6]
    assert temporal_width_floor(small_config(), 100, gap) == 0.0          # off by default
    at_once = small_config(temporal_width_floor=6.0, temporal_widen_from=3, temporal_widen_until=3)
    assert [round(temporal_width_floor(at_once, s, gap), 12) for s in (2, 3, 4)] == [0.0, 0.6, 0.6]
    files, scene = tiny
    data, initial = _inputs(files, scene, cfg)
    result = train(cfg, data, initial, tmp_path / "run", seed=0)
    widths = result.model.splats["time_log_scales"].exp()
    dynamic = result.model.splats["is_dynamic"]
    floor = 6.0 * median_time_gap([v.time for v in data.views])
    assert dynamic.any() and torch.all(widths[dynamic] >= floor * (1 - 1e-6))


def test_the_opacity_regulariser_adds_the_weighted_mean_opacity_and_lowers_opacities(tiny, tmp_path):
    from stages.optimize.losses import opacity_loss

    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)], requires_grad=True)
    value = opacity_loss(logits)                                   # (0.5 + 0.75 + 0.25) / 3
    value.backward()
    assert float(value.detach()) == pytest.approx(0.5)
    assert torch.allclose(logits.grad, torch.tensor([0.25, 0.1875, 0.1875]) / 3)     # s (1 - s) / N
    files, scene = tiny
    runs = {}
    for weight in (0.0, 1.0):
        cfg = small_config(iterations=6, densify=False, rigidity_lambda=0.0, opacity_lambda=weight,
                           opacity_weighting="all")
        data, initial = _inputs(files, scene, cfg)
        result = train(cfg, data, initial, tmp_path / f"w{weight}", seed=0)
        opacities = torch.sigmoid(result.model.splats["opacities"]).detach()
        runs[weight] = opacities, _log(tmp_path / f"w{weight}" / "log.csv")
    (plain, plain_log), (pulled, pulled_log) = runs[0.0], runs[1.0]
    assert float(pulled.mean()) < float(plain.mean()) - 0.01
    # The first step renders the same Gaussians in both runs: its logged loss differs by the weighted mean opacity
    # of the initialization (0.1 for every Gaussian).
    assert pulled_log[0]["step"] == plain_log[0]["step"] == "0"
    assert float(pulled_log[0]["loss"]) - float(plain_log[0]["loss"]) == pytest.approx(0.1, abs=1e-5)


def test_the_time_weighted_opacity_regulariser_pulls_a_moving_copy_by_its_window_at_the_render_times(tiny,
                                                                                                    tmp_path):
    """opacity_weighting=time: a dynamic Gaussian's term is weighted by its temporal window averaged over the step's
    render times (hand-computed here), a static one's fully, the weights without gradient; trained, the moving
    copies keep more opacity than under 'all' while the loss is still the same mean over N."""
    from stages.optimize.losses import opacity_loss, temporal_weights

    centers = torch.tensor([0.0, 0.5, 0.2])
    log_scales = torch.log(torch.tensor([0.1, 0.2, 0.3]))
    dynamic = torch.tensor([True, True, False])
    weights = temporal_weights([0.1, 0.3], centers, log_scales, dynamic)
    by_hand = [(math.exp(-0.5) + math.exp(-4.5)) / 2, (math.exp(-0.5 * 2**2) + math.exp(-0.5)) / 2, 1.0]
    assert torch.allclose(weights, torch.tensor(by_hand), atol=1e-6) and not weights.requires_grad
    logits = torch.zeros(3, requires_grad=True)
    opacity_loss(logits, weights).backward()
    assert torch.allclose(logits.grad, 0.25 * weights / 3)                             # w s (1 - s) / N
    files, scene = tiny
    kept, opacities, chosen = {}, {}, {}
    # 'auto' is 'time' from opacity_time_from training times on (the tiny scene has fewer than 1000), else 'all'
    for name, weighting, time_from in (("all", "all", 64), ("time", "time", 64), ("auto-1", "auto", 1),
                                       ("auto-1000", "auto", 1000)):
        cfg = small_config(iterations=6, densify=False, rigidity_lambda=0.0, opacity_lambda=1.0,
                           opacity_weighting=weighting, opacity_time_from=time_from)
        data, initial = _inputs(files, scene, cfg)
        result = train(cfg, data, initial, tmp_path / name, seed=0)
        splats = result.model.splats
        opacities[name], chosen[name] = splats["opacities"].detach(), result.opacity_weighting
        kept[name] = float(torch.sigmoid(opacities[name][splats["is_dynamic"]]).mean())
    assert kept["time"] > kept["all"]
    assert chosen == {"all": "all", "time": "time", "auto-1": "time", "auto-1000": "all"}
    assert torch.equal(opacities["auto-1"], opacities["time"]) and torch.equal(opacities["auto-1000"], opacities["all"])


def test_auto_opacity_weighting_follows_the_number_of_distinct_training_times():
    from stages.optimize.trainer import opacity_weighting_for

    cfg = OptimizeConfig(opacity_weighting="auto", opacity_time_from=64)
    assert [opacity_weighting_for(cfg, n) for n in (1, 50, 63, 64, 100)] == ["all", "all", "all", "time", "time"]
    for fixed in ("all", "time"):
        assert opacity_weighting_for(dataclasses.replace(cfg, opacity_weighting=fixed), 100) == fixed
        assert opacity_weighting_for(dataclasses.replace(cfg, opacity_weighting=fixed), 10) == fixed
        # no temporal windows (the static model): nothing to weigh by, whatever the setting
        assert opacity_weighting_for(dataclasses.replace(cfg, opacity_weighting=fixed), 100, False) == "all"
    assert opacity_weighting_for(cfg, 100, temporal_opacity=False) == "all"


def test_the_coherence_regulariser_makes_copies_move_alike_and_resumes_exactly(tiny, tmp_path):
    """Trained with a large weight, the dynamic Gaussians' velocities agree better with their neighbours' (of any
    copy) than without it; the run (its random draws included) resumes bit for bit."""
    from stages.optimize.trainer import coherence_groups, coherence_penalty

    files, scene = tiny
    measured = {}
    for weight in (0.0, 10.0):
        cfg = small_config(iterations=8, densify=False, rigidity_lambda=0.0, coherence_lambda=weight,
                           lr_motion=0.05, checkpoint_every=4)
        data, initial = _inputs(files, scene, cfg)
        result = train(cfg, data, initial, tmp_path / f"w{weight}", seed=0)
        model, values = result.model, []
        times = sorted({v.time for v in data.views})
        for t in times[:-1]:
            found = coherence_groups(model, t, 512, 8, torch.Generator().manual_seed(1))
            with torch.no_grad():
                values.append(float(coherence_penalty(model, *found, t, t + (times[1] - times[0]))))
        measured[weight] = float(np.mean(values))
        if weight > 0:
            resumed_run_matches(cfg, data, initial, tmp_path, result, f"w{weight}", seed=0)
    assert measured[10.0] < measured[0.0], measured


@pytest.mark.parametrize("source", ["sample", "render"])
def test_silhouette_views_reads_other_views_masks_at_their_times_and_resumes_exactly(source, tiny, tmp_path,
                                                                                     monkeypatch):
    """silhouette_views 3: each step's silhouette term reads its own view at the render time (sampled, or from the
    render's Gaussians) and two other views (never itself, always sampled) at their own times, with their detached
    cameras; refined cameras get no gradient from it; the run resumes bit for bit. other_views draws nothing for 0
    draws, so silhouette_views 1 keeps the frame order."""
    import stages.optimize.trainer as trainer_module
    from stages.optimize.trainer import other_views

    generator = torch.Generator().manual_seed(0)
    state = generator.get_state().clone()
    assert other_views(5, 2, 0, generator) == [] and torch.equal(state, generator.get_state())
    assert other_views(1, 0, 3, generator) == []
    drawn = other_views(5, 2, 400, generator)
    assert set(drawn) == {0, 1, 3, 4}

    files, scene = tiny
    calls = []
    original = trainer_module.silhouette_penalty

    def counting(model, time, world_to_camera, K, outside, samples, generator):
        calls.append((time, world_to_camera.requires_grad))
        return original(model, time, world_to_camera, K, outside, samples, generator)

    monkeypatch.setattr(trainer_module, "silhouette_penalty", counting)
    cfg = small_config(iterations=8, densify=False, rigidity_lambda=0.0, silhouette_lambda=20.0, silhouette_views=3,
                       silhouette_source=source, background="random", checkpoint_every=4, refine_cameras=True,
                       lr_cameras=0.0)
    data, initial = _inputs(files, scene, cfg)
    straight = train(cfg, data, initial, tmp_path / "straight", seed=0)
    sampled = 3 if source == "sample" else 2                  # the render source samples only the other views
    assert len(calls) == sampled * 8 and not any(grad for _, grad in calls)
    if source == "sample":
        own_times = [calls[3 * step][0] for step in range(8)]
        assert all(calls[3 * step + k][0] != own_times[step] for step in range(8) for k in (1, 2))  # one per time
    assert {t for t, _ in calls} <= {v.time for v in data.views}
    resumed_run_matches(cfg, data, initial, tmp_path, straight, "straight", seed=0)


def test_the_mask_loss_is_the_mean_alpha_error_and_lowers_it_on_the_training_views(tiny, tmp_path):
    from stages.optimize.losses import alpha_loss

    rendered = torch.tensor([[0.2, 1.0], [0.0, 0.5]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    value = alpha_loss(rendered, target)                             # (0.2 + 0 + 0 + 0.5) / 4
    value.backward()
    assert float(value.detach()) == pytest.approx(0.175)
    assert torch.equal(rendered.grad, torch.tensor([[0.25, 0.0], [0.0, -0.25]]))      # sign / 4 (0 where equal)
    files, scene = tiny
    cameras, _ = read_cameras(files.geometry / "geometry/cameras.json")
    errors, losses = {}, {}
    for weight in (0.0, 2.0):
        cfg = small_config(iterations=30, densify=False, rigidity_lambda=0.0, alpha_lambda=weight,
                           background="random")
        data, initial = _inputs(files, scene, cfg)
        result = train(cfg, data, initial, tmp_path / f"w{weight}", seed=0)
        with torch.no_grad():
            errors[weight] = float(np.mean([
                float(alpha_loss(result.model.render(cam.world_to_camera, cam.K, cam.width, cam.height, cam.time,
                                                     background=(1, 1, 1), backend="torch")["alpha"],
                                 torch.from_numpy(scene.alpha(scene.frame(cam.name))).float()))
                for cam in cameras if cam.split == "train"]))
        losses[weight] = _log(tmp_path / f"w{weight}" / "log.csv")
    # Same seed, same views and backgrounds: without the term the two runs would be identical, so any difference
    # is the mask loss's doing, and it must be downwards.
    assert errors[2.0] < errors[0.0] - 1e-3, errors
    # Step 0 renders the same Gaussians on the same view and background in both runs: the logged loss differs by
    # the weighted mask loss, which is positive (the initialization does not match the masks exactly).
    assert float(losses[2.0][0]["loss"]) > float(losses[0.0][0]["loss"]) + 1e-4


def test_the_silhouette_loss_by_hand_and_it_pulls_moving_gaussians_into_the_masks(tiny, tmp_path):
    from stages.optimize.losses import silhouette_loss
    from stages.optimize.trainer import outside_distance, rendered_silhouette_penalty, silhouette_penalty

    # A 10 x 5 view whose mask is its first three columns: the distance outside is c - 2 at column c. With K = I a
    # point (x, y, 1) lands on pixel coordinates (x, y); pixel centres sit at c + 0.5.
    alpha = torch.zeros(5, 10, dtype=torch.float64)
    alpha[:, :3] = 1.0
    outside = outside_distance(alpha)
    assert torch.equal(outside[2], torch.tensor([0, 0, 0, 1, 2, 3, 4, 5, 6, 7], dtype=torch.float64))
    points = torch.tensor([[6.5, 2.5, 1.0], [1.5, 2.5, 1.0], [6.5, 2.5, -1.0]], dtype=torch.float64,
                          requires_grad=True)
    value = silhouette_loss(points, torch.eye(3, dtype=torch.float64), outside, torch.ones(3, dtype=torch.float64))
    value.backward()
    assert float(value.detach()) == pytest.approx(0.4**2 / 2)     # 4 px = 0.4 widths; the point behind is left out
    # d/dx of (d / 10)^2 / 2 at d = 4, dd/dx = 1; nothing along y (the distance is constant along columns); the
    # point inside the mask and the one behind the camera get no gradient.
    assert points.grad[0, 0] == pytest.approx(0.04) and points.grad[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(points.grad[1:], torch.zeros(2, 3, dtype=torch.float64))
    # Off the image: the distance at the nearest point of the image plus the way there, and a pull back. x = 12.5
    # is 2.5 px right of the image, whose right edge reads column 9's 7 px: 9.5 px; x = -5 is 5 px left of the mask.
    for x, expected, sign in ((12.5, 0.95**2, 1.0), (-5.0, 0.5**2, -1.0)):
        point = torch.tensor([[x, 2.5, 1.0]], dtype=torch.float64, requires_grad=True)
        value = silhouette_loss(point, torch.eye(3, dtype=torch.float64), outside, torch.ones(1, dtype=torch.float64))
        value.backward()
        assert float(value.detach()) == pytest.approx(expected) and float(point.grad[0, 0]) * sign > 0

    # Trained with the term (same seed, views and backgrounds as without it), the dynamic Gaussians sit closer to
    # the training views' masks at the views' times; also when each step reads three views' masks.
    files, scene = tiny
    cameras, _ = read_cameras(files.geometry / "geometry/cameras.json")
    measured = {}
    for weight, views, source in ((0.0, 1, "sample"), (20.0, 1, "sample"), (20.0, 3, "sample"),
                                  (20.0, 1, "render")):
        cfg = small_config(iterations=30, densify=False, rigidity_lambda=0.0, silhouette_lambda=weight,
                           silhouette_views=views, silhouette_source=source, background="random")
        data, initial = _inputs(files, scene, cfg)
        model = train(cfg, data, initial, tmp_path / f"w{weight}v{views}{source}", seed=0).model
        with torch.no_grad():
            measured[weight, views, source] = float(np.mean([
                float(silhouette_penalty(model, cam.time, torch.as_tensor(cam.world_to_camera).float(),
                                         torch.as_tensor(cam.K).float(),
                                         outside_distance(torch.from_numpy(scene.alpha(scene.frame(cam.name))).float()),
                                         10**6, torch.Generator().manual_seed(0)))
                for cam in cameras if cam.split == "train"]))
    assert all(measured[key] < 0.9 * measured[0.0, 1, "sample"] for key in measured if key[0] > 0), measured

    # The 'render' source reads the render's own Gaussians: with every dynamic Gaussian visible and within two
    # temporal widths (widths made huge), it is the sampled form over all of them, value and gradient alike.
    cfg = small_config(iterations=1, densify=False)
    data, initial = _inputs(files, scene, cfg)
    model = build_model(cfg, initial, 0.1, 8, torch.device("cpu"))
    with torch.no_grad():
        model.splats["time_log_scales"].fill_(5.0)
        model.splats["opacities"].clamp_(min=-2.0)
    cam = next(c for c in cameras if c.split == "train")
    w2c, K = torch.as_tensor(cam.world_to_camera).float(), torch.as_tensor(cam.K).float()
    outside = outside_distance(torch.from_numpy(scene.alpha(scene.frame(cam.name))).float())
    from_render = rendered_silhouette_penalty(model.gaussians_at(cam.time, skip_invisible=True), w2c, K, outside)
    from_render.backward()
    grad_render = model.splats["means"].grad.clone()
    model.splats["means"].grad = None
    sampled = silhouette_penalty(model, cam.time, w2c, K, outside, 10**6, torch.Generator().manual_seed(0))
    sampled.backward()
    assert float(from_render.detach()) > 0 and float(from_render.detach()) == pytest.approx(float(sampled.detach()))
    assert torch.allclose(grad_render, model.splats["means"].grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("kind", ["mlp", "planes"])
def test_field_latent_codes_train_follow_densification_and_load_back(tiny, tmp_path, kind):
    """``field_embedding`` E: every Gaussian has a code (N, E) that starts at zero, is trained at its own rate (a
    decaying group), stays row-aligned with the Gaussians through densification, and is saved with the model, which
    loads back and renders the same."""
    files, scene = tiny
    cfg = small_config(iterations=8, deformation=kind, field_embedding=3, lr_field_embedding=0.01,
                       planes_resolution=[4], mlp_width=16, mlp_depth=2, rigidity_lambda=0.0)
    data, initial = _inputs(files, scene, cfg)
    result = train(cfg, data, initial, tmp_path / "run", seed=0)
    splats = result.model.splats
    codes = splats["field_embedding"].detach()
    assert codes.shape == (len(splats["means"]), 3) and len(splats["means"]) != len(initial.means)   # densified
    dynamic = splats["is_dynamic"]
    # Trained away from zero (planes: only once its time planes vary, since a code acts through the difference of
    # the offsets at the render time and the anchor time).
    assert float(codes[dynamic].abs().max()) > 1e-4
    assert float(codes[~dynamic].abs().max()) == 0.0                                # static ones: no gradient
    assert trainer_module.DECAYING >= {"field_embedding"}
    result.model.save(tmp_path / "model.pt")                                       # as the stage writes it
    back = load_model(tmp_path / "model.pt")
    assert back.deformation.spec() == result.model.deformation.spec()
    a, b = result.model.gaussians_at(0.6), back.gaussians_at(0.6)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_the_temporal_width_floor_keeps_resume_exact_and_holds_through_densification(tiny, tmp_path):
    """The floor is a function of the step applied after each optimizer step, so a checkpoint in the middle of the
    widening resumes to the same run; Gaussians added by densification start at or above it."""
    cfg = small_config(temporal_width_floor=6.0, temporal_widen_from=2, temporal_widen_until=6)
    files, scene = tiny
    data, initial = _inputs(files, scene, cfg)
    straight = train(cfg, data, initial, tmp_path / "straight", seed=3)
    a, _ = resumed_run_matches(cfg, data, initial, tmp_path, straight, "straight", seed=3)
    assert int(a[-1]["gaussians"]) != int(a[0]["gaussians"]), "densification happened"
    widths = straight.model.splats["time_log_scales"].exp()
    dynamic = straight.model.splats["is_dynamic"]
    floor = 6.0 * median_time_gap([v.time for v in data.views])
    assert dynamic.any() and torch.all(widths[dynamic] >= floor * (1 - 1e-6))


def test_time_jitter_falls_linearly_and_stays_within_the_training_times():
    from stages.optimize.trainer import jittered_time, time_jitter_std

    gap = 0.1
    cfg = small_config(time_jitter=0.5, time_jitter_until=4, iterations=10)
    assert [round(time_jitter_std(cfg, s, gap), 12) for s in (0, 1, 2, 4, 9)] == [0.05, 0.0375, 0.025, 0.0, 0.0]
    to_the_end = small_config(time_jitter=1.0, iterations=10)                  # until 0: the last step
    assert [round(time_jitter_std(to_the_end, s, gap), 12) for s in (0, 5, 10)] == [0.1, 0.05, 0.0]
    assert time_jitter_std(small_config(), 0, gap) == 0.0                      # off by default
    generator = torch.Generator().manual_seed(0)
    reference = torch.Generator().manual_seed(0)
    expected = [min(max(0.5 + 0.05 * float(torch.randn((), generator=reference)), 0.4), 0.6) for _ in range(1000)]
    drawn = [jittered_time(0.5, 0.05, generator, 0.4, 0.6) for _ in range(1000)]
    assert drawn == expected
    assert abs(statistics.pstdev(d for d in drawn if 0.4 < d < 0.6) - 0.05) < 0.01
    assert min(drawn) == 0.4 and max(drawn) == 0.6                            # clamped to the training times
    assert jittered_time(0.3, 0.0, generator, 0.0, 1.0) == 0.3                 # off: the view's own time


def test_time_jitter_renders_near_each_view_and_resumes_exactly(tiny, tmp_path, monkeypatch):
    """With the jitter on, training renders at times around the views' own (none outside their range) and still
    resumes to the same run; off, every render is at a view's time."""
    from stages.optimize.model import GaussianModel4D

    seen: list[float] = []
    original = GaussianModel4D.rasterize

    def spy(self, time, *args, **kwargs):
        if torch.is_grad_enabled():
            seen.append(float(time))
        return original(self, time, *args, **kwargs)

    monkeypatch.setattr(GaussianModel4D, "rasterize", spy)
    files, scene = tiny
    cfg = small_config(time_jitter=1.0, iterations=8)
    data, initial = _inputs(files, scene, cfg)
    times = sorted(v.time for v in data.views)
    straight = train(cfg, data, initial, tmp_path / "straight", seed=3)
    jittered = seen[:8]
    assert all(times[0] <= t <= times[-1] for t in jittered)
    assert sum(t not in times for t in jittered) >= 6, "render times moved off the views' times"
    resumed_run_matches(cfg, data, initial, tmp_path, straight, "straight", seed=3)
    seen.clear()
    train(small_config(iterations=4), data, initial, tmp_path / "off", seed=3)
    assert seen and all(t in times for t in seen)


@pytest.mark.parametrize("kind", ["bases", "planes"])
def test_compiled_steps_follow_the_eager_loss_sequence(tiny, tmp_path, kind):
    """optimize.compile traces the deformation and the losses (backend aot_eager here: dynamo and AOT autograd, no
    code generation, so the test is quick; the GPU uses inductor): the same losses as eager, step for step, through
    densifications that change the Gaussian count (a dynamic shape, parameters included: with torch's static
    parameter shapes each change was a recompilation, 17 graphs for 7 counts, until torch fell back to eager)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    files, scene = tiny
    runs = {}
    for mode in ("never", "always"):
        torch._dynamo.reset()
        counters.clear()
        cfg = small_config(deformation=kind, iterations=16, checkpoint_every=0, log_every=4, refine_start=2,
                           refine_every=3, refine_stop=16, compile=mode, compile_backend="aot_eager")
        data, initial = _inputs(files, scene, cfg)
        runs[mode] = train(cfg, data, initial, tmp_path / mode, seed=5)
    graphs = counters["stats"]["unique_graphs"]
    eager, compiled = (_log(tmp_path / m / "log.csv") for m in ("never", "always"))
    assert [r["gaussians"] for r in compiled] == [r["gaussians"] for r in eager]
    assert len({r["gaussians"] for r in eager}) >= 4, "the count changed several times inside the run"
    assert 3 <= graphs <= 8, f"{graphs} graphs: not compiled, or recompiled per Gaussian count"
    assert not counters["graph_break"], dict(counters["graph_break"])
    for a, b in zip(eager, compiled):
        for key in ("loss", "l1", "ssim", "motion"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-7), (a["step"], key)
    assert runs["always"].model.compiled_state_at is not None and runs["never"].model.compiled_state_at is None


def test_skipping_invisible_gaussians_leaves_training_unchanged(tiny, tmp_path):
    """optimize.skip_invisible on and off: the same loss sequence and the same densification (counts), up to the
    float rounding of gathering fewer rows."""
    files, scene = tiny
    logs = {}
    for skip in (True, False):
        cfg = small_config(iterations=12, checkpoint_every=0, log_every=4, refine_start=2, refine_every=3,
                           refine_stop=12, skip_invisible=skip, temporal_opacity_init=0.5)
        data, initial = _inputs(files, scene, cfg)
        model = train(cfg, data, initial, tmp_path / str(skip), seed=2).model
        logs[skip] = _log(tmp_path / str(skip) / "log.csv")
    with torch.no_grad():                                          # there was something to skip
        opacities = model.gaussians_at(0.5)["opacities"]
    assert int((model.splats["is_dynamic"] & (opacities < 1 / 255)).sum()) > 20
    assert [r["gaussians"] for r in logs[True]] == [r["gaussians"] for r in logs[False]]
    assert len({r["gaussians"] for r in logs[True]}) >= 3
    for a, b in zip(logs[False], logs[True]):
        for key in ("loss", "l1", "ssim", "motion", "rigidity"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5, abs=1e-8), (a["step"], key)


@pytest.mark.parametrize("older_torch", [False, True])
def test_a_backend_that_cannot_compile_is_a_one_line_error(tiny, tmp_path, monkeypatch, older_torch):
    """(older_torch: torch 2.11, the GPU hosts' version, has no TritonUnavailableError; naming it in the except
    clause turned this error into an AttributeError there.)"""
    import torch._dynamo
    from torch._dynamo.backends.registry import register_backend

    if older_torch:
        monkeypatch.delattr(torch._dynamo.exc, "TritonUnavailableError", raising=False)

    from pipeline.errors import UserError

    @register_backend(name=f"page4dgs_test_no_compiler_{older_torch}")
    def _no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    torch._dynamo.reset()
    files, scene = tiny
    cfg = small_config(iterations=2, checkpoint_every=0, compile="always",
                       compile_backend=f"page4dgs_test_no_compiler_{older_torch}")
    data, initial = _inputs(files, scene, cfg)
    with pytest.raises(UserError, match=r"RuntimeError: no C\+\+ compiler found; set optimize.compile=never"):
        train(cfg, data, initial, tmp_path / "run", seed=0)
    cfg = small_config(iterations=2, compile="always", compile_backend="no_such_backend")
    with pytest.raises(UserError, match="unknown torch.compile backend 'no_such_backend'"):
        train(cfg, data, initial, tmp_path / "other", seed=0)


def test_cuda_graphs_need_compile_with_inductor(tiny, tmp_path):
    from pipeline.errors import UserError
    from stages.optimize.trainer import step_functions

    files, scene = tiny
    for settings in ({"compile": "never"}, {"compile": "always", "compile_backend": "aot_eager"}):
        cfg = small_config(iterations=2, checkpoint_every=0, cuda_graphs=True, **settings)
        data, initial = _inputs(files, scene, cfg)
        with pytest.raises(UserError, match="optimize.cuda_graphs needs optimize.compile=always or cuda"):
            train(cfg, data, initial, tmp_path / settings["compile"], seed=0)
    cfg = small_config(compile="cuda", cuda_graphs=True)           # on a CPU: eager, no graphs, no error
    functions = step_functions(cfg, None, torch.device("cpu"))
    assert not functions.cuda_graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind,batch_size", [("bases", 1), ("planes", 1), ("bases", 2)])
def test_cuda_graph_steps_follow_the_compiled_loss_sequence(tiny, tmp_path, kind, batch_size):
    """optimize.cuda_graphs replays the kernels torch.compile generates: against the same compiled functions run
    without graphs (every dynamic Gaussian deformed in both) on the GPU, the same Gaussian counts and losses step for
    step, through densifications that change the count (new graphs), also with two views per step (each compiled
    function replayed twice per step). What is left is float noise (gsplat's and the plane sampler's atomic adds),
    measured here as the difference between two compiled runs: graphs stay within three times that noise, or 1e-3,
    whichever is larger; stale inputs or overwritten outputs would be far off. (Compiled against eager: the CPU test
    above.)"""
    import torch._dynamo
    from torch._dynamo.utils import counters

    files, scene = tiny
    runs = (("compiled", {"compile": "always", "skip_invisible": False}),
            ("compiled_again", {"compile": "always", "skip_invisible": False}),
            ("graphs", {"compile": "always", "cuda_graphs": True}))
    for name, settings in runs:
        torch._dynamo.reset()
        counters.clear()
        cfg = small_config(deformation=kind, iterations=16, checkpoint_every=0, log_every=4, refine_start=2,
                           refine_every=3, refine_stop=16, backend="auto", batch_size=batch_size, **settings)
        data, initial = _inputs(files, scene, cfg, "cuda")
        train(cfg, data, initial, tmp_path / name, device="cuda", seed=5)
    compiled, again, graphs = (_log(tmp_path / name / "log.csv") for name, _ in runs)
    assert counters["inductor"]["cudagraph_skips"] == 0, "inductor ran the graphs without CUDA graphs"
    assert [r["gaussians"] for r in graphs] == [r["gaussians"] for r in compiled]
    assert len({r["gaussians"] for r in compiled}) >= 4, "the count changed several times inside the run"

    def worst(rows):
        return max((abs(float(b[k]) - float(a[k])) / max(abs(float(a[k])), 1e-6), int(a["step"]), k)
                   for a, b in zip(compiled, rows) for k in ("loss", "l1", "ssim", "motion"))

    assert [r["gaussians"] for r in again] == [r["gaussians"] for r in compiled]   # the noise is float noise
    noise, graphed = worst(again), worst(graphs)
    assert noise[0] < 1e-2, f"two compiled runs apart ({noise}): no reference to compare with"
    print(f"{kind}-{batch_size}: compiled twice {noise}, graphs {graphed}")
    assert graphed[0] <= max(1e-3, 3 * noise[0]), f"graphs {graphed} against two compiled runs' {noise}"


def test_the_residual_loss_is_the_scaled_mean_squared_displacement():
    from stages.optimize.losses import residual_loss

    moved = torch.zeros(2, 10)
    moved[0, :3] = torch.tensor([2.0, 0.0, 0.0])       # position: (2 / scale)^2 = 1 with scale 2
    moved[0, 3] = 3.0                                  # a quaternion offset: 9
    moved[1, 7:10] = 1.0                               # log-scale offsets: 3
    assert float(residual_loss(moved, 2.0)) == pytest.approx((1 + 9 + 3) / 2)
    assert float(residual_loss(moved[:0], 2.0)) == 0.0


def test_motion_parts_reaches_the_motion_regulariser(tiny, tmp_path, monkeypatch):
    """optimize.motion_parts is what each step's motion regulariser is called with (its effect:
    test_motion_parts_coefficients_penalises_only_the_hybrids_per_gaussian_motion)."""
    files, scene = tiny
    seen = []
    original = trainer_module.motion_penalty

    def spy(*args):
        seen.append(args[-1])
        return original(*args)

    monkeypatch.setattr(trainer_module, "motion_penalty", spy)
    cfg = small_config(iterations=3, densify=False, deformation="planes_bases", planes_resolution=[4],
                       bases_count=3, rigidity_lambda=0.0, motion_parts="coefficients")
    data, initial = _inputs(files, scene, cfg)
    train(cfg, data, initial, tmp_path / "run", seed=0)
    assert seen == ["coefficients"] * 3


def test_the_motion_regulariser_reads_the_first_renders_deformation(tiny, tmp_path, monkeypatch):
    """optimize.shared_motion: a step's motion regulariser takes its second differences from the first view's
    gaussians_at (one evaluation of the field for both): at every step they are the accelerations of the drawn rows
    at the drawn times, as computed on their own, and the regulariser (with the planes' total variation) is made
    from them. Its default, 'cuda', leaves a CPU run on the regulariser's own call."""
    from stages.optimize.model import GaussianModel4D

    files, scene = tiny
    asked, given = [], []
    original = GaussianModel4D.gaussians_at

    def gaussians_at(self, *args, motion=None, **kwargs):
        out = original(self, *args, motion=motion, **kwargs)
        if motion is not None:
            with torch.no_grad():
                asked.append((self.accelerations(motion[1], motion[2], motion[0]), out["second_difference"]))
        return out

    def motion_penalty_from(acceleration, deformation, scene_scale):
        given.append(acceleration.detach().clone())
        return trainer_module.acceleration_loss(acceleration, scene_scale) + deformation.regularization()

    monkeypatch.setattr(GaussianModel4D, "gaussians_at", gaussians_at)
    monkeypatch.setattr(trainer_module, "motion_penalty_from", motion_penalty_from)
    cfg = small_config(iterations=4, densify=False, deformation="planes_bases", planes_resolution=[4],
                       bases_count=3, rigidity_lambda=0.0, log_every=1, shared_motion="always")
    data, initial = _inputs(files, scene, cfg)
    train(cfg, data, initial, tmp_path / "run", seed=0)
    assert len(asked) == len(given) == 4
    pairs = list(zip(asked, given))
    asked.clear()
    given.clear()
    cfg.shared_motion = "cuda"                          # on the CPU: the regulariser's own call, as before
    train(cfg, data, initial, tmp_path / "apart", seed=0)
    assert asked == [] and len(given) == 4              # (motion_penalty reads motion_penalty_from too)
    assert pairs[-1][0][0].abs().max() > 0              # (the motion starts at zero: the last layers are zero)
    for (alone, shared), used in pairs:
        torch.testing.assert_close(shared[:, :3].detach(), alone, rtol=1e-5, atol=1e-7)
        assert torch.equal(used, shared[:, :3].detach())


def test_motion_every_regularises_every_kth_step_at_k_times_the_weight(tiny, tmp_path, monkeypatch):
    """optimize.motion_every 3: the motion regulariser runs at steps 0, 3, 6 only, and there adds 3 x motion_lambda x
    its value to the loss (the same penalty on average); 1 is every step at the weight itself."""
    files, scene = tiny
    for name in ("motion_penalty", "motion_penalty_from"):     # a known value, fused with the render or not
        monkeypatch.setattr(trainer_module, name, lambda *args: torch.tensor(5.0))
    rows = {}
    for every in (1, 3):
        cfg = small_config(iterations=7, densify=False, deformation="bases", bases_count=3, rigidity_lambda=0.0,
                           motion_lambda=0.01, motion_every=every, log_every=1)
        data, initial = _inputs(files, scene, cfg)
        train(cfg, data, initial, tmp_path / f"every{every}", seed=0)
        rows[every] = _log(tmp_path / f"every{every}" / "log.csv")
    assert [float(r["motion"]) for r in rows[1]] == [5.0] * 7
    assert [float(r["motion"]) for r in rows[3]] == [5.0, 0, 0, 5.0, 0, 0, 5.0]
    # step 0 is the same model and view in both runs: the losses differ by the extra weight only
    assert float(rows[3][0]["loss"]) - float(rows[1][0]["loss"]) == pytest.approx(0.01 * (3 - 1) * 5.0, rel=1e-4)


@pytest.mark.parametrize("kind", ["planes_bases", "mlp_bases"])
def test_a_field_with_bases_trains_holds_its_coefficients_resumes_and_loads_back(kind, tiny, tmp_path):
    """The hybrid models: the optimizer has a group per part, residual_lambda pulls the per-Gaussian coefficients
    towards zero (a smaller norm than without it), a checkpoint resumes to the same loss sequence through
    densification, and the saved model loads back and renders the same."""
    files, scene = tiny
    moved = {}
    for weight in (0.0, 100.0):
        cfg = small_config(iterations=8, deformation=kind, planes_resolution=[4], bases_count=3, mlp_width=32,
                           lr_motion=0.05, residual_lambda=weight, rigidity_lambda=0.0)
        data, initial = _inputs(files, scene, cfg)
        result = train(cfg, data, initial, tmp_path / f"w{weight}", seed=0)
        index = result.model.dynamic_index()
        times = torch.linspace(0, 1, len(index))
        with torch.no_grad():     # how far the Gaussians' own coefficients move them, shared curves included
            moved[weight] = float(trainer_module.residual_penalty(result.model, index, times, 1.0))
    assert moved[0.0] > 0 and moved[100.0] < 0.5 * moved[0.0]
    groups = {g["name"]: g["params"] for g in trainer_module.build_optimizer(cfg, result.model, None, 1.0).param_groups}
    assert {"field", "bases", "motion_coefs"} <= set(groups) and ("planes" in groups) == (kind == "planes_bases")
    field = result.model.deformation.field
    expected = ([*field.hidden.parameters(), *field.out.parameters()] if kind == "planes_bases"
                else [*field.parameters()])
    assert [id(p) for p in groups["field"]] == [id(p) for p in expected]
    a, _ = resumed_run_matches(cfg, data, initial, tmp_path, result, "w100.0", seed=0)
    assert int(a[-1]["gaussians"]) != int(a[0]["gaussians"]), "densification happened"
    result.model.save(tmp_path / "model.pt")
    back = load_model(tmp_path / "model.pt")
    assert back.deformation.spec() == result.model.deformation.spec()
    x, y = result.model.gaussians_at(0.6), back.gaussians_at(0.6)
    for key in x:
        torch.testing.assert_close(x[key], y[key])


def test_the_rasterize_mode_of_the_config_reaches_the_model_and_its_training_renders(tiny, tmp_path, monkeypatch):
    """optimize.rasterize_mode is the trained model's mode, and the training step renders with it."""
    from stages.optimize import rasterize as rasterize_module

    files, scene = tiny
    seen = []
    original = rasterize_module.rasterization

    def spy(*args, **kwargs):
        seen.append(kwargs.get("rasterize_mode"))
        return original(*args, **kwargs)

    monkeypatch.setattr(rasterize_module, "rasterization", spy)
    cfg = small_config(iterations=2, rasterize_mode="antialiased")
    data, initial = _inputs(files, scene, cfg)
    result = train(cfg, data, initial, tmp_path / "aa", seed=0)
    assert result.model.rasterize_mode == "antialiased"
    assert seen and set(seen) == {"antialiased"}
    assert build_model(small_config(), initial, 0.1, 8, torch.device("cpu")).rasterize_mode == "classic"


def test_drop_factors_leave_out_single_gaussians_or_whole_per_time_copies():
    """DropGaussian's factors: 0 for a Gaussian left out, 1 / (1 - rate) for one kept, from the generator's draws
    alone; by copy, one draw per training time decides for every dynamic Gaussian seen then; the rate rises
    linearly with the step."""
    from stages.optimize.trainer import drop_factors, drop_rate_at

    cfg = small_config(drop_rate=0.4, iterations=10)
    assert [drop_rate_at(cfg, s) for s in (0, 5, 10)] == [0.0, 0.2, 0.4]
    assert drop_rate_at(small_config(), 7) == 0.0                               # off by default
    n = 20000
    is_dynamic = torch.rand(n, generator=torch.Generator().manual_seed(5)) < 0.6
    times = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    slot = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(6))
    anchor_times = times[slot] + 1e-6 * torch.randn(n, generator=torch.Generator().manual_seed(7))  # float noise
    assert drop_factors(0.0, "gaussian", is_dynamic, anchor_times, times, torch.Generator()) is None

    factors = drop_factors(0.25, "gaussian", is_dynamic, anchor_times, times, torch.Generator().manual_seed(0))
    expected = torch.rand(n, generator=torch.Generator().manual_seed(0)) >= 0.25
    assert torch.equal(factors, torch.where(expected, 4 / 3, 0.0))
    assert abs(float((factors == 0).float().mean()) - 0.25) < 0.02                # the rate, static ones included
    assert abs(float(factors.mean()) - 1.0) < 0.03                                # as opaque on average

    for seed in range(4):
        factors = drop_factors(0.5, "copy", is_dynamic, anchor_times, times, torch.Generator().manual_seed(seed))
        dropped = torch.rand(5, generator=torch.Generator().manual_seed(seed)) < 0.5
        assert torch.all(factors[~is_dynamic] == 1.0)                            # static: never left out
        for k in range(5):
            copy = is_dynamic & (slot == k)
            assert torch.all(factors[copy] == (0.0 if dropped[k] else 2.0)), (seed, k)


def test_dropping_gaussians_changes_the_training_renders_and_resumes_exactly(tiny, tmp_path):
    files, scene = tiny
    for unit in ("gaussian", "copy"):
        cfg = small_config(drop_rate=0.6, drop_unit=unit)
        data, initial = _inputs(files, scene, cfg)
        straight = train(cfg, data, initial, tmp_path / unit / "straight", seed=3)
        a, _ = resumed_run_matches(cfg, data, initial, tmp_path / unit, straight, "straight", seed=3)
        plain = train(small_config(), data, initial, tmp_path / unit / "plain", seed=3)
        b = _log(tmp_path / unit / "plain/log.csv")
        assert a[0]["loss"] == b[0]["loss"]                                       # step 0: rate 0, nothing left out
        assert a[-1]["loss"] != b[-1]["loss"], unit
        assert plain.steps == straight.steps == 8
