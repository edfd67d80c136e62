"""bench/mask_rule_sweep.py: the rule it scores is the fused rule of dynamic_masks, value for value."""

from __future__ import annotations

import numpy as np

from bench.mask_rule_sweep import rule, scores
from stages.geometry.consistency import ConsistencyParams, dynamic_masks
from tests.geometry.test_geometry_pipeline import photometric_room


def test_the_sweep_scores_the_stage_rule():
    import torch
    from stages.geometry.consistency import geometric_scores, photometric_scores
    depth, K, w2c, moving, images = photometric_room(frames=6)
    head = np.where(moving, 0.6, 0.1).astype(np.float32)
    params = ConsistencyParams(gap=1, head_weight=0.75, photometric_weight=1.0, colour_threshold=0.15,
                               vote_fraction=0.25)
    tensors = [torch.from_numpy(x) for x in (depth, K, w2c)]
    geometric, counts = geometric_scores(*tensors, params)
    photo, photo_counts = photometric_scores(torch.from_numpy(images), *tensors, params)
    cues = {"head": head, "geometric": geometric.numpy(), "geometric_counts": counts.numpy(),
            "photometric_0.15": photo.numpy(), "photometric_counts_0.15": photo_counts.numpy()}
    expected = dynamic_masks(depth, K, w2c, params, head_probability=head, images=images)
    assert np.array_equal(rule(cues, 0.75, 1.0, 0.15, 0.25), expected)
    assert scores(expected, moving)["iou"] > 0.7
    assert scores(moving, moving) == {"iou": 1.0, "recall": 1.0, "precision": 1.0}
