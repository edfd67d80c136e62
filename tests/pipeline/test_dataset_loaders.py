"""Dataset loaders (Nerfies/HyperNeRF, DyCheck, N3DV, nerfstudio, COLMAP) on tiny scenes written here.

Every camera test projects a known world point with the loader's K and world_to_camera and compares with the pixel
computed directly from the format's own definition (never through pipeline.cameras' conversions).
"""

import json

import numpy as np
import pytest

from pipeline.cameras import look_at_w2c
from pipeline.errors import UserError
from pipeline.scene import detect_format, load_scene
from pipeline.scene.config import SceneConfig

POINT = np.array([0.3, -0.2, 0.4])  # a world point every camera below sees


def write_png(path, array):
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, array)


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def ring_camera(k, n, radius=4.0, height=1.0):
    """(eye (3,), OpenCV rotation (3, 3) whose rows are the camera's right/down/forward axes) looking at the origin."""
    angle = 2 * np.pi * k / n
    eye = np.array([radius * np.cos(angle), radius * np.sin(angle), height])
    return eye, look_at_w2c(eye, np.zeros(3))[:3, :3]


def load(path, **options):
    return load_scene(SceneConfig(source=str(path), **options))


# ---------------------------------------------------------------------------------------------------------------
# Nerfies / HyperNeRF

NERFIES_CAMERA = dict(focal_length=50.0, principal_point=[30.5, 25.0], pixel_aspect_ratio=1.1, skew=0.0,
                      image_size=[64, 48])
SCENE_JSON = dict(center=[0.1, -0.3, 0.2], scale=0.25, near=0.1, far=2.0)


def nerfies_pixel(camera: dict, X: np.ndarray) -> tuple[np.ndarray, float]:
    """Nerfies' projection at 1x: x_c = orientation (X - position); u = f x/z + skew y/z + cx; v = f a y/z + cy."""
    x, y, z = np.asarray(camera["orientation"]) @ (X - np.asarray(camera["position"]))
    f, a, s = camera["focal_length"], camera["pixel_aspect_ratio"], camera["skew"]
    cx, cy = camera["principal_point"]
    return np.array([f * x / z + s * y / z + cx, f * a * y / z + cy]), z


def make_nerfies(root, items, val_ids=(), train_ids=None, factors=(1, 2, 4), scene_json=SCENE_JSON, rgba=False,
                 distortion_of=()):
    """items: [(id, warp_id, camera_id)]; cameras on a ring looking at the origin. Returns {id: camera dict}."""
    rng = np.random.default_rng(0)
    cameras = {}
    for k, (item, warp, cam) in enumerate(items):
        eye, rotation = ring_camera(k, len(items))
        camera = dict(NERFIES_CAMERA, orientation=rotation.tolist(), position=eye.tolist(),
                      radial_distortion=[0.01 if item in distortion_of else 0.0, 0.0, 0.0], tangential=[0.0, 0.0])
        cameras[item] = camera
        write_json(root / "camera" / f"{item}.json", camera)
        for f in factors:
            write_png(root / "rgb" / f"{f}x" / f"{item}.png",
                      rng.integers(0, 255, (48 // f, 64 // f, 4 if rgba else 3), dtype=np.uint8))
    ids = [i for i, _, _ in items]
    write_json(root / "dataset.json", dict(count=len(ids), num_exemplars=len(ids), ids=ids,
                                           train_ids=list(train_ids if train_ids is not None else ids),
                                           val_ids=list(val_ids)))
    write_json(root / "metadata.json", {i: dict(warp_id=w, appearance_id=w, camera_id=c) for i, w, c in items})
    if scene_json is not None:
        write_json(root / "scene.json", scene_json)
    return cameras


def check_nerfies_camera(frame, camera: dict, factor: float, scene_json=SCENE_JSON):
    """The loader's camera, fed the normalised point, must land on Nerfies' own pixel / factor, in front."""
    center, scale = np.asarray(scene_json["center"]), scene_json["scale"]
    expected, z = nerfies_pixel(camera, POINT)
    uv, depth = frame.camera.project(((POINT - center) * scale)[None])
    assert z > 0 and depth[0] > 0
    np.testing.assert_allclose(uv[0], expected / factor, atol=1e-9)
    np.testing.assert_allclose(depth[0], z * scale, rtol=1e-12)  # z-depth in normalised world units


def test_nerfies_interp_split_times_cameras_and_resolutions(tmp_path):
    items = [(f"{t:06d}", t, 0) for t in range(10)]
    cameras = make_nerfies(tmp_path / "interp", items, distortion_of={"000004"})
    scene = load(tmp_path / "interp")
    assert scene.format == "nerfies"
    # 4DGaussians interp protocol: indices 0, 4, 8 train; 2, 6 test (one fewer); the rest unused.
    assert [f.name for f in scene.train_frames] == ["000000", "000004", "000008"]
    assert [f.name for f in scene.test_frames] == ["000002", "000006"]
    assert [f.time for f in scene.frames] == pytest.approx([0, 2 / 9, 4 / 9, 6 / 9, 8 / 9])
    assert [f.time_index for f in scene.frames] == [0, 2, 4, 6, 8]
    assert (scene.frames[0].width, scene.frames[0].height) == (32, 24)  # 'auto' = rgb/2x
    for f in scene.frames:
        check_nerfies_camera(f, cameras[f.name], factor=2)
        assert f.camera.K[1, 1] == pytest.approx(50 * 1.1 / 2)  # fy = f * pixel_aspect_ratio
    assert any("distortion" in note for note in scene.notes)
    assert scene.rgb(scene.frames[0]).shape == (24, 32, 3)
    for resolution, factor in (("1x", 1), ("4x", 4)):
        other = load(tmp_path / "interp", resolution=resolution)
        assert other.frames[0].width == 64 // factor
        for f in other.frames:
            check_nerfies_camera(f, cameras[f.name], factor=factor)
    capped = load(tmp_path / "interp", resolution="1x", max_size=32)  # further resize: K follows the image
    assert (capped.frames[0].width, capped.frames[0].height) == (32, 24)
    for f in capped.frames:
        check_nerfies_camera(f, cameras[f.name], factor=2)
        assert capped.rgb(f).shape == (24, 32, 3)


def test_nerfies_vrig_split_uses_val_ids(tmp_path):
    items = [(f"left_{t}", t, 0) for t in range(4)] + [(f"right_{t}", t, 1) for t in range(4)]
    cameras = make_nerfies(tmp_path / "vrig", items, train_ids=[i for i, _, c in items if c == 0],
                           val_ids=[i for i, _, c in items if c == 1], scene_json=None)
    scene = load(tmp_path / "vrig")
    assert [f.name for f in scene.train_frames] == [f"left_{t}" for t in range(4)]
    assert [f.name for f in scene.test_frames] == [f"right_{t}" for t in range(4)]
    # Sorted by time, then camera; time = warp_id / max(warp_id).
    assert [f.name for f in scene.frames][:4] == ["left_0", "right_0", "left_1", "right_1"]
    assert scene.frame("right_3").time == 1.0 and scene.frame("left_1").time == pytest.approx(1 / 3)
    assert scene.frame("right_2").camera_id == 1
    no_normalisation = dict(center=[0, 0, 0], scale=1.0)
    for f in scene.frames:
        check_nerfies_camera(f, cameras[f.name], factor=2, scene_json=no_normalisation)


# ---------------------------------------------------------------------------------------------------------------
# DyCheck iPhone

def make_dycheck(root, n_train=5, val_times=(0, 2, 4), with_splits=True):
    train = [(f"0_{t:05d}", t, 0) for t in range(n_train)]
    val = [(f"1_{t:05d}", t, 1) for t in val_times]
    cameras = make_nerfies(root, train + val, train_ids=[i for i, _, _ in train], val_ids=[i for i, _, _ in val],
                           factors=(1, 2), rgba=True)
    for name, _, _ in train:  # Lidar z-depth of training frames at 2x, in the file's world units
        depth = np.full((24, 32), 2.5, np.float32)
        depth[:, :4] = 0.0  # invalid
        (root / "depth" / "2x").mkdir(parents=True, exist_ok=True)
        np.save(root / "depth" / "2x" / f"{name}.npy", depth[..., None])  # DyCheck stores (H, W, 1)
    for name, _, _ in val:
        mask = np.zeros((24, 32), np.uint8)
        mask[:, :16] = 255
        write_png(root / "covisible" / "2x" / "val" / f"{name}.png", mask)
    if with_splits:
        for split, rows in (("train", train), ("val", val)):
            write_json(root / "splits" / f"{split}.json", dict(frame_names=[r[0] for r in rows],
                                                               time_ids=[r[1] for r in rows],
                                                               camera_ids=[r[2] for r in rows]))
    write_json(root / "extra.json", dict(factor=2, fps=30.0, bbox=[[-1, -1, -1], [1, 1, 1]], lookat=[0, 0, 0],
                                         up=[0, 0, 1]))
    return cameras


def test_dycheck_splits_depth_covisibility_and_cameras(tmp_path):
    cameras = make_dycheck(tmp_path / "iphone")
    assert detect_format(tmp_path / "iphone") == "dycheck"  # before nerfies, which would also match
    scene = load(tmp_path / "iphone")
    assert scene.format == "dycheck" and scene.fps == 30.0
    assert [f.name for f in scene.train_frames] == [f"0_{t:05d}" for t in range(5)]
    assert [f.name for f in scene.test_frames] == ["1_00000", "1_00002", "1_00004"]
    assert scene.frame("1_00002").time == 0.5 and scene.frame("0_00004").time == 1.0
    assert (scene.frames[0].width, scene.frames[0].height) == (32, 24)  # extra.json factor 2
    scale, center = SCENE_JSON["scale"], np.asarray(SCENE_JSON["center"])
    for f in scene.frames:
        check_nerfies_camera(f, cameras[f.name], factor=2)
        if f.split == "train":
            depth = f.load_depth()
            assert depth.shape == (24, 32) and depth.dtype == np.float32
            assert np.all(depth[:, :4] == 0) and np.allclose(depth[:, 4:], 2.5 * scale)
            # A pixel lifted with the loader's camera and depth is, in the file's world, at z-depth 2.5 on the
            # ray of that pixel under Nerfies' own projection.
            u, v = 20.5, 10.5
            ray = np.linalg.inv(f.camera.K) @ np.array([u, v, 1.0])
            point_cam = ray * depth[10, 20]
            point_world = f.camera.camera_to_world[:3, :3] @ point_cam + f.camera.camera_to_world[:3, 3]
            expected_uv, z = nerfies_pixel(cameras[f.name], point_world / scale + center)
            np.testing.assert_allclose(expected_uv / 2, [u, v], atol=1e-9)
            assert z == pytest.approx(2.5)
            assert f.load_covisible is None
        else:
            assert f.load_depth is None
            mask = f.load_covisible()
            assert mask.shape == (24, 32) and mask[:, :16].all() and not mask[:, 16:].any()
    assert scene.rgb(scene.frames[0]).shape == (24, 32, 3) and scene.alpha(scene.frames[0]) is not None
    full = load(tmp_path / "iphone", resolution="1x")
    assert full.frames[0].width == 64
    for f in full.frames:
        check_nerfies_camera(f, cameras[f.name], factor=1)
        if f.split == "test":
            assert f.load_covisible().shape == (48, 64)  # 2x masks resized to the frame


def test_dycheck_without_split_files_uses_camera_zero_for_training(tmp_path):
    make_dycheck(tmp_path / "iphone", with_splits=False)
    scene = load(tmp_path / "iphone")
    assert scene.format == "dycheck"
    assert {f.camera_id for f in scene.train_frames} == {0} and {f.camera_id for f in scene.test_frames} == {1}
    assert len(scene.train_frames) == 5 and len(scene.test_frames) == 3


# ---------------------------------------------------------------------------------------------------------------
# N3DV

N3DV_FOCAL = 40.0


def make_n3dv(root, n_cameras=3, n_frames=5, size=(64, 48), rows=None, columns=17):
    """Videos whose frame t of camera c is flat grey 40 t + 10 c; LLFF poses of ring cameras."""
    import imageio.v3 as iio

    root.mkdir(parents=True, exist_ok=True)
    w, h = size
    llff_rows = []
    for c in range(n_cameras):
        video = np.stack([np.full((h, w, 3), 40 * t + 10 * c, np.uint8) for t in range(n_frames)])
        iio.imwrite(root / f"cam{c:02d}.mp4", video, plugin="FFMPEG", fps=30)
        eye, rotation = ring_camera(c, 8)
        right, down, forward = rotation  # OpenCV camera axes in world coordinates
        pose = np.stack([down, right, -forward, eye, [h, w, N3DV_FOCAL]], axis=1)  # (3, 5) LLFF [down right back]
        llff_rows.append(np.concatenate([pose.ravel(), [0.1, 10.0]]))
    array = np.array(llff_rows[: rows or n_cameras])[:, :columns]
    np.save(root / "poses_bounds.npy", array)
    return array


def test_n3dv_frames_too_small_name_the_scene_folder_not_the_decoded_frames(tmp_path):
    """N3DV frames are decoded from the videos into our cache: the error names the user's folder."""
    make_n3dv(tmp_path / "n3dv", n_cameras=2, n_frames=2, size=(32, 16))
    with pytest.raises(UserError) as err:
        load(tmp_path / "n3dv")                                   # 'auto' resolution halves them: 16x8 pixels
    assert "is 16x8 pixels: each side needs at least 11" in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "n3dv") + ":"), str(err.value)


def llff_pixel(row: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, float]:
    """LLFF's definition: columns [down, right, back] of the camera in the world, centre t, principal point at the
    image centre: x = right.(X - t), y = down.(X - t), z = -back.(X - t); u = f x / z + W/2, v = f y / z + H/2."""
    pose = row[:15].reshape(3, 5)
    down, right, back, t = pose[:, 0], pose[:, 1], pose[:, 2], pose[:, 3]
    H, W, f = pose[:, 4]
    d = X - t
    x, y, z = right @ d, down @ d, -(back @ d)
    return np.array([f * x / z + W / 2, f * y / z + H / 2]), z


def test_n3dv_cameras_split_times_and_frames(tmp_path):
    rows = make_n3dv(tmp_path / "n3dv")
    scene = load(tmp_path / "n3dv")
    assert scene.format == "n3dv" and len(scene.frames) == 15
    assert {f.name for f in scene.test_frames} == {f"cam00_{t:05d}" for t in range(5)}
    assert {f.camera_id for f in scene.train_frames} == {1, 2}
    assert scene.frames[0].name == "cam00_00000" and scene.frames[1].name == "cam01_00000"  # time, then camera
    f = scene.frame("cam02_00003")
    assert f.time == pytest.approx(0.75) and f.time_index == 3 and (f.width, f.height) == (32, 24)  # 'auto' = 2x
    assert np.isclose(scene.rgb(f).mean(), (40 * 3 + 20) / 255, atol=0.03)
    for frame in scene.frames:
        expected, z = llff_pixel(rows[frame.camera_id], POINT)
        uv, depth = frame.camera.project(POINT[None])
        assert z > 0 and depth[0] == pytest.approx(z)
        np.testing.assert_allclose(uv[0], expected * 32 / 64, atol=1e-9)  # focal and centre scaled by W/W_orig
        assert frame.camera.K[0, 0] == pytest.approx(N3DV_FOCAL / 2)
    sub = load(tmp_path / "n3dv", resolution="1x", stride=2, max_frames=2)
    assert sorted(f.name for f in sub.frames if f.camera_id == 1) == ["cam01_00000", "cam01_00002"]
    assert sorted({f.time for f in sub.frames}) == [0.0, 1.0] and sub.frames[0].width == 64
    for frame in sub.frames:
        np.testing.assert_allclose(frame.camera.project(POINT[None])[0][0],
                                   llff_pixel(rows[frame.camera_id], POINT)[0], atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# nerfstudio

def gl_camera_to_world(eye, rotation):
    """OpenGL camera-to-world of an OpenCV rotation: columns right, up = -down, back = -forward, eye."""
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = rotation[0], -rotation[1], -rotation[2], eye
    return c2w


def nerfstudio_pixel(c2w_gl, fx, fy, cx, cy, X):
    """nerfstudio's convention: camera looks down -z with y up, so u = fx x / -z + cx, v = fy (-y) / -z + cy."""
    x, y, z = np.linalg.inv(c2w_gl)[:3] @ np.append(X, 1.0)
    return np.array([fx * x / -z + cx, fy * -y / -z + cy]), -z


def make_nerfstudio(root, n=6, with_time=True, split_lists=None, extra=None):
    rng = np.random.default_rng(2)
    frames = []
    for k in range(n):
        eye, rotation = ring_camera(k, n)
        name = f"images/frame_{k + 1}.png"  # frame_10 after frame_9: natural order
        write_png(root / name, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        entry = dict(file_path=name, transform_matrix=gl_camera_to_world(eye, rotation).tolist())
        if with_time:
            entry["time"] = 2.0 * k  # normalised to [0, 1]
        if k == 1:
            entry.update(fl_x=45.0, fl_y=47.0)  # per-frame intrinsics override the shared ones
        if k == 2:
            entry["mask_path"] = "masks/frame_3.png"
        frames.append(entry)
    meta = dict(camera_model="OPENCV", fl_x=40.0, fl_y=42.0, cx=31.0, cy=23.0, w=64, h=48, k1=0.0, p1=0.0,
                frames=frames[::-1], **(split_lists or {}))  # reversed: the loader sorts
    meta.update(extra or {})
    write_json(root / "transforms.json", meta)
    return {f["file_path"]: f for f in frames}


def test_nerfstudio_cameras_times_and_holdout(tmp_path):
    entries = make_nerfstudio(tmp_path / "ns", n=10)
    scene = load(tmp_path / "ns", test_every=4)
    assert scene.format == "nerfstudio"
    assert [f.name for f in scene.frames][:3] == ["frame_1", "frame_2", "frame_3"]
    assert [f.name for f in scene.test_frames] == ["frame_3", "frame_7"]  # indices 2, 6 (holdout_split)
    assert [f.time for f in scene.frames] == pytest.approx(np.arange(10) / 9)
    for f in scene.frames:
        entry = entries[f"images/{f.name}.png"]
        fx, fy = entry.get("fl_x", 40.0), entry.get("fl_y", 42.0)
        expected, z = nerfstudio_pixel(np.array(entry["transform_matrix"]), fx, fy, 31.0, 23.0, POINT)
        uv, depth = f.camera.project(POINT[None])
        assert z > 0 and depth[0] == pytest.approx(z)
        np.testing.assert_allclose(uv[0], expected, atol=1e-9)
    assert any("mask_path" in note for note in scene.notes)
    half = load(tmp_path / "ns", resolution="2x")
    for f in half.frames:
        entry = entries[f"images/{f.name}.png"]
        expected, _ = nerfstudio_pixel(np.array(entry["transform_matrix"]), entry.get("fl_x", 40.0),
                                       entry.get("fl_y", 42.0), 31.0, 23.0, POINT)
        np.testing.assert_allclose(f.camera.project(POINT[None])[0][0], expected / 2, atol=1e-9)
        assert (f.width, f.height) == (32, 24)


def test_nerfstudio_split_lists_and_frame_order_time(tmp_path):
    lists = dict(train_filenames=[f"images/frame_{k}.png" for k in (1, 2, 4, 5)],
                 test_filenames=["./images/frame_3.png"])
    make_nerfstudio(tmp_path / "ns", n=6, with_time=False, split_lists=lists,
                    extra=dict(k1=0.05, applied_transform=np.eye(4)[:3].tolist()))
    scene = load(tmp_path / "ns")
    assert [f.name for f in scene.train_frames] == ["frame_1", "frame_2", "frame_4", "frame_5"]
    assert [f.name for f in scene.test_frames] == ["frame_3"]
    assert scene.frame("frame_3").time == pytest.approx(2 / 5)  # order among all 6 frames; frame_6 unused
    assert any("distortion" in note for note in scene.notes) and any("unused" in note for note in scene.notes)


# ---------------------------------------------------------------------------------------------------------------
# COLMAP

def rotation_to_quaternion_wxyz(rotation):
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return [w, x, y, z]


def make_colmap(root, n=5, image_size=(64, 48), cameras_txt=None):
    rng = np.random.default_rng(3)
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text(cameras_txt or "# Camera list\n"
                                        "1 PINHOLE 64 48 40 42 31 23\n"
                                        "2 SIMPLE_PINHOLE 64 48 45 32 24\n"
                                        "3 OPENCV 64 48 40 40 32 24 0.1 0 0 0\n")
    lines, truth = ["# Image list with two lines of data per image:"], {}
    for k in range(n):
        eye, rotation = ring_camera(k, n)
        t = -rotation @ eye
        camera_id = 1 + k % 3
        name = f"frame_{k * 5}.png"  # frame_5 sorts before frame_10
        numbers = [*rotation_to_quaternion_wxyz(rotation), *t]
        lines.append(f"{k + 7} {' '.join(f'{v:.17g}' for v in numbers)} {camera_id} {name}")
        lines.append("" if k % 2 else "12.5 3.5 -1 20.0 21.0 4")
        truth[name[:-4]] = (rotation, t, camera_id)
        write_png(root / "images" / name, rng.integers(0, 255, (image_size[1], image_size[0], 3), dtype=np.uint8))
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    (sparse / "points3D.txt").write_text("# 3D point list\n1 0.3 -0.2 0.4 200 10 10 0.5 7 0\n")
    return truth


COLMAP_INTRINSICS = {1: (40, 42, 31, 23), 2: (45, 45, 32, 24), 3: (40, 40, 32, 24)}


def test_colmap_text_with_a_byte_order_mark(tmp_path):
    make_colmap(tmp_path / "c")
    cameras = tmp_path / "c" / "sparse" / "0" / "cameras.txt"
    reference = [f.camera.K for f in load(tmp_path / "c").frames]
    cameras.write_bytes(b"\xef\xbb\xbf" + cameras.read_bytes())     # as Windows editors save it
    np.testing.assert_array_equal([f.camera.K for f in load(tmp_path / "c").frames], reference)


def test_colmap_cameras_order_and_split(tmp_path):
    truth = make_colmap(tmp_path / "colmap")
    assert detect_format(tmp_path / "colmap") == "colmap"
    scene = load(tmp_path / "colmap", test_every=4)
    assert scene.format == "colmap"
    assert [f.name for f in scene.frames] == ["frame_0", "frame_5", "frame_10", "frame_15", "frame_20"]
    assert [f.name for f in scene.test_frames] == ["frame_10"]
    assert [f.time for f in scene.frames] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    for f in scene.frames:
        rotation, t, camera_id = truth[f.name]
        fx, fy, cx, cy = COLMAP_INTRINSICS[camera_id]
        x, y, z = rotation @ POINT + t
        uv, depth = f.camera.project(POINT[None])
        assert z > 0 and depth[0] == pytest.approx(z)
        np.testing.assert_allclose(uv[0], [fx * x / z + cx, fy * y / z + cy], atol=1e-9)
    assert any("distortion" in note for note in scene.notes)


def test_colmap_images_smaller_than_their_camera_scale_k(tmp_path):
    truth = make_colmap(tmp_path / "colmap", image_size=(32, 24))
    scene = load(tmp_path / "colmap", test_every=0)
    assert not scene.test_frames and scene.frames[0].width == 32
    for f in scene.frames:
        rotation, t, camera_id = truth[f.name]
        fx, fy, cx, cy = COLMAP_INTRINSICS[camera_id]
        x, y, z = rotation @ POINT + t
        np.testing.assert_allclose(f.camera.project(POINT[None])[0][0],
                                   [(fx * x / z + cx) / 2, (fy * y / z + cy) / 2], atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one UserError naming the file

def _nerfies(path):
    make_nerfies(path, [(f"{t:06d}", t, 0) for t in range(6)], factors=(2,))


def _dycheck(path):
    make_dycheck(path)


def _n3dv(path, **kwargs):
    make_n3dv(path, n_cameras=2, n_frames=2, **kwargs)


def _npz_named_npy(path):
    """Replace poses_bounds.npy by a .npz archive of the same array under the .npy name."""
    np.savez(path / "poses_bounds.npz", np.zeros((2, 17)))
    (path / "poses_bounds.npz").replace(path / "poses_bounds.npy")


BAD_INPUTS = {
    "nerfies_malformed_dataset": (_nerfies, lambda p: (p / "dataset.json").write_text('{"ids": ['),
                                  "dataset.json: malformed JSON"),
    "nerfies_incomplete_dataset": (_nerfies, lambda p: write_json(p / "dataset.json", {"count": 3}),
                                   "dataset.json: missing key 'ids'"),
    "nerfies_missing_camera": (_nerfies, lambda p: (p / "camera" / "000004.json").unlink(),
                               "000004.json: camera file not found"),
    "nerfies_bad_orientation": (_nerfies, lambda p: write_json(
        p / "camera" / "000000.json", dict(NERFIES_CAMERA, orientation=np.eye(3)[::-1].tolist(), position=[0, 0, 0])),
        "000000.json: 'orientation' is not a rotation"),
    "nerfies_missing_image": (_nerfies, lambda p: (p / "rgb" / "2x" / "000002.png").unlink(),
                              "000002.png: image of item '000002' not found"),
    "nerfies_missing_metadata": (_nerfies, lambda p: write_json(p / "metadata.json", {}),
                                 "metadata.json: no entry for item"),
    "nerfies_missing_resolution": (_nerfies, lambda p: None, r"rgb: no '4x' image folder.*available: 2x"),
    "dycheck_bad_split": (_dycheck, lambda p: write_json(p / "splits" / "val.json", dict(
        frame_names=["1_00000"], time_ids=[0, 1], camera_ids=[1])), "val.json: 'time_ids' has 2 entries"),
    "dycheck_missing_image": (_dycheck, lambda p: (p / "rgb" / "2x" / "1_00002.png").unlink(),
                              "1_00002.png: image of item"),
    "dycheck_bad_depth": (_dycheck, lambda p: np.save(p / "depth" / "2x" / "0_00001.npy", np.zeros((2, 3, 4))),
                          "0_00001.npy: depth map must be"),
    "dycheck_zero_fps": (_dycheck, lambda p: write_json(p / "extra.json", dict(factor=2, fps=0)),
                         "extra.json: 'fps' must be positive, got 0"),
    "dycheck_nan_fps": (_dycheck, lambda p: write_json(p / "extra.json", dict(factor=2, fps=float("nan"))),
                        "extra.json: 'fps' must be a finite number, got nan"),
    "dycheck_depth_size": (_dycheck, lambda p: np.save(p / "depth" / "2x" / "0_00001.npy", np.ones((7, 9))),
                           r"0_00001.npy: depth map is 9x7 but its frame is \d+x\d+ \(aspect ratios differ\)"),
    "n3dv_wrong_shape": (lambda p: _n3dv(p, columns=15), None, r"poses_bounds.npy: expected an \(N_cameras, 17\)"),
    "n3dv_wrong_rows": (lambda p: _n3dv(p, rows=1), None, "poses_bounds.npy: has 1 rows but the folder holds 2"),
    "n3dv_strings": (_n3dv, lambda p: np.save(p / "poses_bounds.npy", np.full((2, 17), "x")),
                     "poses_bounds.npy: LLFF camera array must hold real numbers, got an array of <U1"),
    "n3dv_npz": (_n3dv, _npz_named_npy, "poses_bounds.npy: unreadable LLFF camera array: the file is a .npz archive"),
    "n3dv_one_video": (_n3dv, lambda p: (p / "cam01.mp4").unlink(), "needs at least 2 cam"),
    "nerfstudio_malformed": (make_nerfstudio, lambda p: (p / "transforms.json").write_text("{frames: []}"),
                             "transforms.json: malformed JSON"),
    "nerfstudio_no_matrix": (make_nerfstudio, lambda p: write_json(p / "transforms.json", dict(
        fl_x=40, frames=[dict(file_path="images/frame_1.png")])), "transforms.json: missing key 'transform_matrix'"),
    "nerfstudio_singular_matrix": (make_nerfstudio, lambda p: write_json(p / "transforms.json", dict(
        fl_x=40, frames=[dict(file_path=f"images/frame_{i}.png", transform_matrix=np.eye(4)[:3].tolist() + [[0] * 4])
                         for i in (1, 2)])), "transforms.json: transform_matrix of .* is not a 4x4 rigid"),
    "nerfstudio_nan_matrix": (make_nerfstudio, lambda p: write_json(p / "transforms.json", dict(
        fl_x=40, frames=[dict(file_path=f"images/frame_{i}.png", transform_matrix=[[float("nan")] * 4] * 4)
                         for i in (1, 2)])),
        r"transforms.json: 'transform_matrix' of frames\[0\] \('images/frame_1.png'\) has 16 non-finite entries"),
    "nerfstudio_aspect": (make_nerfstudio, lambda p: write_json(p / "transforms.json", dict(
        json.loads((p / "transforms.json").read_text()), w=640, h=100)),
        r"transforms.json: the image of .* is 64x48 but 'w' and 'h' say 640x100 \(aspect ratios differ\)"),
    "nerfies_repeated_id": (_nerfies, lambda p: write_json(p / "dataset.json", dict(
        json.loads((p / "dataset.json").read_text()), ids=["000000", "000001", "000002", "000000"])),
        "dataset.json: 'ids' lists '000000' more than once"),
    "dycheck_val_without_train": (_dycheck, lambda p: (p / "splits" / "train.json").unlink(),
                                  "splits: splits/ has val.json but no train.json"),
    "nerfstudio_repeated_frame": (make_nerfstudio, lambda p: write_json(p / "transforms.json", dict(
        (meta := json.loads((p / "transforms.json").read_text())), frames=meta["frames"] + meta["frames"][:1])),
        r"frame_\d+.png: this image is listed more than once \(frames 'frame_\d+' and 'frame_\d+'\)"),
    "nerfstudio_missing_image": (make_nerfstudio, lambda p: (p / "images" / "frame_2.png").unlink(),
                                 "transforms.json: image 'images/frame_2.png' listed there does not exist"),
    "nerfstudio_fisheye": (make_nerfstudio, lambda p: write_json(p / "transforms.json", dict(
        json.loads((p / "transforms.json").read_text()), camera_model="OPENCV_FISHEYE")),
        "transforms.json: camera_model 'OPENCV_FISHEYE' is not supported"),
    "colmap_fisheye": (make_colmap, lambda p: (p / "sparse" / "0" / "cameras.txt").write_text(
        "1 OPENCV_FISHEYE 64 48 40 40 32 24 0 0 0 0\n"), "cameras.txt: line 1: camera model OPENCV_FISHEYE"),
    "colmap_zero_focal": (make_colmap, lambda p: (p / "sparse" / "0" / "cameras.txt").write_text(
        "1 PINHOLE 64 48 0 42 31 23\n2 PINHOLE 64 48 40 42 31 23\n"),
        "cameras.txt: line 1: focal length must be positive, got 0, 42"),
    "colmap_negative_focal": (make_colmap, lambda p: (p / "sparse" / "0" / "cameras.txt").write_text(
        "1 SIMPLE_RADIAL 64 48 -40 31 23 0\n"), "cameras.txt: line 1: focal length must be positive, got -40"),
    "colmap_repeated_camera": (make_colmap, lambda p: (p / "sparse" / "0" / "cameras.txt").write_text(
        "1 PINHOLE 64 48 40 42 31 23\n2 PINHOLE 64 48 40 42 31 23\n1 PINHOLE 64 48 50 42 31 23\n"),
        "cameras.txt: line 3: camera 1 is defined a second time"),
    "colmap_aspect": (make_colmap, lambda p: (p / "sparse" / "0" / "cameras.txt").write_text(
        "1 PINHOLE 64 16 40 42 31 8\n2 PINHOLE 64 16 40 42 31 8\n"),
        r"frame_\d+.png: image is 64x48 but its camera \d in cameras.txt is 64x16 \(aspect ratios differ\)"),
    "colmap_unknown_camera": (make_colmap, lambda p: (p / "sparse" / "0" / "cameras.txt").write_text(
        "1 PINHOLE 64 48 40 42 31 23\n"), "images.txt: image 'frame_5.png' uses camera 2"),
    "colmap_missing_image": (make_colmap, lambda p: (p / "images" / "frame_10.png").unlink(),
                             "frame_10.png: image 'frame_10.png' of images.txt not found"),
    "colmap_binary": (make_colmap, lambda p: [(p / "sparse" / "0" / f"{n}.txt").rename(p / "sparse" / "0" / f"{n}.bin")
                                              for n in ("cameras", "images", "points3D")],
                      "binary COLMAP models are not read"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_dataset_input_is_one_clear_error(tmp_path, case):
    build, damage, message = BAD_INPUTS[case]
    path = tmp_path / case
    build(path)
    if damage:
        damage(path)
    resolution = "4x" if case == "nerfies_missing_resolution" else "auto"
    with pytest.raises(UserError, match=message):
        scene = load(path, resolution=resolution)
        for f in scene.frames:  # lazily loaded data fails when read
            if f.load_depth:
                f.load_depth()


def test_dycheck_depth_maps_are_checked_when_the_scene_loads(tmp_path):
    """From their headers, before any stage runs (they are read only by the evaluation, after the others)."""
    make_dycheck(tmp_path / "d")
    depth = tmp_path / "d" / "depth" / "2x" / "0_00001.npy"
    depth.write_bytes(depth.read_bytes()[:-4])
    with pytest.raises(UserError, match=r"0_00001.npy: unreadable depth map: the file is truncated"):
        load(tmp_path / "d")


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "1_00002.png: not a readable image"),
    (lambda p: write_png(p, np.zeros((24, 24), np.uint8)), "1_00002.png: covisibility mask is 24x24 but its frame is "
                                                           r"32x24 \(aspect ratios differ\)")], ids=["empty", "square"])
def test_dycheck_covisibility_masks_are_checked_when_the_scene_loads(tmp_path, damage, message):
    """From their headers, before any stage runs (only the evaluation reads them, after the others)."""
    make_dycheck(tmp_path / "d")
    damage(tmp_path / "d" / "covisible" / "2x" / "val" / "1_00002.png")
    with pytest.raises(UserError, match=message):
        load(tmp_path / "d")


@pytest.mark.parametrize("fmt,message", [
    ("nerfies", "dataset.json: file not found"),
    ("dycheck", "dataset.json: file not found"),
    ("n3dv", "needs at least 2 cam"),
    ("nerfstudio", "transforms.json: file not found"),
    ("colmap", "no sparse/0/cameras.txt"),
])
def test_empty_folder_forced_format_names_the_missing_file(tmp_path, fmt, message):
    with pytest.raises(UserError, match=message):
        load(tmp_path, format=fmt)


def test_detection_table(tmp_path):
    _nerfies(tmp_path / "nerfies")
    make_nerfstudio(tmp_path / "ns", n=2)
    make_colmap(tmp_path / "colmap", n=2)
    assert detect_format(tmp_path / "nerfies") == "nerfies"
    assert detect_format(tmp_path / "ns") == "nerfstudio"
    assert detect_format(tmp_path / "colmap") == "colmap"
    (tmp_path / "sparse_only" / "sparse" / "0").mkdir(parents=True)
    with pytest.raises(UserError, match="unknown scene format"):
        detect_format(tmp_path / "sparse_only")
