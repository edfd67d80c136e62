"""The bundled page4d-tiny weights: size, metadata, default loading, and the model card's figures on a fixed scene.

The figures come from ``bench/results/page4d_tiny_eval.json`` (``fixed_scene``), written on the GPU by
``python -m bench.train_eval_bench``; here the same scene is evaluated again on the CPU. Skipped until the weights
and that result exist.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from stages.geometry.page4d.checkpoint import BUNDLED

WEIGHTS = BUNDLED["page4d-tiny"]
RESULT = WEIGHTS.parents[4] / "bench" / "results" / "page4d_tiny_eval.json"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"bundled weights not found at {WEIGHTS}")


def test_bundled_weights_file_and_metadata():
    from stages.geometry.page4d.checkpoint import load_model

    assert WEIGHTS.stat().st_size <= 32 * 10**6
    model, info = load_model("page4d-tiny")          # no checkpoint configured: the bundled file
    assert info.path == str(WEIGHTS) and info.format == "page4dgs" and info.mask_supervised
    assert sum(p.numel() for p in model.parameters()) <= 30_000_000
    assert info.metadata["train_state"]["step"] == info.metadata["train_config"]["steps"]  # a finished schedule
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_loading_the_model_does_not_import_the_compiler():
    """The model is built on the meta device and filled from the file: no initialiser runs there, since torch's
    meta kernels for them import torch._dynamo at their first call (7.6 s on a fresh H200 host). A fresh
    interpreter: the test session has imported it."""
    script = ("import sys\nfrom stages.geometry.page4d.checkpoint import load_model\n"
              "model, _ = load_model('page4d-tiny')\n"
              "print(int('torch._dynamo' in sys.modules), float(model.aggregator.camera_token.abs().sum()) > 0)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=WEIGHTS.parents[4]).stdout.split()
    assert out == ["0", "True"]                       # the tokens come from the file, not left at zeros


@pytest.mark.slow
@pytest.mark.skipif(not RESULT.is_file(), reason="no evaluation result to compare with")
def test_bundled_weights_reproduce_the_model_card_on_the_fixed_scene():
    from bench.train_eval_bench import FIXED_SCENE, scene_sequences, sequence_metrics, trained_network

    from pipeline.synthetic.writer import GENERATOR_VERSION

    recorded = json.loads(RESULT.read_text())["fixed_scene"]
    if recorded.get("generator_version") != GENERATOR_VERSION:
        pytest.skip("evaluation recorded with another synthetic generator version: rerun bench.train_eval_bench")
    assert {k: recorded[k] for k in FIXED_SCENE} == FIXED_SCENE
    expected = recorded["metrics"]
    torch.set_num_threads(1)
    sequence = scene_sequences(FIXED_SCENE["kind"], FIXED_SCENE["seed"], FIXED_SCENE["frames"], max_windows=1)[0]
    got = sequence_metrics(sequence, trained_network(str(WEIGHTS), torch.device("cpu"))(sequence))
    # GPU bf16 (recorded) vs CPU float32 (here): small differences only.
    assert got["valid_pixels"] == expected["valid_pixels"]
    assert got["depth_abs_rel"] == pytest.approx(expected["depth_abs_rel"], abs=0.01)
    assert got["depth_delta_1.25"] == pytest.approx(expected["depth_delta_1.25"], abs=0.02)
    assert got["rpe_rot_deg"] == pytest.approx(expected["rpe_rot_deg"], abs=0.2, rel=0.1)
    assert got["ate_normalized"] == pytest.approx(expected["ate_normalized"], abs=0.005, rel=0.1)
    iou = got["mask_intersection"] / max(got["mask_union"], 1)
    expected_iou = expected["mask_intersection"] / max(expected["mask_union"], 1)
    assert iou == pytest.approx(expected_iou, abs=0.03)
