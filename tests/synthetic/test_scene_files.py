"""Written scenes: the project's loader reads back the same cameras; the ground-truth files agree with the
renderer (reprojection into other frames, dynamic masks, surface points); the same seed gives the same bytes."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.scene import load_scene
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import read_image
from pipeline.synthetic import demo
from pipeline.synthetic.writer import (ObjectSceneOptions, RoomSceneOptions, make_object_scene, make_room_scene,
                                       object_scene, render_scene, room_scene, single_thread)

ROOM = RoomSceneOptions(frames=10, width=96, textures=8)
OBJECT = ObjectSceneOptions(frames=4, resolution=48, test_views=2, val_views=2, textures=8)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    return make_room_scene(tmp_path_factory.mktemp("scenes") / "room", 7, ROOM)


@pytest.fixture(scope="module")
def obj(tmp_path_factory):
    return make_object_scene(tmp_path_factory.mktemp("scenes") / "object", 7, OBJECT)


def ground_truth_cameras(root: Path) -> dict:
    return {f["file_path"]: f for f in json.loads((root / "ground_truth" / "cameras.json").read_text())["frames"]}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("which", ["room", "obj"])
def test_loader_reads_back_the_cameras_times_and_ground_truth(which, request):
    root = request.getfixturevalue(which)
    scene = load_scene(SceneConfig(source=str(root)))
    truth = ground_truth_cameras(root)
    assert scene.format == "dnerf" and len(scene.frames) == len(truth)
    assert scene.has_cameras and scene.has_depth and scene.has_dynamic_masks
    for frame in scene.frames:
        gt = truth[str(frame.source_path.relative_to(root))]
        assert frame.split == gt["split"] and frame.time == pytest.approx(gt["time"], abs=1e-12)
        assert frame.index == gt["frame_index"]
        assert np.allclose(frame.camera.K, gt["K"], rtol=0, atol=1e-9)
        assert np.allclose(frame.camera.world_to_camera, gt["world_to_camera"], rtol=0, atol=1e-9)
        split, stem = gt["split"], gt["stem"]
        assert np.array_equal(frame.load_depth(), np.load(root / "ground_truth" / "depth" / split / f"{stem}.npy"))
        assert frame.load_dynamic_mask().dtype == bool
    if which == "room":
        assert [f.split for f in scene.frames] == ["train"] * 4 + ["test"] + ["train"] * 5   # every 8th from 4
        assert sorted(p.name for p in (root / "frames").iterdir()) == [f"{i:05d}.png" for i in range(10)]
        assert (root / "frames" / "00004.png").read_bytes() == (root / "test" / "r_004.png").read_bytes()
        assert scene.alpha(scene.frames[0]) is None                                # opaque RGB
    else:
        assert {f.split for f in scene.frames} == {"train", "val", "test"}
        train_times = sorted(f.time for f in scene.train_frames)
        assert train_times == pytest.approx([0, 1 / 3, 2 / 3, 1])
        assert not {f.time for f in scene.test_frames} & set(train_times)       # new times ...
        alpha = scene.alpha(scene.frames[0])
        assert alpha is not None and alpha.min() == 0 and alpha.max() == 1        # ... and a transparent background
        # Alpha is coverage: a pixel whose centre ray hits is (partly) covered; one whose centre misses is not
        # fully covered (the centre ray is one of the 3 x 3 colour rays).
        depth = scene.frames[0].load_depth()
        assert (alpha[depth > 0] > 0).all() and (alpha[depth == 0] < 1).all()


def test_resized_frames_get_resized_ground_truth(room):
    scene = load_scene(SceneConfig(source=str(room), max_size=48))
    frame = scene.frames[3]
    full = np.load(room / "ground_truth" / "depth" / frame.split / f"{frame.source_path.stem}.npy")
    depth, mask = frame.load_depth(), frame.load_dynamic_mask()
    assert depth.shape == mask.shape == (frame.height, frame.width) == (27, 48)
    assert np.isin(depth, full).all()                                   # nearest samples, no blended depths
    # The rescaled camera keeps the field of view: f = (W / 2) / tan(fov / 2) = cx / tan(fov / 2).
    assert frame.camera.K[0, 0] == pytest.approx(frame.camera.K[0, 2] / np.tan(np.radians(ROOM.fov_deg) / 2))


@pytest.mark.parametrize("which", ["room", "obj"])
def test_depth_files_reproject_into_other_frames(which, request):
    """Unproject a frame's depth file with the loader's camera, project into every other frame and re-render that
    frame at those exact positions: static points land on the surface it sees (or behind an occluder)."""
    root = request.getfixturevalue(which)
    generated = room_scene(7, ROOM) if which == "room" else object_scene(7, OBJECT)
    scene = load_scene(SceneConfig(source=str(root)))
    truth = ground_truth_cameras(root)
    order = [truth[r.split + "/" + r.stem + ".png"] for r in generated.records]
    a = 2 if which == "room" else 0
    frame_a = next(f for f in scene.frames if str(f.source_path.relative_to(root)) == order[a]["file_path"])
    depth = frame_a.load_depth().astype(np.float64)
    H, W = depth.shape
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    K, w2c = frame_a.camera.K, frame_a.camera.world_to_camera
    camera = np.stack([(jj - K[0, 2]) / K[0, 0] * depth, (ii - K[1, 2]) / K[1, 1] * depth, depth], -1)
    world = (camera - w2c[:3, 3]) @ w2c[:3, :3]
    static = (depth > 0) & ~frame_a.load_dynamic_mask()
    agreeing, seen = 0, 0
    for b in range(len(order)):
        if b == a:
            continue
        K_b, w2c_b = np.asarray(order[b]["K"]), np.asarray(order[b]["world_to_camera"])
        cam_b = world[static] @ w2c_b[:3, :3].T + w2c_b[:3, 3]
        uv = cam_b[:, :2] / cam_b[:, 2:] * [K_b[0, 0], K_b[1, 1]] + K_b[:2, 2]
        keep = (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H) & (cam_b[:, 2] > 0)
        with single_thread():
            out = render_scene(generated, slice(b, b + 1), pixels=torch.from_numpy(uv[keep]).float()[None, None])
        rendered, z = out["depth"][0].numpy().astype(np.float64), cam_b[keep, 2]
        relative = (rendered - z) / z
        agree = np.abs(relative) < 1e-4
        farther = (relative > 1e-4) & ~out["dynamic"][0].numpy()
        assert farther.mean() < 0.002, f"frame {b}: static points behind the surface frame {b} sees"
        if agree.any():
            assert np.median(np.abs(relative[agree])) < 1e-6
        agreeing += agree.sum()
        seen += keep.sum()
    assert agreeing / seen > 0.6


@pytest.mark.parametrize("which", ["room", "obj"])
def test_dynamic_masks_are_the_pixels_that_moving_objects_cover(which, request):
    root = request.getfixturevalue(which)
    generated = room_scene(7, ROOM) if which == "room" else object_scene(7, OBJECT)
    static_spec = generated.spec.select(~generated.spec.dynamic())
    with single_thread():
        without = render_scene(generated, spec=static_spec)["depth"].numpy()
    for i, record in enumerate(generated.records):
        gt = root / "ground_truth"
        depth = np.load(gt / "depth" / record.split / f"{record.stem}.npy")
        mask = read_image(gt / "dynamic_mask" / record.split / f"{record.stem}.png")[..., 0] > 0.5
        assert np.array_equal(mask, depth != without[i]), record
    assert mask.any() and not mask.all()


def test_surface_points_lie_on_the_depth_maps(room):
    points = np.load(room / "ground_truth" / "points.npz")
    cameras = json.loads((room / "ground_truth" / "cameras.json").read_text())["frames"]
    assert set(points.files) == {"xyz", "time", "frame", "pixel", "rgb", "is_dynamic", "slot"}
    assert len(points["xyz"]) > 1000 and points["is_dynamic"].any() and not points["is_dynamic"].all()
    for i, camera in enumerate(cameras):
        pick = points["frame"] == i
        K, w2c = np.asarray(camera["K"]), np.asarray(camera["world_to_camera"])
        cam = points["xyz"][pick].astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
        uv = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
        assert np.abs(uv - (points["pixel"][pick] + 0.5)).max() < 1e-3
        col, row = points["pixel"][pick].T
        depth = np.load(room / "ground_truth" / "depth" / camera["split"] / f"{camera['stem']}.npy")
        assert np.allclose(cam[:, 2], depth[row, col], rtol=1e-5)
        assert np.all(points["time"][pick] == np.float32(camera["time"]))
        image = np.round(read_image(room / camera["file_path"]) * 255).astype(np.uint8)
        assert np.array_equal(points["rgb"][pick], image[row, col])


def test_same_seed_same_bytes_other_seed_other_scene(tmp_path, room):
    again = make_room_scene(tmp_path / "again", 7, ROOM)
    assert files(again) == files(room)
    other = make_room_scene(tmp_path / "other", 8, ROOM)
    assert files(other).keys() == files(room).keys()
    assert (other / "frames" / "00000.png").read_bytes() != (room / "frames" / "00000.png").read_bytes()
    assert (other / "transforms_train.json").read_text() != (room / "transforms_train.json").read_text()


def test_make_scene_command(tmp_path, capsys):
    out = tmp_path / "object"
    assert main(["make-scene", "object", "--out", str(out), "--frames", "3", "--res", "24", "--seed", "2"]) == 0
    scene = load_scene(SceneConfig(source=str(out)))
    assert (scene.frames[0].width, len(scene.train_frames), len(scene.test_frames)) == (24, 3, 2)
    assert "seed 2" in (out / "README.md").read_text()
    assert main(["make-scene", "room", "--out", str(out)]) == 2                 # never overwrites
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["make-scene", "room", "--out", str(tmp_path / "r"), "--frames", "1"]) == 2
    assert not (tmp_path / "r").exists()
    # --test-views: the held-out views of an object scene (issue #6's protocol: 50 training frames, 20 test views)
    assert main(["make-scene", "object", "--out", str(tmp_path / "t"), "--frames", "3", "--res", "16",
                 "--test-views", "4"]) == 0
    assert len(load_scene(SceneConfig(source=str(tmp_path / "t"))).test_frames) == 4
    capsys.readouterr()
    for bad in (["room", "--test-views", "3"], ["object", "--test-views", "0"], ["object", "--test-views", "5000"],
                ["object", "--res", "100000000"], ["room", "--frames", "100000000"], ["room", "--res", "7"],
                ["room", "--res", "19"], ["object", "--res", "10"],     # frames the pipeline would refuse to load
                ["room", "--frames", "2000", "--res", "4096"], ["room", "--pan-scale", "nan"],
                ["room", "--pan-scale", "-1"], ["object", "--pan-scale", "2"]):
        assert main(["make-scene", bad[0], "--out", str(tmp_path / "bad"), *bad[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and bad[1] in err[0]                # one line, before anything is allocated
        assert ("must lie in" in err[0] or "a room holds out" in err[0] or "G pixels of images" in err[0]
                or "for room scenes" in err[0])
    assert not (tmp_path / "bad").exists()
    assert main(["make-scene", "room", "--out", str(tmp_path / "r20"), "--frames", "2", "--res", "20"]) == 0
    assert {(f.width, f.height) for f in load_scene(SceneConfig(source=str(tmp_path / "r20"))).frames} == {(20, 12)}


def test_pan_scale_widens_the_room_camera_path(tmp_path):
    from pipeline.cameras import rotation_angle_deg

    turns = {}
    for pan in (None, "1", "4"):
        out = tmp_path / f"pan{pan}"
        assert main(["make-scene", "room", "--out", str(out), "--frames", "6", "--res", "32", "--seed", "3",
                     *(["--pan-scale", pan] if pan else [])]) == 0
        frames = sorted(load_scene(SceneConfig(source=str(out))).frames, key=lambda f: f.index)
        first = frames[0].camera.world_to_camera[:3, :3]
        turns[pan] = max(rotation_angle_deg(f.camera.world_to_camera[:3, :3] @ first.T) for f in frames)
    assert turns[None] == turns["1"]                                  # the default is pan 1, bit for bit
    assert turns["4"] > 2 * turns["1"]


def test_an_interrupted_make_scene_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    import pipeline.synthetic.cli as synthetic_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_cli, "make_room_scene", interrupted)
    assert main(["-v", "make-scene", "room", "--out", str(tmp_path / "r")]) == 130      # after a global option too
    assert capsys.readouterr().err.strip() == ("page4dgs: interrupted; no scene was written (its folder appears "
                                               "only when complete)")


def test_demo_is_generated_once_deterministically_and_loads_as_demo(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_OPTIONS", replace(demo.DEMO_OPTIONS, frames=6, width=48, textures=4))
    copies = []
    for name in ("a", "b"):
        monkeypatch.setenv("PAGE4DGS_CACHE", str(tmp_path / name))
        path = demo.demo_scene_path()
        assert path.parent == tmp_path / name / "scenes" and path.name.startswith("demo-v")
        stamp = (path / "README.md").stat().st_mtime_ns
        assert demo.demo_scene_path() == path and (path / "README.md").stat().st_mtime_ns == stamp
        copies.append(files(path))
    assert copies[0] == copies[1]
    scene = load_scene(SceneConfig(source="demo"))
    assert scene.name == "demo" and len(scene.frames) == 6 and scene.has_depth
    assert [p.name for p in (tmp_path / "b" / "scenes").iterdir()] == [path.name]  # no staging left behind


def test_a_damaged_demo_cache_is_generated_again(tmp_path, monkeypatch, caplog):
    # A deleted or truncated file of the cached demo used to be reported as a damaged input on every later run.
    monkeypatch.setattr(demo, "DEMO_OPTIONS", replace(demo.DEMO_OPTIONS, frames=6, width=48, textures=4))
    monkeypatch.setenv("PAGE4DGS_CACHE", str(tmp_path))
    path = demo.demo_scene_path()
    original = files(path)
    image = sorted((path / "train").glob("*.png"))[0]
    depth = sorted((path / "ground_truth").rglob("*.npy"))[0]
    for damage in (image.unlink, lambda: depth.write_bytes(depth.read_bytes()[:40]),
                   lambda: (path / demo.FILE_LIST).write_text("{")):
        damage()
        assert not demo._complete(path)
        with caplog.at_level("WARNING"):
            assert demo.demo_scene_path() == path
        assert "incomplete or damaged: generating it again" in caplog.text
        caplog.clear()
        assert files(path) == original and demo._complete(path)
    (path / demo.FILE_LIST).unlink()      # a cache made before the file list existed: regenerated, not "damaged"
    with caplog.at_level("INFO"):
        assert demo.demo_scene_path() == path
    assert "has no file list to check it by" in caplog.text and "incomplete or damaged" not in caplog.text
    assert files(path) == original and demo._complete(path)
