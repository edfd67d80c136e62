"""Damaged run artifacts and ground-truth files (found by a CLI audit): each reader gives a one-line UserError
naming the file, not a parser's traceback."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.io import read_npy_map, write_png

DAMAGED = {"empty": b"", "zero-filled": b"\0" * 300, "text": b"not an array\n",
           "random": np.random.default_rng(0).bytes(300)}


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("content", list(DAMAGED.values()), ids=list(DAMAGED))
def test_an_unreadable_npy_map_names_the_file(tmp_path, content):
    path = tmp_path / "f0.npy"
    path.write_bytes(content)
    with pytest.raises(UserError, match="unreadable depth map") as err:
        read_npy_map(path, "depth map")
    assert "f0.npy" in str(err.value)


def test_npy_maps_are_2d_numbers_and_float32(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.arange(6, dtype=np.float64).reshape(2, 3, 1))           # (H, W, 1) is squeezed
    out = read_npy_map(path, "depth map")
    assert out.dtype == np.float32 and out.tolist() == [[0, 1, 2], [3, 4, 5]]
    for bad in (np.zeros(3), np.zeros((2, 3, 4))):
        np.save(path, bad)
        with pytest.raises(UserError, match=r"confidence map must be \(H, W\) numbers"):
            read_npy_map(path, "confidence map")
    for bad in (np.array([["a", "b"]]), np.ones((2, 2), np.complex64)):
        np.save(path, bad)
        with pytest.raises(UserError, match="confidence map must hold real numbers, got an array of"):
            read_npy_map(path, "confidence map")
    np.save(path, np.array([[object()]], dtype=object), allow_pickle=True)    # pickles are refused
    with pytest.raises(UserError, match=r"unreadable depth map \(it holds pickled Python objects\)"):
        read_npy_map(path, "depth map")
    with open(path, "wb") as f:                                               # an .npz under a .npy name
        np.savez(f, depth=np.zeros((2, 2)))
    with pytest.raises(UserError, match="unreadable depth map: the file is a .npz archive"):
        read_npy_map(path, "depth map")
    path.write_bytes(np.random.default_rng(0).bytes(100))                     # numpy called these "pickled"
    with pytest.raises(UserError, match="unreadable depth map: the file is not a .npy file"):
        read_npy_map(path, "depth map")


def test_a_damaged_gaussian_ply(tmp_path):
    from stages.initialize.gaussians import read_gaussians_ply

    ply = tmp_path / "gaussians.ply"
    ply.write_bytes(DAMAGED["zero-filled"])
    with pytest.raises(UserError, match="not a readable Gaussian PLY") as err:
        read_gaussians_ply(ply)
    assert "gaussians.ply" in str(err.value)


def _load_initial_of_two_gaussians(run_dir, monkeypatch):
    """The optimize stage's load_initial on ``run_dir``/initialize/labels.npz beside a gaussians.ply of 2 Gaussians."""
    import stages.optimize.stage as stage

    class Ctx:
        @staticmethod
        def artifact(relative):
            return run_dir / relative

    monkeypatch.setattr(stage, "read_gaussians_ply", lambda path: {"means": np.zeros((2, 3), np.float32)})
    return stage.load_initial(Ctx)


@pytest.mark.parametrize("content", [*DAMAGED.values(), npy_bytes(np.zeros(3))], ids=[*DAMAGED, "npy"])
def test_damaged_gaussian_labels(tmp_path, monkeypatch, content):
    (tmp_path / "initialize").mkdir()
    (tmp_path / "initialize" / "labels.npz").write_bytes(content)
    with pytest.raises(UserError, match="unreadable Gaussian labels.*rerun from initialize") as err:
        _load_initial_of_two_gaussians(tmp_path, monkeypatch)
    assert "labels.npz" in str(err.value)


def test_gaussian_labels_with_a_time_column_of_another_length(tmp_path, monkeypatch):
    """Named in one line (was a ValueError from numpy's broadcasting, outside the loader's error handling)."""
    (tmp_path / "initialize").mkdir()
    np.savez(tmp_path / "initialize" / "labels.npz", is_dynamic=np.array([True, False]), time=np.zeros(3))
    with pytest.raises(UserError, match=r"labels.npz: labels.npz has 2 is_dynamic and 3 time rows, gaussians.ply 2 "
                                        "Gaussians"):
        _load_initial_of_two_gaussians(tmp_path, monkeypatch)


def test_a_damaged_geometry_depth_map_in_the_render_stage(tmp_path):
    from stages.render.stage import median_depths

    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "a.npy", np.full((2, 2), 3.0, np.float32))
    (tmp_path / "depth" / "b.npy").write_bytes(DAMAGED["zero-filled"])
    assert median_depths(tmp_path, ["a"]) == [3.0]
    with pytest.raises(UserError, match="unreadable depth map") as err:
        median_depths(tmp_path, ["a", "b"])
    assert "b.npy" in str(err.value)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-5])


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b""), "unreadable depth map: the file is empty"),
    (_truncate, r"unreadable depth map: the file is truncated \(\d+ of \d+ bytes\)"),
    (lambda p: np.save(p, np.array([{}, None], dtype=object)), r"unreadable depth map \(it holds pickled Python"),
    (lambda p: np.save(p, np.full((32, 32), "x")), "depth map must hold real numbers, got an array of <U1"),
    (lambda p: np.save(p, np.zeros(3, np.float32)), r"depth map must be \(H, W\)"),
    (lambda p: np.save(p, np.ones((7, 9), np.float32)), "depth map is 9x7 but its image is 32x32")],
    ids=["empty", "truncated", "pickled", "text", "1-d", "other size"])
def test_damaged_ground_truth_depth_of_a_dnerf_scene(tmp_path, write, message):
    """Named when the scene loads, from the map's header (before any stage runs, not when the evaluation reads it);
    a map damaged after loading is still named when it is read."""
    from pipeline.cli import main
    from pipeline.scene import load_scene
    from pipeline.scene.config import SceneConfig

    scene_dir = tmp_path / "s"
    assert main(["make-scene", "object", "--out", str(scene_dir), "--frames", "4", "--res", "32", "--seed", "0"]) == 0
    depth_files = sorted((scene_dir / "ground_truth" / "depth").rglob("*.npy"))
    scene = load_scene(SceneConfig(source=str(scene_dir)))
    write(depth_files[-1])
    with pytest.raises(UserError, match=message) as err:
        load_scene(SceneConfig(source=str(scene_dir)))
    assert depth_files[-1].name in str(err.value)
    refused = []                                                  # the scene loaded before the damage
    for frame in (f for f in scene.frames if f.load_depth is not None):
        try:
            frame.load_depth()
        except UserError as late:
            refused.append(str(late))
    assert len(refused) == 1 and depth_files[-1].name in refused[0]


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b""), "not a readable image"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20), "not a readable image"),
    (lambda p: write_png(p, np.zeros((16, 32), np.uint8)), "dynamic mask is 32x16 but its image is 32x32")],
    ids=["empty", "bad header", "other size"])
def test_damaged_ground_truth_mask_of_a_dnerf_scene(tmp_path, write, message):
    """Named when the scene loads, from the PNG's header (the geometry stage's oracle and the evaluation read the
    masks only after earlier stages have run)."""
    from pipeline.cli import main
    from pipeline.scene import load_scene
    from pipeline.scene.config import SceneConfig

    scene_dir = tmp_path / "s"
    assert main(["make-scene", "object", "--out", str(scene_dir), "--frames", "4", "--res", "32", "--seed", "0"]) == 0
    mask_files = sorted((scene_dir / "ground_truth" / "dynamic_mask").rglob("*.png"))
    scene = load_scene(SceneConfig(source=str(scene_dir)))
    assert all(f.load_dynamic_mask().shape == (32, 32) for f in scene.frames)
    write(mask_files[-1])
    with pytest.raises(UserError, match=message) as err:
        load_scene(SceneConfig(source=str(scene_dir)))
    assert mask_files[-1].name in str(err.value)


def test_gaussian_labels_holding_pickled_objects_say_so(tmp_path, monkeypatch):
    """The labels reader and every .npy reader word numpy's allow_pickle refusal the same way (one helper)."""
    (tmp_path / "initialize").mkdir()
    np.savez(tmp_path / "initialize" / "labels.npz", is_dynamic=np.array([{"a": 1}, None], dtype=object),
             time=np.zeros(2, np.float32))
    with pytest.raises(UserError, match=r"unreadable Gaussian labels \(it holds pickled Python objects\); rerun"):
        _load_initial_of_two_gaussians(tmp_path, monkeypatch)
