"""Exports: 3DGS PLY read back with plyfile into the same Gaussians; nerfstudio and COLMAP camera exports loaded
back through the project's scene loaders (and an independent COLMAP text reader)."""

import json
import math

import numpy as np
import pytest
import torch
from plyfile import PlyData
from scipy.spatial.transform import Rotation

from pipeline.config import config_from_dict, read_yaml
from pipeline.scene import load_scene
from pipeline.scene.config import SceneConfig
from stages.initialize.geometry_io import read_cameras
from stages.render.export import (colmap_text_model, export_run, export_times, gaussians_to_ply_rows,
                                  ply_property_names, write_gaussian_ply)
from tests.render.fake_run import TinyModel, use_tiny_model

SH_C0 = 0.28209479177387814


def read_back(path):
    """3DGS PLY -> post-activation Gaussians, written out from the layout's definition (gsplat.md §7)."""
    vertex = PlyData.read(str(path))["vertex"]
    names = list(vertex.data.dtype.names)
    col = lambda prefix, n: np.stack([vertex[f"{prefix}{i}"] for i in range(n)], axis=1).astype(np.float64)
    n_rest = sum(name.startswith("f_rest_") for name in names)
    k = n_rest // 3 + 1
    sh = np.concatenate([col("f_dc_", 3)[:, None, :],
                         col("f_rest_", n_rest).reshape(-1, 3, k - 1).transpose(0, 2, 1)], axis=1)
    return names, {
        "means": np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64),
        "opacities": 1 / (1 + np.exp(-np.asarray(vertex["opacity"], np.float64))),
        "scales": np.exp(col("scale_", 3)), "quats": col("rot_", 4), "sh": sh,
    }


def test_ply_reads_back_into_the_same_gaussians(tmp_path):
    g = TinyModel().gaussians_at(0.7)
    assert write_gaussian_ply(tmp_path / "t.ply", g) == 0
    names, back = read_back(tmp_path / "t.ply")
    assert names == ply_property_names(1) and len(names) == 62 - 36 and names[9] == "f_rest_0"
    data = PlyData.read(str(tmp_path / "t.ply"))
    assert data.byte_order == "<" and all(p.val_dtype in ("f4", "float32") for p in data["vertex"].properties)
    assert np.allclose(back["means"], g["means"].numpy(), atol=1e-6)
    assert np.allclose(back["scales"], g["scales"].numpy(), rtol=1e-5)
    assert np.allclose(back["opacities"], g["opacities"].numpy(), atol=1e-6)
    assert np.allclose(back["sh"], g["sh"].numpy(), atol=1e-6)
    quats = g["quats"].numpy() / np.linalg.norm(g["quats"].numpy(), axis=1, keepdims=True)
    assert np.allclose(back["quats"], quats, atol=1e-6)


def test_f_rest_is_channel_major():
    n = 2
    sh = torch.zeros(n, 4, 3)
    sh[:, 1:, 0], sh[:, 1:, 1], sh[:, 1:, 2] = 1.0, 2.0, 3.0   # higher-order R coefficients = 1, G = 2, B = 3
    sh[:, 2, 1] = 20.0                                         # G, SH index 2
    g = {"means": torch.zeros(n, 3), "quats": torch.tensor([[1.0, 0, 0, 0]] * n), "scales": torch.ones(n, 3),
         "opacities": torch.full((n,), 0.5), "sh": sh}
    rows, _ = gaussians_to_ply_rows(g)
    rest = [float(rows[f"f_rest_{i}"][0]) for i in range(9)]
    assert rest == [1, 1, 1, 2, 20, 2, 3, 3, 3]
    assert float(rows["opacity"][0]) == 0.0 and float(rows["scale_0"][0]) == 0.0


def test_non_finite_rows_are_dropped_not_the_file():
    g = TinyModel().gaussians_at(0.0)
    g = {k: v.clone() for k, v in g.items()}
    g["opacities"][3] = float("nan")
    g["means"][5, 1] = float("inf")
    g["opacities"][7] = 1.0                       # clipped before the logit, kept
    rows, dropped = gaussians_to_ply_rows(g)
    assert dropped == 2 and len(rows) == len(g["means"]) - 2 and np.isfinite(rows["opacity"]).all()


def test_ply_export_of_a_run(fake_run, monkeypatch):
    use_tiny_model(monkeypatch, fake_run.model)
    monkeypatch.setattr(fake_run.model, "rasterize_mode", "antialiased")      # index.json names the model's mode
    config = config_from_dict(read_yaml(fake_run.run_dir / "config.yaml"))
    before = {p: p.read_bytes() for p in fake_run.run_dir.rglob("*") if p.is_file()}
    target = export_run(fake_run.run_dir, "ply", config)
    index = json.loads((target / "index.json").read_text())
    cameras = json.loads((fake_run.run_dir / "geometry/cameras.json").read_text())["frames"]
    assert [f["time"] for f in index["files"]] == sorted(c["time"] for c in cameras)
    assert index["rasterize_mode"] == "antialiased" and index["sh_degree"] == 1
    last = index["files"][-1]
    _, back = read_back(target / last["file"])
    assert np.allclose(back["means"], fake_run.model.gaussians_at(last["time"])["means"].numpy(), atol=1e-6)
    assert (target / "points.ply").read_bytes() == (fake_run.run_dir / "geometry/points.ply").read_bytes()
    assert all(p.read_bytes() == data for p, data in before.items()), "other run outputs are untouched"
    assert sorted(p.name for p in (fake_run.run_dir / "export").iterdir()) == ["ply"]
    frames, _ = read_cameras(fake_run.run_dir / "geometry/cameras.json")
    assert export_times(frames, 3) == pytest.approx([0.0, 4 / 7, 1.0])


def scene_cameras(scene):
    return {f.name: f for f in scene.frames}


def test_nerfstudio_export_round_trips_through_our_loader(fake_run):
    config = config_from_dict(read_yaml(fake_run.run_dir / "config.yaml"))
    target = export_run(fake_run.run_dir, "nerfstudio", config)
    original = scene_cameras(load_scene(config.scene))
    loaded = load_scene(SceneConfig(source=str(target)))
    assert loaded.format == "nerfstudio" and set(scene_cameras(loaded)) == set(original)
    for name, frame in scene_cameras(loaded).items():
        ref = original[name]
        assert np.allclose(frame.camera.world_to_camera, ref.camera.world_to_camera, atol=1e-9)
        assert np.allclose(frame.camera.K, ref.camera.K, atol=1e-9)
        assert frame.time == pytest.approx(ref.time) and frame.split == ref.split
        assert np.abs(loaded.rgb(frame) - load_scene(config.scene).rgb(ref)).max() < 1e-6
    meta = json.loads((target / "transforms.json").read_text())
    assert meta["ply_file_path"] == "points.ply" and (target / "points.ply").is_file()


def read_colmap_images(text):
    """An independent reader of images.txt: name -> world-to-camera (quaternion w x y z, translation)."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    out = {}
    for line in lines[::2]:
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id, name = line.split()
        w2c = np.eye(4)
        w2c[:3, :3] = Rotation.from_quat([float(qx), float(qy), float(qz), float(qw)]).as_matrix()
        w2c[:3, 3] = [float(tx), float(ty), float(tz)]
        out[name] = (w2c, int(camera_id))
    return out


def test_colmap_export_round_trips(fake_run):
    config = config_from_dict(read_yaml(fake_run.run_dir / "config.yaml"))
    target = export_run(fake_run.run_dir, "colmap", config)
    original = scene_cameras(load_scene(config.scene))
    sparse = target / "sparse" / "0"
    images = read_colmap_images((sparse / "images.txt").read_text())
    cameras = [line.split() for line in (sparse / "cameras.txt").read_text().splitlines() if line[0] != "#"]
    assert len(cameras) == 1 and cameras[0][1:4] == ["PINHOLE", "40", "32"]
    fx, fy, cx, cy = map(float, cameras[0][4:])
    for name, (w2c, camera_id) in images.items():
        ref = original[name.removesuffix(".png")].camera
        assert camera_id == 1 and np.allclose(w2c, ref.world_to_camera, atol=1e-9)
        assert np.allclose([fx, fy, cx, cy], [ref.K[0, 0], ref.K[1, 1], ref.K[0, 2], ref.K[1, 2]])
    points = [line.split() for line in (sparse / "points3D.txt").read_text().splitlines() if line[0] != "#"]
    assert len(points) == fake_run.model.num_gaussians() and len(points[0]) == 8
    # Our COLMAP loader reads the same cameras back (time comes from image order there).
    loaded = load_scene(SceneConfig(source=str(target), test_every=0))
    for name, frame in scene_cameras(loaded).items():
        assert np.allclose(frame.camera.world_to_camera, original[name].camera.world_to_camera, atol=1e-9)
        assert np.allclose(frame.camera.K, original[name].camera.K, atol=1e-9)


def test_colmap_quaternions_are_normalised_with_non_negative_w():
    class Frame:
        width, height, K = 4, 4, np.eye(3)
        world_to_camera = np.eye(4)

    f = Frame()
    f.world_to_camera = np.diag([-1.0, -1.0, 1.0, 1.0])      # 180 degrees about z: q = (0, 0, 0, +-1)
    text = colmap_text_model([f], ["a.png"])["images.txt"]
    qw, qx, qy, qz = map(float, [l for l in text.splitlines() if l and l[0] != "#"][0].split()[1:5])
    assert qw >= 0 and math.isclose(qw**2 + qx**2 + qy**2 + qz**2, 1.0) and abs(qz) == pytest.approx(1.0)


@pytest.mark.parametrize("content", [b"", b"garbage", b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"])
def test_a_corrupt_point_cloud_is_a_one_line_error(tmp_path, content):
    from pipeline.errors import UserError
    from stages.render.export import read_points_ply

    path = tmp_path / "points.ply"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable point cloud PLY"):
        read_points_ply(path)


def test_a_relative_scene_source_is_found_from_the_folder_the_run_was_made_in(tmp_path, monkeypatch):
    """export / render / evaluate run from another folder: a relative scene.source that does not exist from there
    is taken from the manifest's working_directory; an absolute one, 'demo' and one that exists stay as they are."""
    from stages.render.cli import scene_source_for

    made_in = tmp_path / "project"
    (made_in / "data" / "clip").mkdir(parents=True)
    run = made_in / "runs" / "clip"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"stages": {}, "working_directory": str(made_in)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert scene_source_for(run, "data/clip") == str(made_in / "data" / "clip")
    assert scene_source_for(run, "data/missing") == "data/missing"          # load_scene then names it
    assert scene_source_for(run, "demo") == "demo"
    assert scene_source_for(run, str(made_in / "data" / "clip")) == str(made_in / "data" / "clip")
    (elsewhere / "data" / "clip").mkdir(parents=True)
    assert scene_source_for(run, "data/clip") == "data/clip"                # it exists from here: as typed
    (run / "manifest.json").write_text("[]")                                # an odd manifest: as typed
    monkeypatch.chdir(tmp_path)
    assert scene_source_for(run, "data/clip") == "data/clip"
