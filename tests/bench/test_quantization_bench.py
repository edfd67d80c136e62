"""bench/quantization_bench.py: its error and rotation arithmetic, and a minimal CPU run on the bundled weights."""

import json
import math

import numpy as np
import pytest
import torch

from bench import quantization_bench
from stages.geometry.page4d.checkpoint import BUNDLED


def test_tensor_errors_by_hand():
    reference = {"w": torch.tensor([[1.0, -2.0], [0.5, 4.0]])}
    quantized = {"w": torch.tensor([[1.0, -2.0], [0.5, 3.0]])}        # one error of 1 on max|w| = 4
    (row,) = quantization_bench.tensor_errors(reference, quantized, ["w"])
    assert row["shape"] == [2, 2] and row["max_rel_error"] == pytest.approx(0.25)
    assert row["rel_rms_error"] == pytest.approx(1.0 / math.sqrt(1 + 4 + 0.25 + 16))


def test_rotation_change_between_camera_stacks():
    def about_z(degrees: float) -> np.ndarray:
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        pose = np.eye(4)
        pose[:2, :2] = [[c, -s], [s, c]]
        return pose

    a = np.stack([about_z(10.0), about_z(-40.0)])
    b = np.stack([about_z(10.0), about_z(50.0)])
    assert np.allclose(quantization_bench._rotation_deg(a, b), [0.0, 90.0], atol=1e-6)
    # float32 stacks 1e-4 degrees apart: cos rounds to 1 in float32, the angle must still come out
    tiny = quantization_bench._rotation_deg(about_z(0.0)[None].astype(np.float32),
                                            about_z(1e-4)[None].astype(np.float32))
    assert tiny[0] == pytest.approx(1e-4, rel=1e-5)


def test_cpu_run_on_one_short_room_window(tmp_path):
    from stages.geometry.page4d.checkpoint import save_weights
    from stages.geometry.page4d.config import ModelConfig
    from stages.geometry.page4d.model import PAGE4D

    torch.manual_seed(0)
    fp16 = tmp_path / "page4d-tiny-fp16.safetensors"               # a seeded, untrained page4d-tiny in fp16
    save_weights(PAGE4D(ModelConfig.load("page4d-tiny")), fp16, mask_supervised=True)
    out = tmp_path / "int8.json"
    assert quantization_bench.main(["--weights", str(fp16), "--rooms", "1", "--objects", "0", "--frames", "3",
                                    "--max-windows", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    weights = record["weights_8bit"]
    assert weights["int8_bytes"] < 0.52 * weights["fp16_bytes"]
    # Round to nearest with scale max|w| / 127: at most half a step, 1/254 of the tensor's max |w| (+ float32).
    assert 0 < weights["max_rel_error_worst_tensor"] <= 1 / 254 * (1 + 1e-5)
    assert weights["tensors_8bit"] == len(weights["tensors"]) and weights["parameters_8bit"] > 0.98e7
    evaluation = record["evaluation"]
    assert set(evaluation["per_kind"]) == {"fp16", "8-bit"} and set(evaluation["per_kind"]["fp16"]) == {"room"}
    delta = evaluation["delta_int8_minus_fp16"]["room"]
    for metric, value in delta.items():
        assert value == pytest.approx(evaluation["per_kind"]["8-bit"]["room"][metric]
                                      - evaluation["per_kind"]["fp16"]["room"][metric])
    assert record["command"] and record["device"] and record["date"] and record["versions"]["torch"]


def test_an_8bit_file_is_refused_as_the_reference(tmp_path, capsys):
    assert quantization_bench.main(["--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    if BUNDLED["page4d-tiny"].is_file():                             # the bundled file ships 8-bit
        assert quantization_bench.main(["--weights", str(BUNDLED["page4d-tiny"])]) == 2
        assert "already 8-bit" in capsys.readouterr().err
