"""bench.pose_probe and the trajectory statistics of bench.train_eval_bench: against known rotations."""

from __future__ import annotations

import math

import numpy as np

from bench.pose_probe import rotation_error_deg


def _rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def test_rotation_error_is_the_geodesic_distance():
    a = _rotation([0.3, -1.0, 0.2], 17.0)
    assert abs(rotation_error_deg(a, _rotation([0.3, -1.0, 0.2], 42.0)) - 25.0) < 1e-9
    assert abs(rotation_error_deg(a, _rotation([1.0, 0.0, 0.0], 0.0)) - 17.0) < 1e-9
    assert rotation_error_deg(a, a) < 1e-6



def test_attention_statistics_of_a_network_whose_attention_is_uniform(tmp_path):
    """With every q/k-norm weight and bias at 0 the attention logits are 0: each row is uniform (entropy fraction
    exactly 1) and a global query puts exactly 1/S of its mass on its own frame; LayerScale gammas set to known
    values are reported as set."""
    import torch
    import yaml

    from bench.pose_probe import attention_statistics
    from stages.geometry.page4d.config import ModelConfig
    from stages.geometry.page4d.model import PAGE4D
    from tests.geometry.test_train import MICRO

    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(MICRO))
    torch.manual_seed(0)
    model = PAGE4D(ModelConfig.load(str(path))).eval()
    with torch.no_grad():
        for kind, gamma in (("frame", 0.25), ("global", -0.5)):
            for block in getattr(model.aggregator, f"{kind}_blocks"):
                for norm in (block.attn.q_norm, block.attn.k_norm):
                    norm.weight.zero_()
                    norm.bias.zero_()
                block.ls1.gamma.fill_(gamma)
                block.ls2.gamma.fill_(gamma)
    frames = 3
    stats = attention_statistics(model, torch.rand(1, frames, 3, 28, 56))
    assert [b["block"] for b in stats["global_blocks"]] == list(range(MICRO["depth"]))
    for kind in ("frame", "global"):
        assert all(abs(b["entropy_fraction"] - 1.0) < 1e-5 for b in stats[f"{kind}_blocks"])
        assert stats[f"{kind}_qk_norm_weight_abs_mean"] == 0.0
    assert all(abs(b["own_frame_mass"] - 1 / frames) < 1e-5 for b in stats["global_blocks"])
    assert stats["frame_layerscale_abs_mean"] == 0.25 and stats["global_layerscale_abs_mean"] == 0.5
    assert stats["uniform_own_frame_mass"] == 1 / frames


def test_trajectory_statistics_of_a_known_camera_path():
    """A camera turning 1 degree per frame about y for 5 frames, then jumping 10 degrees, moving 0.1 per frame."""
    from bench.train_eval_bench import trajectory_statistics

    angles = [0, 1, 2, 3, 4, 14, 15]
    w2c = np.tile(np.eye(4), (len(angles), 1, 1))
    for i, a in enumerate(angles):
        camera_to_world = np.eye(4)
        camera_to_world[:3, :3] = _rotation([0, 1, 0], a)
        camera_to_world[:3, 3] = [0.1 * i, 0, 0]
        w2c[i] = np.linalg.inv(camera_to_world)
    stats = trajectory_statistics(w2c)
    assert abs(stats["rotation_from_first_max_deg"] - 15) < 1e-6 and abs(stats["rotation_last_deg"] - 15) < 1e-6
    assert abs(stats["consecutive_rotation_max_deg"] - 10) < 1e-6
    assert abs(stats["consecutive_rotation_mean_deg"] - 15 / 6) < 1e-6
    assert stats["largest_consecutive_rotation_at_frames"][0] == 5
    assert abs(stats["centre_step_max"] - 0.1) < 1e-9 and abs(stats["centre_step_median"] - 0.1) < 1e-9
