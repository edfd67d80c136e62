"""bench/oracle_motion.py: the scene's true motion carries surface points of one frame onto the moving silhouettes of
another (checked in that frame's camera against its ground-truth dynamic mask), and the rotation conversion is the
inverse of the model's quaternion_matrix."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from bench.oracle_motion import OracleMotion, rotation_to_quaternion
from pipeline.scene import load_scene
from pipeline.scene.config import SceneConfig
from pipeline.synthetic.writer import ObjectSceneOptions, make_object_scene
from stages.optimize.deformation import quaternion_matrix


def test_rotation_to_quaternion_inverts_quaternion_matrix(rng):
    q = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(64, 4))), dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    torch.testing.assert_close(rotation_to_quaternion(quaternion_matrix(q)), q)


def on_moving_silhouette(points: np.ndarray, frame) -> float:
    """Share of points (N, 3) that project into frame's ground-truth dynamic mask, grown by one pixel (a point on a
    part's outline may fall on the pixel beside it)."""
    mask = ndimage.binary_dilation(np.asarray(frame.load_dynamic_mask(), bool), np.ones((3, 3), bool))
    world_to_camera, K = frame.camera.world_to_camera, frame.camera.K
    camera = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    pixels = np.floor((camera @ K.T)[:, :2] / camera[:, 2:]).astype(int)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < mask.shape[1]) & (pixels[:, 1] >= 0) & (pixels[:, 1] < mask.shape[0])
    assert inside.all() and (camera[:, 2] > 0).all()
    return float(mask[pixels[:, 1], pixels[:, 0]].mean())


def test_true_motion_carries_points_onto_the_moving_parts(tmp_path):
    out = make_object_scene(tmp_path / "object", 3, ObjectSceneOptions(frames=6, resolution=48, test_views=1,
                                                                       val_views=0, supersample=1))
    scene = load_scene(SceneConfig(source=str(out)))
    frames = sorted((f for f in scene.frames if f.split == "train"), key=lambda f: f.time)
    points = np.load(out / "ground_truth" / "points.npz")
    motion = OracleMotion(str(out))
    for a, b in ((0, 3), (1, 5), (2, 3)):
        seen = (np.abs(points["time"] - frames[a].time) < 1e-4) & points["is_dynamic"]
        means = torch.tensor(points["xyz"][seen])
        count = len(means)
        anchors = torch.full((count,), frames[a].time)
        coefs = {"oracle_slot": torch.tensor(points["slot"][seen], dtype=torch.float32),
                 "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(count, 1), "anchor_times": anchors}
        moved = means + motion.displacement(means, torch.tensor(frames[b].time), anchors, coefs)[:, :3]
        assert count > 100
        carried, left = on_moving_silhouette(moved.numpy(), frames[b]), on_moving_silhouette(means.numpy(), frames[b])
        assert carried >= 0.99 and left < carried - 0.05, (a, b, carried, left)
    at_anchor = motion.displacement(means, anchors, anchors, coefs)
    assert at_anchor.abs().max() == pytest.approx(0.0, abs=1e-5)


def test_motion_error_is_that_of_leaving_still_for_no_motion_and_zero_for_the_true_one(tmp_path, monkeypatch):
    # A bases model straight from its initialization (zero coefficients: no motion) on the scene's own surface
    # points: motion_error must find its Gaussians exactly where "left still" puts them, and both well away from the
    # true positions (the scene moves). The same Gaussians moved by the true motion (the model that the
    # true-motion run trains) must be found where the truth puts them.
    from bench.oracle_motion import motion_error, use_true_motion
    import stages.optimize.trainer as trainer
    from stages.optimize.config import OptimizeConfig
    from stages.optimize.trainer import InitialGaussians

    out = make_object_scene(tmp_path / "object", 5, ObjectSceneOptions(frames=6, resolution=48, test_views=1,
                                                                       val_views=0, supersample=1))
    points = np.load(out / "ground_truth" / "points.npz")
    count = len(points["xyz"])
    initial = InitialGaussians(means=points["xyz"].astype(np.float64), sh=np.zeros((count, 1, 3)),
                               opacity_logits=np.zeros(count), log_scales=np.full((count, 3), -4.0),
                               quats=np.tile([1.0, 0.0, 0.0, 0.0], (count, 1)), is_dynamic=points["is_dynamic"],
                               anchor_times=points["time"].astype(np.float64))
    cfg = OptimizeConfig(deformation="bases", sh_degree=0)
    model = trainer.build_model(cfg, initial, 0.2, 6, torch.device("cpu"))
    (tmp_path / "still" / "optimize").mkdir(parents=True)
    model.save(tmp_path / "still" / "optimize" / "model.pt")
    errors = motion_error(tmp_path / "still", out, gaps=(1, 2))
    assert errors["gaussians"] == int(points["is_dynamic"].sum()) > 100
    assert errors["learned_median"] == pytest.approx(errors["still_median"], abs=1e-6)
    assert errors["learned_p90"] == pytest.approx(errors["still_p90"], abs=1e-6)
    assert min(errors["still_median"]) > 0.005 and errors["still_p90"][1] > errors["still_p90"][0]
    parts = errors["parts"]                      # both kinds of moving part, each left where it was
    assert parts["orbiters"]["gaussians"] > 10 and parts["figure"]["gaussians"] > 10
    assert parts["orbiters"]["gaussians"] + parts["figure"]["gaussians"] == errors["gaussians"]
    for part in parts.values():
        assert part["learned_median"] == pytest.approx(part["still_median"], abs=1e-6)

    use_true_motion(out, monkeypatch.setattr)
    moving = trainer.build_model(cfg, initial, 0.2, 6, torch.device("cpu"))
    (tmp_path / "true" / "optimize").mkdir(parents=True)
    moving.save(tmp_path / "true" / "optimize" / "model.pt")
    errors = motion_error(tmp_path / "true", out, gaps=(1, 2))
    assert max(errors["learned_p90"]) < 1e-5 and min(errors["still_median"]) > 0.005
    assert all(max(part["learned_median"]) < 1e-5 for part in errors["parts"].values())


def test_a_stopped_run_is_reported_without_metrics(tmp_path, monkeypatch, capsys):
    """A true-motion run cut short (by a time budget, return code 130) has no metrics: the summary names it and its
    return code instead of failing on the missing figures, and the exit code is the worst run's."""
    import bench.oracle_motion as oracle

    rows = {"learned": {"returncode": 0, "psnr": 26.15, "ssim": 0.957, "lpips_alex": 0.076, "lpips_vgg": None,
                        "moving": {"psnr_moving": 19.7, "error_share_moving": 0.4, "error_share_border": 0.5},
                        "optimize": None},
            "true-motion": {"returncode": 130, "psnr": None, "ssim": None, "lpips_alex": None, "lpips_vgg": None,
                            "moving": {}, "optimize": None}}
    monkeypatch.setattr(oracle, "reconstruct", lambda scene, run, overrides: rows[run.name])
    monkeypatch.setattr(oracle, "use_true_motion", lambda scene: None)
    assert oracle.main([str(tmp_path / "scene"), str(tmp_path / "out")]) == 130
    printed = capsys.readouterr().out
    assert "learned      PSNR 26.15" in printed and "true-motion  no metrics (return code 130)" in printed
    assert oracle.main([str(tmp_path / "scene"), str(tmp_path / "out2"), "--arms", "true-motion"]) == 130
    printed = capsys.readouterr().out
    assert "true-motion  no metrics" in printed and "learned" not in printed
