"""bench/geometry_ablation.py: swapped masks survive the runner, and the mask/depth figures are exact."""

import numpy as np
from PIL import Image

from bench.geometry_ablation import geometry_figures, geometry_run, swap_masks
from bench.optimize_bench import make_object


def test_swapped_masks_are_kept_by_the_runner_and_scored_against_the_truth(tmp_path):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.scene import load_scene

    scene_dir = make_object(tmp_path / "scene", seed=3, frames=6, resolution=32, test_views=2)
    config = load_config("dnerf", [f"scene.source={scene_dir}", "geometry.model=oracle", "device=cpu"])
    scene = load_scene(config.scene)
    truth, other = tmp_path / "truth", tmp_path / "other"
    geometry_run(config, scene, truth)
    geometry_run(config, scene, other)
    # A stand-in "network" run: every pixel moving, depth 10 % too far.
    masks = sorted((other / "geometry" / "dynamic_mask").glob("*.png"))
    for path in masks:
        Image.fromarray(np.full_like(np.array(Image.open(path)), 255)).save(path)
    for path in (other / "geometry" / "depth").glob("*.npy"):
        np.save(path, np.load(path) * 1.1)

    mixed = tmp_path / "mixed"
    swap_masks(truth, other, mixed)                       # true depth, all-moving masks
    run_pipeline(config, mixed, scene, until_stage="geometry")     # up to date: must not redo the geometry
    for path in masks:
        assert (np.array(Image.open(mixed / "geometry" / "dynamic_mask" / path.name)) == 255).all()

    # Expected figures over the training views' object pixels, counted here directly.
    true_moving = object_pixels = 0
    for path in masks:
        name = path.stem
        split = [c for c in scene.frames if c.name == name][0].split
        if split != "train":
            continue
        obj = np.load(truth / "geometry" / "depth" / f"{name}.npy") > 0
        true_moving += int(((np.array(Image.open(truth / "geometry" / "dynamic_mask" / path.name)) > 127) & obj).sum())
        object_pixels += int(obj.sum())
    assert 0 < true_moving < object_pixels
    figures = geometry_figures(mixed, truth)
    assert figures["mask_recall"] == 1.0 and figures["depth_abs_rel"] == 0.0
    assert np.isclose(figures["mask_precision"], true_moving / object_pixels)
    assert np.isclose(figures["mask_iou"], true_moving / object_pixels)
    far = geometry_figures(other, truth)
    assert np.isclose(far["depth_abs_rel"], 0.1, atol=1e-5)
