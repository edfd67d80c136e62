"""Our PAGE-4D forward pass against numbers computed by the official code (``kaichen-z/PAGE4D``).

The golden file holds the official model's outputs for weights drawn by ``bench.page4d_parity.seeded_weights`` (our
own function, so the test draws the same weights without the official code) at a small size: ViT-S DINO, the
official 24-layer aggregator schedule, all four heads, two 84 x 56 frames, the mask bias off and on. It was written
by ``python -m bench.page4d_parity /path/to/PAGE4D --golden`` (the JSON beside it has the command, the official
commit and torch version). ``bench/results/page4d_parity.json`` covers larger inputs and the 1B dimensions.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.page4d_parity import GOLDEN_KEYS, golden_config, golden_images, seeded_weights
from stages.geometry.page4d import PAGE4D

GOLDEN = Path(__file__).parent / "fixtures" / "page4d_official_golden.npz"
TOLERANCE = 1e-4   # max |ours - official| / max |official|; the two agree to ~3e-6 (float32, different op order)


@pytest.fixture(scope="module")
def outputs():
    """Our outputs, mask off and on, and the golden file's."""
    torch.manual_seed(0)
    model = PAGE4D(golden_config())          # built as usual (buffers included), then every parameter redrawn
    seeded_weights(model, seed=0)
    model.eval()
    images = golden_images()
    ours = {}
    with torch.no_grad():
        for tag, mask_on in (("off", False), ("on", True)):
            out = model(images, mask=mask_on, want_mask_score=True)
            for key in GOLDEN_KEYS:
                ours[f"{key}_mask_{tag}"] = out[key].float().numpy()
            for i, pose in enumerate(out["pose_enc_list"]):
                ours[f"pose_enc_list{i}_mask_{tag}"] = pose.float().numpy()
    del model
    with np.load(GOLDEN) as golden:
        return ours, {k: golden[k] for k in golden.files}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def test_every_output_matches_the_official_code(outputs):
    ours, golden = outputs
    assert sorted(ours) == sorted(golden), "the same outputs, including the four refinement iterations' poses"
    errors = {key: relative_error(ours[key], golden[key]) for key in golden}
    assert all(ours[key].shape == golden[key].shape for key in golden)
    assert max(errors.values()) <= TOLERANCE, {k: f"{v:.1e}" for k, v in errors.items() if v > TOLERANCE}


def test_the_golden_outputs_can_tell_the_mask_bias_apart(outputs):
    # The bias must change the camera (what it is for) far beyond the tolerance, else the file could not catch a
    # mask path that does nothing; depth and points change less (only through the shared tokens).
    _, golden = outputs
    assert relative_error(golden["pose_enc_mask_on"], golden["pose_enc_mask_off"]) > 100 * TOLERANCE
    assert np.array_equal(golden["mask_score_mask_on"], golden["mask_score_mask_off"])  # the head runs before the bias
    record = json.loads(GOLDEN.with_suffix(".json").read_text())
    assert record["seed"] == 0 and record["frames"] == 2 and "official_commit" in record
