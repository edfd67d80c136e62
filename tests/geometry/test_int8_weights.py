"""8-bit weights files: the quantizer's error bound, the on-disk layout, a quantized network's outputs against a
derived bound, metadata, the export commands and one-line errors for inconsistent files."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.errors import UserError
from stages.geometry.page4d.checkpoint import (INT8_FORMAT, INT8_MAX, INT8_SCALE, INT8_VALUES, dequantize_int8,
                                               encode_state, load_model, quantize_int8, read_checkpoint,
                                               save_weights)
from tests.geometry.test_page4d_model import SMALL, random_model

TINY = "page4d-tiny"
# float32 slack of the round trip, in units of the scale: w / scale and values * scale are each correctly rounded
# (relative error <= 2^-24 of a quantity <= 127 scales), plus one more rounding for a division done as a product.
FLOAT32_SLACK = 3 * INT8_MAX * 2.0**-24


def rows_of_mixed_magnitude(shape: tuple, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """A (R, ...) tensor whose slices along dim 0 span six decades of magnitude, one of them all zeros."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator, dtype=torch.float64)
    magnitudes = torch.logspace(-4, 2, shape[0], dtype=torch.float64)
    weight *= magnitudes.view(-1, *([1] * (len(shape) - 1)))
    weight[shape[0] // 2] = 0.0
    return weight.to(dtype)


@pytest.mark.parametrize("shape, dtype", [((48, 96), torch.float32), ((16, 8, 3, 3), torch.float32),
                                          ((64, 64), torch.float16)])
def test_round_trip_is_within_half_a_step_with_max_abs_over_127_scales(shape, dtype):
    weight = rows_of_mixed_magnitude(shape, dtype)
    values, scale = quantize_int8(weight)
    assert values.dtype == torch.int8 and values.shape == weight.shape
    assert scale.dtype == torch.float32 and scale.shape == (shape[0],)
    assert int(values.min()) >= -INT8_MAX and int(values.max()) <= INT8_MAX
    w64 = weight.double()
    rows = w64.abs().flatten(1)
    reference = rows.amax(dim=1) / INT8_MAX                                  # float64 max|w| / 127
    assert torch.all((scale.double() - reference).abs() <= reference * 2.0**-24)   # correctly rounded to float32
    # The largest entry of every non-zero slice lands on +-127: the whole symmetric range is used.
    largest = values.flatten(1).gather(1, rows.argmax(dim=1, keepdim=True))[:, 0].abs()
    nonzero = reference > 0
    assert torch.all(largest[nonzero] == INT8_MAX)
    assert torch.all(values[~nonzero] == 0) and torch.all(scale[~nonzero] == 0)
    # Round to nearest <=> every element within half a step of its slice's scale (float64 comparison).
    error = (w64 - dequantize_int8(values, scale).double()).abs()
    bound = scale.double().view(-1, *([1] * (len(shape) - 1))) * (0.5 + FLOAT32_SLACK)
    assert torch.all(error <= bound)
    assert torch.all(dequantize_int8(values, scale)[~nonzero] == 0)


def test_non_finite_weights_are_refused():
    weight = torch.ones(4, 1024)
    weight[2, 5] = float("nan")
    with pytest.raises(ValueError):
        quantize_int8(weight)
    with pytest.raises(UserError) as err:
        encode_state({"w": weight}, int8=True)
    assert "w: cannot quantize non-finite weights" in str(err.value)


def test_layout_which_tensors_are_8_bit_and_the_file_round_trip(tmp_path):
    model = random_model(SMALL)
    state = model.state_dict()
    path = tmp_path / "small-int8.safetensors"
    save_weights(model, path, int8=True)
    stored = load_file(str(path))
    # SMALL (width 64): attention and MLP matrices (>= 64 x 64 = 4096 values) are 8-bit; biases, norms, LayerScale,
    # the position table and tensors under 4096 values (the 16-channel DPT convolutions) are fp16.
    for name in ("aggregator.frame_blocks.0.attn.qkv.weight", "aggregator.global_blocks.3.mlp.fc2.weight",
                 "aggregator.frame_blocks.0.attn.proj.weight", "camera_head.trunk.0.attn.qkv.weight"):
        assert stored[name + INT8_VALUES].dtype == torch.int8 and name not in stored
        values, scale = quantize_int8(state[name])
        assert torch.equal(stored[name + INT8_VALUES], values)
        assert torch.equal(stored[name + INT8_SCALE], scale)               # bit for bit
    for name in ("aggregator.frame_blocks.0.attn.qkv.bias", "aggregator.frame_blocks.0.norm1.weight",
                 "aggregator.frame_blocks.0.ls1.gamma", "aggregator.patch_embed.pos_embed",
                 "depth_head.scratch.layer1_rn.weight"):
        assert stored[name].dtype == torch.float16 and torch.equal(stored[name], state[name].half()), name
    # Reading gives the model's own keys: 8-bit ones dequantized to float32, the rest as stored.
    read, fmt, metadata = read_checkpoint(path)
    assert fmt == "page4dgs" and set(read) == set(state)
    assert metadata["weights_format"] == INT8_FORMAT
    assert metadata["quantization"]["quantized_tensors"] == sum(k.endswith(INT8_VALUES) for k in stored)
    name = "aggregator.frame_blocks.0.attn.qkv.weight"
    assert read[name].dtype == torch.float32
    assert torch.equal(read[name], stored[name + INT8_VALUES].float() * stored[name + INT8_SCALE][:, None])
    # page4d-tiny's (1, 325, 192) position table is large but has no channels along dim 0: it stays fp16.
    table = torch.randn(1, 325, 192)
    assert encode_state({"pos_embed": table}, int8=True)[0]["pos_embed"].dtype == torch.float16
    # Size: 1 byte per 8-bit value + 4 per slice scale, 2 per fp16 value; a safetensors file is an 8-byte header
    # length, the JSON header, then the raw tensor bytes.
    eight_bit = [k for k in state if k + INT8_VALUES in stored]
    expected = (sum(state[k].numel() + 4 * state[k].shape[0] for k in eight_bit)
                + sum(2 * v.numel() for k, v in state.items() if k not in eight_bit))
    data = path.read_bytes()
    assert len(data) - 8 - int.from_bytes(data[:8], "little") == expected


def test_metadata_round_trips_and_a_reencoded_file_keeps_it(tmp_path):
    from stages.geometry.page4d.export_weights import main

    model = random_model(SMALL)
    path = tmp_path / "small.safetensors"
    save_weights(model, path, mask_enabled=True, mask_supervised=True, steps=12, train_state={"step": 12},
                 data="planes")
    int8 = tmp_path / "small-int8.safetensors"
    assert main([str(path), "--int8", "--out", str(int8)]) == 0
    loaded, info = load_model(TINY, str(int8))                # the file's own config wins over the name
    assert loaded.config == SMALL and info.format == "page4dgs" and info.mask_enabled and info.mask_supervised
    original = read_checkpoint(path)[2]
    assert original["weights_format"] == "float16"
    assert {k: v for k, v in info.metadata.items() if k not in ("weights_format", "quantization")} == \
        {k: v for k, v in original.items() if k != "weights_format"}
    assert info.metadata["weights_format"] == INT8_FORMAT and info.metadata["train_state"] == {"step": 12}
    # Back to fp16: the quantization entry goes, the rest stays.
    back = tmp_path / "small-back.safetensors"
    assert main([str(int8), "--out", str(back)]) == 0
    assert read_checkpoint(back)[2] == original
    with pytest.raises(SystemExit):
        main([str(int8), "--int8"])                            # re-encoding needs --out


@torch.no_grad()
def _output_scalars(outputs: dict, picks: dict) -> torch.Tensor:
    return torch.stack([outputs[key].reshape(-1)[index] for key, indices in picks.items() for index in indices])


def test_quantized_network_stays_within_the_rounding_error_bound_of_the_float_model(tmp_path):
    """The bound, derived: every 8-bit weight w carries a rounding error e = w_hat - w in [-s/2, s/2] (s its slice's
    scale; previous test). Over the ~800k quantized weights of SMALL these errors behave as independent, zero-mean,
    uniform variables (variance s^2 / 12), so to first order an output y moves by sum(dy/dw * e), a sum of many small
    independent terms: Gaussian with sigma^2 = sum((dy/dw)^2 * s^2 / 12). Each output must lie within 5 sigma
    (two-sided probability 6e-7 per output), plus 8 float32 ulps of |y| for the two evaluations' own rounding.
    Non-quantized tensors are written in float32 here, so all of the difference comes from the 8-bit matrices.
    ``mask_score`` is left out: the mask head reads detached tokens, so autograd cannot give its sensitivity."""
    model = random_model(SMALL)
    path = tmp_path / "small-int8.safetensors"
    save_weights(model, path, mask_enabled=True, dtype=torch.float32, int8=True)
    quantized, _ = load_model(TINY, str(path))
    stored = load_file(str(path))
    scales = {k.removesuffix(INT8_SCALE): v for k, v in stored.items() if k.endswith(INT8_SCALE)}
    params = dict(model.named_parameters())
    assert set(scales) <= set(params) and sum(params[k].numel() for k in scales) > 700_000
    # The comparison is not trivial: the loaded network really has the rounded weights.
    assert all(not torch.equal(quantized.state_dict()[k], params[k]) for k in scales)

    images = torch.rand(1, 2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    reference = model(images, mask=True)                       # float32, with the graph for the gradients
    got = quantized(images)                                    # mask on, as recorded in the file
    generator = torch.Generator().manual_seed(1)
    picks = {key: torch.randperm(reference[key].numel(), generator=generator)[:count].tolist()
             for key, count in (("pose_enc", 18), ("depth", 4), ("depth_conf", 2), ("world_points", 4),
                                ("world_points_conf", 2))}
    y = _output_scalars(reference, picks).double()
    y_quantized = _output_scalars(got, picks).double()
    sigma = []
    names = sorted(scales)
    for key, indices in picks.items():
        for index in indices:
            grads = torch.autograd.grad(reference[key].reshape(-1)[index], [params[k] for k in names],
                                        retain_graph=True, allow_unused=True)
            variance = sum(float((g.double() ** 2 * scales[k].double().view(-1, *([1] * (g.dim() - 1))) ** 2).sum())
                           for g, k in zip(grads, names) if g is not None) / 12
            sigma.append(variance ** 0.5)
    sigma = torch.tensor(sigma, dtype=torch.float64)
    bound = 5 * sigma + 8 * 2.0**-23 * y.abs()
    assert torch.all((y_quantized - y).abs() <= bound), (y_quantized - y).abs() / sigma.clamp_min(1e-30)


def test_training_export_in_8_bits_loads_and_resumes_weights_only(tmp_path):
    from stages.geometry.page4d import train as training
    from stages.geometry.page4d.export_weights import export_checkpoint
    from tests.geometry.test_train import MICRO, PlaneScenes, _config

    import yaml

    micro = tmp_path / "page4d-micro.yaml"
    micro.write_text(yaml.safe_dump(MICRO))
    data = PlaneScenes(height=28, width=28, frames=2, seed=7)
    run = training.train(_config(tmp_path, str(micro), stop_after=2), data=data)
    out = tmp_path / "micro-int8.safetensors"
    assert export_checkpoint(run.out_dir / "checkpoint.pt", out, int8=True)["step"] == 2
    with safe_open(str(out), framework="pt") as f:
        assert any(k.endswith(INT8_VALUES) for k in f.keys())   # the camera head's 64-wide matrices
    model, info = load_model(str(micro), str(out))
    assert info.metadata["weights_format"] == INT8_FORMAT and info.metadata["train_state"]["step"] == 2
    resumed = training.train(_config(tmp_path, str(micro), stop_after=1, out_dir=str(tmp_path / "resumed")),
                             resume=out, data=data)
    assert resumed.state.step == 3 and resumed.state.weights_only_resumes == 1


def _corrupt(tmp_path, change) -> str:
    """An 8-bit file of SMALL, rewritten with ``change(tensors, header)`` applied."""
    good = tmp_path / "good.safetensors"
    save_weights(random_model(SMALL), good, int8=True)
    with safe_open(str(good), framework="pt") as f:
        header = dict(f.metadata())
    tensors = load_file(str(good))
    change(tensors, header)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=header)
    return str(bad)


NAME = "aggregator.frame_blocks.1.mlp.fc1.weight"               # (256, 64) in SMALL


@pytest.mark.parametrize("change, message", [
    (lambda t, h: t.pop(NAME + INT8_SCALE), f"{NAME}{INT8_VALUES} has no {INT8_SCALE} partner"),
    (lambda t, h: t.pop(NAME + INT8_VALUES), f"{NAME}{INT8_SCALE} has no {INT8_VALUES} partner"),
    (lambda t, h: t.update({NAME + INT8_SCALE: t[NAME + INT8_SCALE][:-1].clone()}), "expected float (256,)"),
    (lambda t, h: t.update({NAME + INT8_VALUES: t[NAME + INT8_VALUES].float()}), "expected int8"),
    (lambda t, h: t.update({NAME + INT8_SCALE: -t[NAME + INT8_SCALE]}), "negative or non-finite scales"),
    (lambda t, h: t.update({NAME: torch.zeros(256, 64, dtype=torch.float16)}), "stored both as float and as 8"),
    (lambda t, h: h.update(weights_format='"float16"'), "8-bit tensors"),
    (lambda t, h: h.pop("weights_format"), "weights_format is unset"),
    (lambda t, h: h.update(weights_format='"int4-blockwise"'), "unknown weights_format 'int4-blockwise'"),
])
def test_inconsistent_8_bit_files_are_one_line_errors(tmp_path, change, message):
    bad = _corrupt(tmp_path, change)
    with pytest.raises(UserError) as err:
        load_model(TINY, bad)
    assert "\n" not in str(err.value) and message in str(err.value) and "bad.safetensors" in str(err.value)
