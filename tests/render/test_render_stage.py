"""The render stage on a finished (fake) run, and the `page4dgs render` / `export` commands."""

import re

import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import config_from_dict, read_yaml
from pipeline.runner import STAGES, StageContext
from pipeline.scene import load_scene
from stages.render.paths import PathView
from stages.render.renderer import render_dynamic_weight
from tests.render.fake_run import use_tiny_model


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_render_stage_writes_test_views_and_videos(fake_run, monkeypatch):
    use_tiny_model(monkeypatch, fake_run.model)
    run_dir = fake_run.run_dir
    (run_dir / "videos").mkdir()
    (run_dir / "videos" / "bullet.mp4").write_bytes(b"made by `page4dgs render` earlier")
    config = config_from_dict(read_yaml(run_dir / "config.yaml"))
    scene = load_scene(config.scene)
    spec = next(s for s in STAGES if s.name == "render")
    ctx = StageContext(spec=spec, run_dir=run_dir, work_dir=run_dir / ".work" / "render", config=config,
                       scene=scene, device="cpu")
    from stages.render import run

    summary = run(ctx)
    assert summary["test_views"] == len(fake_run.test_names) == 2
    work = ctx.work_dir
    for name in fake_run.test_names:
        frame = scene.frame(name)
        expected = fake_run.model.render(frame.camera.world_to_camera, frame.camera.K, frame.width, frame.height,
                                         frame.time)
        png = iio.imread(work / "render" / "test" / f"{name}.png")
        assert png.shape == (frame.height, frame.width, 3)
        assert np.array_equal(png, np.round(expected["rgb"].numpy() * 255).astype(np.uint8))
        depth = np.load(work / "render" / "test_depth" / f"{name}.npy")
        covered = expected["alpha"].numpy() > 0.5
        assert np.allclose(depth[covered], expected["depth"].numpy()[covered], rtol=1e-5)
    videos = sorted(p.name for p in (work / "videos").iterdir())
    assert videos == ["bullet.mp4", "spiral-time", "spiral-time.mp4", "spiral-time_depth.mp4",
                      "spiral-time_dynamic.mp4"]
    assert len(list((work / "videos" / "spiral-time").iterdir())) == config.render.video_frames == 4
    decoded = list(iio.imiter(work / "videos" / "spiral-time.mp4", extension=".mp4"))
    assert len(decoded) == 4 and decoded[0].shape == (26, 32, 3)      # 40x32 capped at 32 -> 32x25.6 -> 32x26
    assert (work / "videos" / "bullet.mp4").read_bytes().startswith(b"made by")


def test_dynamic_weight_marks_the_moving_gaussian(fake_run):
    scene = load_scene(config_from_dict(read_yaml(fake_run.run_dir / "config.yaml")).scene)
    camera = scene.frames[0].camera
    view = PathView(camera.world_to_camera, camera.K, camera.width, camera.height, 0.5)
    weight = render_dynamic_weight(fake_run.model, view, backend="torch")
    g = fake_run.model.gaussians_at(0.5)
    uv, _ = camera.project(g["means"].numpy())
    inside = lambda p: 0 <= p[0] < camera.width and 0 <= p[1] < camera.height
    dyn = uv[-1]
    assert inside(dyn) and weight[int(dyn[1]), int(dyn[0])] > 0.5
    far = [p for p in uv[:-1] if inside(p) and np.linalg.norm(p - dyn) > 12]
    assert far and all(weight[int(p[1]), int(p[0])] < 0.05 for p in far)


def test_dynamic_weight_renders_in_the_models_rasterize_mode(fake_run, monkeypatch):
    """The dynamic-weight track is rasterized as the model's colours are (antialiased or classic)."""
    from stages.optimize import rasterize as rasterize_module

    seen = []
    original = rasterize_module.rasterization
    monkeypatch.setattr(rasterize_module, "rasterization",
                        lambda *a, **k: seen.append(k.get("rasterize_mode")) or original(*a, **k))
    monkeypatch.setattr(fake_run.model, "rasterize_mode", "antialiased")
    camera = load_scene(config_from_dict(read_yaml(fake_run.run_dir / "config.yaml")).scene).frames[0].camera
    render_dynamic_weight(fake_run.model, PathView(camera.world_to_camera, camera.K, camera.width, camera.height, 0.5),
                          backend="torch")
    assert seen == ["antialiased"]


def test_render_command_writes_only_its_video(fake_run, monkeypatch):
    use_tiny_model(monkeypatch, fake_run.model)
    before = snapshot(fake_run.run_dir)
    assert main(["render", str(fake_run.run_dir), "--path", "bullet", "--frames", "3"]) == 0
    after = snapshot(fake_run.run_dir)
    new = sorted(set(after) - set(before))
    assert new == ["videos/bullet.mp4", "videos/bullet/00000.png", "videos/bullet/00001.png",
                   "videos/bullet/00002.png", "videos/bullet_depth.mp4", "videos/bullet_dynamic.mp4"]
    assert all(after[k] == v for k, v in before.items())
    out = fake_run.run_dir.parent / "elsewhere" / "clip.mp4"
    assert main(["render", str(fake_run.run_dir), "--path", "sweep", "--frames", "2", "--out", str(out)]) == 0
    assert out.is_file() and (out.parent / "clip_depth.mp4").is_file()


@pytest.mark.parametrize("argv, message", [
    (["render", "{run}/missing", "--path", "input"], "run folder not found"),
    (["render", "{run}", "--path", "input", "--out", "{run}/clip.gif"], "--out must name an .mp4 file"),
    (["render", "{run}", "--path", "spiral", "--frames", "1"], "--frames must lie in [2, 3600] (got 1)"),
    (["render", "{run}", "--path", "spiral", "--frames", "100000000"], "--frames must lie in [2, 3600]"),
    (["render", "{run}", "--path", "input", "--out", "{run}/render"], "--out must name an .mp4 file"),
    (["render", "{run}", "--path", "input", "--out", "{run}/config.yaml/clip.mp4"],
     "config.yaml, which is a file, not a folder"),
    (["export", "{run}/missing", "--format", "ply"], "run folder not found"),
])
def test_command_errors_are_one_line(fake_run, monkeypatch, capsys, argv, message):
    use_tiny_model(monkeypatch, fake_run.model)
    assert main([a.format(run=fake_run.run_dir) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_render_never_replaces_a_folder_it_did_not_write(fake_run, monkeypatch, capsys):
    use_tiny_model(monkeypatch, fake_run.model)
    photos = fake_run.run_dir.parent / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("mine")
    assert main(["render", str(fake_run.run_dir), "--path", "sweep", "--frames", "2",
                 "--out", str(photos.parent / "photos.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds other files" in err[0]        # refused before an encoder starts (and warns)
    assert sorted(p.name for p in photos.iterdir()) == ["notes.txt"] and not (photos.parent / "photos.mp4").exists()
    # Its own older frame folder is replaced as before.
    clip = photos.parent / "clip.mp4"
    for frames in ("3", "2"):
        assert main(["render", str(fake_run.run_dir), "--path", "sweep", "--frames", frames, "--out", str(clip)]) == 0
    assert sorted(p.name for p in (photos.parent / "clip").iterdir()) == ["00000.png", "00001.png"]


def test_a_folder_named_like_a_video_is_refused_before_anything_is_written(fake_run, monkeypatch, capsys):
    # `--out clip.mp4` where clip.mp4 (or clip_depth.mp4) is a folder: one line naming it, and no video of the set
    # is written (the colour and dynamic videos used to be, then a temporary file's name was reported).
    use_tiny_model(monkeypatch, fake_run.model)
    for blocked in ("clip.mp4", "clip_depth.mp4"):
        where = fake_run.run_dir.parent / blocked
        where.mkdir()
        assert main(["render", str(fake_run.run_dir), "--path", "sweep", "--frames", "2",
                     "--out", str(fake_run.run_dir.parent / "clip.mp4")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a folder stands where the" in err[0] and blocked in err[0]
        assert ".tmp" not in err[0]
        assert sorted(p.name for p in fake_run.run_dir.parent.iterdir() if p.name.startswith("clip")) == [blocked]
        where.rmdir()


@pytest.mark.parametrize("edit, message", [("video_fps: .inf", "render: video_fps must be a finite number (got inf)"),
                                           ("video_fps: 0.0", "render: video_fps must be > 0"),
                                           ("video_frames: 1", "video_frames must lie in [2, 3600]")])
def test_a_run_config_edited_to_a_bad_value_is_refused(fake_run, capsys, edit, message):
    # render/export/evaluate check a run's config.yaml as reconstruct checks a preset (an infinite fps was an
    # OverflowError traceback from the encoder, 0 fps silently wrote a 16-fps video).
    import re

    config = fake_run.run_dir / "config.yaml"
    key = edit.split(":")[0]
    config.write_text(re.sub(rf"(?m)^  {key}: .*$", f"  {edit}", config.read_text(), count=1))
    for argv in (["render", str(fake_run.run_dir), "--path", "spiral", "--frames", "2"],
                 ["export", str(fake_run.run_dir), "--format", "ply"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"page4dgs: error: {config}: ") and message in err[0], err


def test_an_empty_run_config_is_refused(fake_run, capsys):
    config = fake_run.run_dir / "config.yaml"
    config.write_text("")
    assert main(["export", str(fake_run.run_dir), "--format", "nerfstudio"]) == 2
    assert "config.yaml is empty" in capsys.readouterr().err


def test_a_run_made_on_cuda_is_rendered_here_with_device_cpu(fake_run, monkeypatch, capsys):
    # A run folder copied from a GPU machine says device: cuda; render/export/evaluate take --device.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)         # this machine has no CUDA
    use_tiny_model(monkeypatch, fake_run.model)
    config = fake_run.run_dir / "config.yaml"
    config.write_text(re.sub(r"(?m)^device: .*$", "device: cuda", config.read_text()))
    assert "device: cuda" in config.read_text()
    for command in (["export", str(fake_run.run_dir), "--format", "ply"], ["evaluate", str(fake_run.run_dir)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "config.yaml says device: cuda; add --device cpu" in err and "\n" not in err, err
    assert main(["export", str(fake_run.run_dir), "--format", "ply", "--device", "cpu"]) == 0
    assert main(["render", str(fake_run.run_dir), "--path", "sweep", "--frames", "2", "--device", "cuda"]) == 2
    assert "use --device auto or --device cpu" in capsys.readouterr().err
    assert main(["render", str(fake_run.run_dir), "--path", "sweep", "--frames", "2", "--device", "auto"]) == 0
    assert (fake_run.run_dir / "videos" / "sweep.mp4").is_file()


def test_export_command(fake_run):
    assert main(["export", str(fake_run.run_dir), "--format", "nerfstudio"]) == 0
    assert (fake_run.run_dir / "export" / "nerfstudio" / "transforms.json").is_file()
