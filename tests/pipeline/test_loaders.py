import json
import re

import numpy as np
import pytest

from pipeline.cameras import opencv_w2c_to_opengl_c2w, look_at_w2c
from pipeline.errors import UserError
from pipeline.scene import detect_format, load_scene
from pipeline.scene.config import SceneConfig
from tests.conftest import LADY_RUNNING, requires


def write_png(path, array):
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, array)


def make_frames(folder, n=5, size=(32, 24), rng=None):
    rng = rng or np.random.default_rng(0)
    for i in range(n):
        write_png(folder / f"frame{i}.png", rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return folder


def make_dnerf(root, n_train=4, n_test=2, size=32, fov=0.8):
    """A tiny D-NeRF scene whose cameras look at the origin from a circle of radius 4."""
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("test", n_test)):
        frames = []
        for i in range(n):
            angle = 2 * np.pi * (i + (0.5 if split == "test" else 0)) / n
            eye = np.array([4 * np.cos(angle), 4 * np.sin(angle), 1.0])
            c2w = opencv_w2c_to_opengl_c2w(look_at_w2c(eye, np.zeros(3)))
            write_png(root / split / f"r_{i:03d}.png", rng.integers(0, 255, (size, size, 4), dtype=np.uint8))
            frames.append({"file_path": f"./{split}/r_{i:03d}", "time": i / max(n - 1, 1),
                           "transform_matrix": c2w.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))
    return root


def test_frame_folder(tmp_path):
    make_frames(tmp_path / "f", n=10)
    scene = load_scene(SceneConfig(source=str(tmp_path / "f")))
    assert scene.format == "frames" and [f.name for f in scene.frames][:3] == ["frame0", "frame1", "frame2"]
    assert [f.name for f in scene.test_frames] == ["frame4"]
    assert np.isclose(scene.frames[-1].time, 1.0) and scene.frames[0].time == 0.0
    assert scene.rgb(scene.frames[0]).shape == (24, 32, 3)
    strided = load_scene(SceneConfig(source=str(tmp_path / "f"), stride=3, max_frames=3, max_size=16))
    assert [f.name for f in strided.frames] == ["frame0", "frame3", "frame6"]
    assert strided.rgb(strided.frames[1]).shape == (12, 16, 3)


def test_dnerf_cameras_see_the_origin_at_the_image_centre(tmp_path):
    make_dnerf(tmp_path / "d")
    scene = load_scene(SceneConfig(source=str(tmp_path / "d")))
    assert scene.format == "dnerf" and len(scene.train_frames) == 4 and len(scene.test_frames) == 2
    for f in scene.frames:
        uv, z = f.camera.project(np.zeros((1, 3)))
        assert np.allclose(uv[0], [16, 16], atol=1e-9) and z[0] > 0
        assert np.isclose(f.camera.K[0, 0], 0.5 * 32 / np.tan(0.4))
    assert [f.name for f in scene.test_frames] == ["r_000", "r_001"]  # test frames keep their stems
    assert "train_r_000" in [f.name for f in scene.train_frames]
    rgb = scene.rgb(scene.frames[0])
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.float32
    half = load_scene(SceneConfig(source=str(tmp_path / "d"), resolution="2x"))
    assert half.frames[0].width == 16 and np.allclose(half.frames[0].camera.project(np.zeros((1, 3)))[0], 8)


@requires(LADY_RUNNING, "the lady-running clip")
def test_real_clip_loads_as_a_frame_folder():
    scene = load_scene(SceneConfig(source=str(LADY_RUNNING)))
    assert scene.format == "frames" and len(scene.frames) == 65
    assert scene.frames[0].name == "00000" and (scene.frames[0].width, scene.frames[0].height) == (854, 480)
    assert len(scene.test_frames) == 8
    image = scene.rgb(scene.frames[10])
    assert image.shape == (480, 854, 3) and 0.05 < image.mean() < 0.95


def test_video(tmp_path):
    import imageio.v3 as iio

    frames = np.stack([np.full((32, 48, 3), 20 * i, dtype=np.uint8) for i in range(6)])
    iio.imwrite(tmp_path / "clip.mp4", frames, plugin="FFMPEG", fps=10)
    scene = load_scene(SceneConfig(source=str(tmp_path / "clip.mp4"), stride=2))
    assert scene.format == "video" and [f.name for f in scene.frames] == ["00000", "00002", "00004"]
    assert np.allclose(scene.rgb(scene.frames[2]).mean(), 80 / 255, atol=0.03)


def test_a_video_too_small_after_max_size_names_the_video(tmp_path, monkeypatch):
    import imageio.v3 as iio

    monkeypatch.setenv("PAGE4DGS_CACHE", str(tmp_path / "cache"))
    iio.imwrite(tmp_path / "clip.mp4", np.zeros((3, 32, 64, 3), np.uint8), plugin="FFMPEG", fps=10)
    with pytest.raises(UserError, match=r"clip.mp4: frame '00000' is 20x10 pixels: each side needs at least 11 "
                                        r"\(scene.max_size=20 scales them to this\)$"):
        load_scene(SceneConfig(source=str(tmp_path / "clip.mp4"), max_size=20))


def test_a_damaged_frame_cache_is_decoded_again(tmp_path, monkeypatch, caplog):
    # The cache's `.complete` marker used to be trusted: a deleted or garbled frame in it was reported as an error
    # in a cache file the user never made, on every later run.
    import imageio.v3 as iio

    monkeypatch.setenv("PAGE4DGS_CACHE", str(tmp_path / "cache"))
    frames = np.stack([np.full((32, 48, 3), 40 * i, dtype=np.uint8) for i in range(4)])
    iio.imwrite(tmp_path / "clip.mp4", frames, plugin="FFMPEG", fps=10)
    config = SceneConfig(source=str(tmp_path / "clip.mp4"))
    cached = load_scene(config).frames[0].source_path.parent
    pixels = [load_scene(config).rgb(f) for f in load_scene(config).frames]
    for damage in (lambda: (cached / "00001.png").unlink(),
                   lambda: (cached / "00002.png").write_bytes(b"not a png"),
                   lambda: (cached / ".complete").write_text("many")):
        damage()
        with caplog.at_level("WARNING"):
            scene = load_scene(config)
        assert "decoded-frame cache" in caplog.text and "decoding clip.mp4 again" in caplog.text
        caplog.clear()
        assert len(scene.frames) == 4 and all(np.array_equal(scene.rgb(f), p) for f, p in zip(scene.frames, pixels))


def test_a_video_cut_short_is_used_with_a_warning_naming_the_missing_frames(tmp_path, monkeypatch, caplog):
    # A file cut short after a header that declares the whole clip (moov atom first, as web videos are written):
    # ffmpeg decodes what is there and stops quietly, so the scene would have used part of the clip unnoticed.
    import imageio.v3 as iio

    monkeypatch.setenv("PAGE4DGS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(32, 48, 64, 3), dtype=np.uint8)        # noise: every frame costs bytes
    whole = tmp_path / "whole.mp4"
    iio.imwrite(whole, frames, plugin="FFMPEG", fps=8, output_params=["-movflags", "+faststart"])
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    with caplog.at_level("WARNING"):
        full = load_scene(SceneConfig(source=str(whole)))
    assert len(full.frames) == 32 and "declares" not in caplog.text
    with caplog.at_level("WARNING"):
        scene = load_scene(SceneConfig(source=str(cut)))
    decoded = len(scene.frames)
    assert 2 <= decoded < 30
    assert f"cut.mp4: decoded {decoded} of the 32 frames its header declares" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = load_scene(SceneConfig(source=str(cut)))          # from the cache: still said
    assert len(again.frames) == decoded and "of the 32 frames its header declares" in caplog.text
    assert any("of the 32 frames" in note for note in again.notes)


def test_16_bit_greyscale_pngs_keep_their_values(tmp_path):
    # PIL's convert("RGB") clips 16-bit values at 255: such a PNG used to load almost white.
    from PIL import Image

    from pipeline.scene.images import read_image

    ramp = np.linspace(0, 65535, 40 * 24).reshape(24, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "grey8.png")
    wide, narrow = read_image(tmp_path / "grey16.png"), read_image(tmp_path / "grey8.png")
    assert wide.shape == (24, 40, 3) and wide.dtype == np.float32
    assert np.allclose(wide[..., 0], ramp / 65535.0, atol=1e-6) and np.abs(wide - narrow).max() <= 1 / 255
    half = read_image(tmp_path / "grey16.png", (20, 12))          # area-averaged like 8-bit images
    assert np.abs(half - read_image(tmp_path / "grey8.png", (20, 12))).max() < 2 / 255


def test_frames_too_small_to_optimize_are_refused_when_loaded(tmp_path):
    # 10x10 frames went through geometry and initialize, then the SSIM loss's 11-pixel window failed (a traceback).
    make_frames(tmp_path / "small", size=(10, 10))
    with pytest.raises(UserError, match=r"frame '.*' is 10x10 pixels: each side needs at least 11$"):
        load_scene(SceneConfig(source=str(tmp_path / "small")))
    make_frames(tmp_path / "wide", size=(64, 36))                  # 16x9 after scene.max_size=16
    with pytest.raises(UserError, match=r"is 16x9 pixels: .* \(scene.max_size=16 scales them to this\)"):
        load_scene(SceneConfig(source=str(tmp_path / "wide"), max_size=16))
    assert len(load_scene(SceneConfig(source=str(tmp_path / "wide"), max_size=20)).frames) == 5     # 20x11
    with pytest.raises(UserError, match=r"is 10x10 pixels: each side needs at least 11$"):        # no hint: not scaled
        load_scene(SceneConfig(source=str(tmp_path / "small"), max_size=4096))


@pytest.mark.parametrize("fov, accepted", [(1e-12, False), (0.0018, True), (3.12, True), (3.1415, False)])
def test_a_camera_with_an_absurd_focal_length_is_refused(tmp_path, fov, accepted):
    # A positive but absurd focal length (1e-300 px) passed the loaders and came out as non-finite Gaussians.
    make_dnerf(tmp_path / "d", fov=fov)
    if accepted:
        assert len(load_scene(SceneConfig(source=str(tmp_path / "d"))).frames) == 6
        return
    with pytest.raises(UserError, match=r"/d: the camera of frame .train_r_000. \(.*r_000.png\) has focal lengths "
                                        r".* a field of view of .* degrees, outside the 0.1-179"):
        load_scene(SceneConfig(source=str(tmp_path / "d")))


def test_an_image_in_both_the_train_and_test_lists_is_refused(tmp_path):
    # It loaded as 'train_r_000' and 'r_000': the test view was trained on.
    make_dnerf(tmp_path / "d")
    test = json.loads((tmp_path / "d" / "transforms_test.json").read_text())
    train = json.loads((tmp_path / "d" / "transforms_train.json").read_text())
    test["frames"].append(train["frames"][0])
    (tmp_path / "d" / "transforms_test.json").write_text(json.dumps(test))
    with pytest.raises(UserError, match=r"train/r_000.png: this image is listed more than once \(as (train|test) "
                                        r"frame .* a view cannot be both trained on and held out"):
        load_scene(SceneConfig(source=str(tmp_path / "d")))


def test_two_images_with_one_name_are_named(tmp_path):
    make_frames(tmp_path / "f", n=3)
    from pipeline.scene.loaders.common import unique_names
    from pipeline.scene.model import Frame

    frames = [Frame(name="x", index=i, time=0.0, split="train", width=4, height=4, load_image=None,
                    source_path=tmp_path / "f" / f"frame{i}.png") for i in range(2)]
    with pytest.raises(UserError, match=r"frame name 'x' is used by 2 images \(.*frame0.png, .*frame1.png\); "
                                        r"rename one"):
        unique_names(frames)


def test_32_bit_integer_and_float_greyscale_images(tmp_path):
    # PIL mode "I" (32-bit integers holding 16-bit values) is divided by 65535; mode "F" is taken as [0, 1] and
    # clipped there (NaN -> 0).
    from PIL import Image

    from pipeline.scene.images import read_image

    ramp = np.linspace(0, 65535, 8 * 6).reshape(6, 8).astype(np.int32)
    Image.fromarray(ramp).save(tmp_path / "grey32.tif")
    floats = np.linspace(-0.5, 1.5, 8 * 6).reshape(6, 8).astype(np.float32)
    floats[0, 0] = np.nan
    Image.fromarray(floats).save(tmp_path / "float.tif")
    with Image.open(tmp_path / "grey32.tif") as im, Image.open(tmp_path / "float.tif") as fm:
        assert (im.mode, fm.mode) == ("I", "F")
    integer, real = read_image(tmp_path / "grey32.tif"), read_image(tmp_path / "float.tif")
    assert integer.shape == real.shape == (6, 8, 3)
    np.testing.assert_allclose(integer[..., 1], ramp / 65535.0, atol=1e-6)
    expected = np.clip(np.nan_to_num(floats), 0.0, 1.0)
    np.testing.assert_allclose(real[..., 2], expected, atol=1e-7)


def test_a_dnerf_folder_without_its_training_split_says_so(tmp_path):
    make_dnerf(tmp_path / "d")
    (tmp_path / "d" / "transforms_train.json").unlink()
    with pytest.raises(UserError, match=r"D-NeRF scene needs transforms_train.json \(found only "
                                        r"transforms_test.json\)"):
        detect_format(tmp_path / "d")


def test_a_video_without_imageio_ffmpeg_is_a_one_line_error(tmp_path, monkeypatch):
    import sys

    import imageio.v3 as iio

    iio.imwrite(tmp_path / "clip.mp4", np.zeros((3, 32, 48, 3), np.uint8), plugin="FFMPEG", fps=10)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)                  # import fails as if absent
    with pytest.raises(UserError, match=r"decoding clip\.mp4 needs imageio-ffmpeg.*pass the folder"):
        load_scene(SceneConfig(source=str(tmp_path / "clip.mp4")))


def test_a_one_frame_video_error_names_the_video(tmp_path):
    import imageio.v3 as iio

    clip = tmp_path / "one.mp4"
    iio.imwrite(clip, np.zeros((1, 32, 48, 3), np.uint8), plugin="FFMPEG", fps=10)
    with pytest.raises(UserError, match="needs at least 2") as err:
        load_scene(SceneConfig(source=str(clip)))
    assert str(err.value).startswith(f"{clip}: ") and "cache" not in str(err.value)


def test_too_few_frames_after_stride_or_max_frames_names_the_settings(tmp_path):
    folder = make_frames(tmp_path / "frames", n=8)
    with pytest.raises(UserError, match=r"needs at least 2 frames, found 1 \(scene.max_frames=1 keep 1 of its 8\)$"):
        load_scene(SceneConfig(source=str(folder), max_frames=1))
    with pytest.raises(UserError, match=r"found 1 \(scene.stride=100 keep 1 of its 8\)$"):
        load_scene(SceneConfig(source=str(folder), stride=100))


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file or folder"),
    ("empty_dir", "folder is empty"),
    ("one_frame", "at least 2 frames"),
    ("mixed_sizes", "differs from"),
    ("corrupt_image", "not a readable image"),
    ("unknown_dir", "unknown scene format"),
    ("unknown_file", "unknown scene format"),
    ("empty_video", "video file is empty"),
    ("corrupt_video", "cannot decode video"),
    ("bad_json", "malformed JSON"),
    ("incomplete_json", "missing key 'camera_angle_x'"),
    ("missing_image", "does not exist"),
])
def test_bad_input_is_one_clear_error(tmp_path, case, message):
    path = tmp_path / case
    if case == "empty_dir":
        path.mkdir()
    elif case == "one_frame":
        make_frames(path, n=1)
    elif case == "mixed_sizes":
        make_frames(path, n=3)
        write_png(path / "frame9.png", np.zeros((10, 10, 3), np.uint8))
    elif case == "corrupt_image":
        make_frames(path, n=3)
        (path / "frame1.png").write_bytes(b"\x89PNG not really")
    elif case == "unknown_dir":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif case == "unknown_file":
        path = tmp_path / "scene.txt"
        path.write_text("hello")
    elif case == "empty_video":
        path = tmp_path / "clip.mp4"
        path.write_bytes(b"")
    elif case == "corrupt_video":
        path = tmp_path / "clip.mp4"
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    elif case in ("bad_json", "incomplete_json", "missing_image"):
        make_dnerf(path)
        if case == "bad_json":
            (path / "transforms_train.json").write_text('{"camera_angle_x": 0.8, "frames": [')
        elif case == "incomplete_json":
            (path / "transforms_test.json").write_text('{"frames": []}')
        else:
            (path / "train" / "r_001.png").unlink()
    with pytest.raises(UserError, match=message):
        load_scene(SceneConfig(source=str(path)))


NOT_RIGID = r"transforms_train.json: transform_matrix of './train/r_001' is not a rigid camera-to-world matrix"


@pytest.mark.parametrize("field, value, message", [
    ("camera_angle_x", "wide", "camera_angle_x must be a number"),
    ("camera_angle_x", 4.0, "camera_angle_x must be a field of view"),
    ("time", "noon", "must be a number"),
    ("transform_matrix", [[float("nan")] * 4] * 4, "non-finite"),
    # Each of these was a traceback (TypeError, numpy's LinAlgError).
    ("frame", 5, r"transforms_train.json: frames\[1\] must be a JSON object, got 5"),
    ("frame", None, r"transforms_train.json: frames\[1\] must be a JSON object, got null"),
    ("transform_matrix", [[0.0] * 4] * 4, NOT_RIGID),
    ("transform_matrix", np.eye(4)[:3].tolist() + [[0.0] * 4], NOT_RIGID),              # last row 0 0 0 0
    ("transform_matrix", (2 * np.eye(4)).tolist(), NOT_RIGID),                           # scaled
    # Was read as a static scene (every time 0) when one frame lacked the key.
    ("drop", "time", r"transforms_train.json: missing key 'time' in the frame './train/r_001' \(other frames"),
])
def test_bad_dnerf_values_are_one_clear_error(tmp_path, field, value, message):
    path = make_dnerf(tmp_path / "scene")
    meta = json.loads((path / "transforms_train.json").read_text())
    if field == "camera_angle_x":
        meta[field] = value
    elif field == "frame":
        meta["frames"][1] = value
    elif field == "drop":
        del meta["frames"][1][value]
    else:
        meta["frames"][1][field] = value
    (path / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=message):
        load_scene(SceneConfig(source=str(path)))


@pytest.mark.parametrize("resolution", ["0x", "nanx", "-2x", "infx", "x", "big"])
def test_a_bad_dnerf_resolution_is_refused(tmp_path, resolution):
    # D-NeRF once parsed the factor itself: 0x divided by zero, nanx failed in int(), -2x loaded 1x1 frames.
    path = make_dnerf(tmp_path / "scene")
    with pytest.raises(UserError, match=f"scene.resolution must be 'auto' or a positive factor.*got '{resolution}'"):
        load_scene(SceneConfig(source=str(path), resolution=resolution))
    assert load_scene(SceneConfig(source=str(path), resolution="2x")).frames[0].width == 16


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (and holds no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_an_image_claiming_a_huge_size_is_a_one_line_error(tmp_path):
    # PIL refuses it with DecompressionBombError, which is not an OSError: it used to escape as a traceback.
    from pipeline.scene.images import image_size, read_image

    path = make_dnerf(tmp_path / "scene")
    bomb = path / "train" / "r_001.png"
    bomb.write_bytes(_png_header(30000, 30000))
    with pytest.raises(UserError, match=f"^{re.escape(str(bomb))}: not a readable image .*exceeds limit"):
        load_scene(SceneConfig(source=str(path)))
    with pytest.raises(UserError, match=f"^{re.escape(str(bomb))}: not a readable image"):
        image_size(bomb)
    with pytest.raises(UserError, match=f"^{re.escape(str(bomb))}: corrupt or unreadable image"):
        read_image(bomb)


@pytest.mark.parametrize("option, message", [
    ("stride=0", "scene.stride must be >= 1"), ("max_frames=-1", "scene.max_frames"),
    ("max_size=-5", "scene.max_size must be 0"), ("max_size=4", "scene.max_size must be 0"),
    ("test_every=-2", "scene.test_every")])
def test_bad_scene_options_are_refused(tmp_path, option, message):
    key, value = option.split("=")
    with pytest.raises(UserError, match=message):
        load_scene(SceneConfig(source=str(make_frames(tmp_path / "f", n=3)), **{key: int(value)}))


def test_detect_format(tmp_path):
    make_frames(tmp_path / "f", n=2)
    make_dnerf(tmp_path / "d")
    assert detect_format(tmp_path / "f") == "frames" and detect_format(tmp_path / "d") == "dnerf"
