"""Damaged run artifacts and ground-truth files (found by a CLI audit): each reader gives a one-line UserError
naming the file, not a parser's traceback."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import UserError


@pytest.mark.parametrize("content", [b"", b"\0" * 300])
def test_a_damaged_gaussian_ply_or_labels_file(tmp_path, content):
    from stages.initialize.gaussians import read_gaussians_ply
    from stages.optimize.stage import load_initial

    (tmp_path / "initialize").mkdir()
    ply = tmp_path / "initialize" / "gaussians.ply"
    ply.write_bytes(content)
    with pytest.raises(UserError, match="not a readable Gaussian PLY") as err:
        read_gaussians_ply(ply)
    assert "gaussians.ply" in str(err.value)

    class Ctx:
        @staticmethod
        def artifact(relative):
            return tmp_path / relative

    import stages.optimize.stage as stage

    good = {"means": np.zeros((2, 3), np.float32)}
    (tmp_path / "initialize" / "labels.npz").write_bytes(content)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(stage, "read_gaussians_ply", lambda path: good)
    try:
        with pytest.raises(UserError, match="unreadable Gaussian labels") as err:
            load_initial(Ctx)
    finally:
        monkey.undo()
    assert "labels.npz" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\0" * 300])
def test_a_damaged_confidence_map(tmp_path, content):
    from stages.initialize.geometry_io import read_confidence

    (tmp_path / "confidence").mkdir()
    (tmp_path / "confidence" / "f0.npy").write_bytes(content)
    with pytest.raises(UserError, match="unreadable confidence map") as err:
        read_confidence(tmp_path, "f0", (4, 4))
    assert "f0.npy" in str(err.value)


@pytest.mark.parametrize("write", [lambda p: p.write_bytes(b""), lambda p: np.save(p, np.zeros(3, np.float32))])
def test_a_damaged_ground_truth_depth_of_a_dnerf_scene(tmp_path, write):
    from pipeline.scene import load_scene
    from pipeline.scene.config import SceneConfig
    from pipeline.cli import main

    scene_dir = tmp_path / "s"
    assert main(["make-scene", "object", "--out", str(scene_dir), "--frames", "4", "--res", "32", "--seed", "0"]) == 0
    depth_file = next((scene_dir / "ground_truth" / "depth").rglob("*.npy"))
    write(depth_file)
    scene = load_scene(SceneConfig(source=str(scene_dir)))
    frame = next(f for f in scene.frames if depth_file.name.startswith(f.name) or f.name in depth_file.stem)
    with pytest.raises(UserError, match="unreadable depth map|a depth map must be") as err:
        frame.load_depth()
    assert depth_file.name in str(err.value)
