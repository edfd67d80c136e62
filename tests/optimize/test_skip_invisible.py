"""Deforming only the Gaussians visible at a time (``gaussians_at(..., skip_invisible=True)``, what training renders
use) renders the same image with the same gradients as deforming all of them: the rasterizer culls every Gaussian
whose opacity is below 1/255 wherever it is."""

from __future__ import annotations

import math

import pytest
import torch

from stages.optimize.rasterize import rasterization
from tests.optimize.test_step_cost import _model


def _camera(width: int = 48, height: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    world_to_camera = torch.eye(4, dtype=torch.float64)
    world_to_camera[2, 3] = 6.0                                    # the random cloud around the origin, 6 in front
    K = torch.tensor([[50.0, 0, width / 2], [0, 50.0, height / 2], [0, 0, 1]], dtype=torch.float64)
    return world_to_camera, K


def _render_and_grads(model, time: float, skip: bool, factors=None, pad: bool = False):
    model.zero_grad(set_to_none=True)
    g = model.gaussians_at(time, skip_invisible=skip, opacity_factors=factors, pad_visible=pad)
    world_to_camera, K = _camera()
    colors, alphas, meta = rasterization(g["means"], g["quats"], g["scales"], g["opacities"], g["sh"],
                                         world_to_camera[None], K[None], 48, 40, sh_degree=1, backend="torch",
                                         absgrad=True)
    meta["means2d"].retain_grad()                                  # what densification reads
    weights = torch.linspace(0.5, 1.5, colors.numel(), dtype=colors.dtype).view_as(colors)
    ((colors * weights).sum() + alphas.sum()).backward()
    grads = {name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for name, p in model.named_parameters()}
    grads["means2d"] = meta["means2d"].grad.clone()
    grads["means2d_absgrad"] = meta["means2d"].absgrad.clone()
    return colors.detach(), meta["radii"].clone(), grads, g


@pytest.mark.parametrize("kind", ["bases", "rigid", "mlp", "planes"])
def test_skipping_invisible_gaussians_changes_neither_the_render_nor_its_gradients(kind):
    model = _model(kind, n=300, seed=1)
    with torch.no_grad():                                          # narrow windows: most are invisible at a time
        model.splats["time_log_scales"].fill_(math.log(0.05))
        model.splats["opacities"].fill_(2.0)
    time = 0.47                                                    # off the anchor times: they move
    full, radii_full, grads_full, g_full = _render_and_grads(model, time, skip=False)
    part, radii_part, grads_part, g_part = _render_and_grads(model, time, skip=True)

    visible = g_full["opacities"] >= 1 / 255
    dynamic = model.splats["is_dynamic"]
    assert (dynamic & ~visible).sum() > 100 and (dynamic & visible).sum() > 10     # the case is not trivial
    assert not torch.equal(g_full["means"][dynamic & ~visible], g_part["means"][dynamic & ~visible])
    torch.testing.assert_close(g_part["means"][visible], g_full["means"][visible], rtol=0, atol=1e-12)
    assert float(full.std()) > 0.01                                # something is in the picture
    torch.testing.assert_close(part, full, rtol=0, atol=1e-12)
    assert torch.equal(radii_part, radii_full)
    for name, grad in grads_full.items():
        torch.testing.assert_close(grads_part[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    assert any(float(grads_full[k].abs().sum()) > 0 for k in grads_full if k.startswith("deformation"))


def test_dropped_gaussians_factors_apply_before_the_skip_decides_who_is_visible():
    """Training's opacity factors (drop_rate: 0 for a dropped Gaussian, 1 / (1 - rate) for a kept one) can lift a
    Gaussian over 1/255 or take it out: the skip must decide on the factored opacities, so the render and its
    gradients stay those of deforming every Gaussian."""
    model = _model("bases", n=300, seed=3)
    with torch.no_grad():                          # widths spread so that opacities at the time span 1/255
        widths = 0.04 + 0.08 * torch.rand(300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        model.splats["time_log_scales"].copy_(widths.log())
        model.splats["opacities"].fill_(2.0)
    time = 0.47
    unfactored = model.gaussians_at(time)["opacities"].detach()
    factors = torch.where(torch.rand(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.75,
                          4.0, 0.0).to(unfactored.dtype)                              # rate 0.75: kept x 4
    lifted = (unfactored < 1 / 255) & (unfactored * factors >= 1 / 255)
    assert lifted.sum() >= 3, "some Gaussians are visible only through their factor"
    full, radii_full, grads_full, g_full = _render_and_grads(model, time, skip=False, factors=factors)
    part, radii_part, grads_part, g_part = _render_and_grads(model, time, skip=True, factors=factors)
    torch.testing.assert_close(g_full["opacities"], unfactored * factors, rtol=0, atol=0)
    visible = g_full["opacities"] >= 1 / 255
    torch.testing.assert_close(g_part["means"][visible], g_full["means"][visible], rtol=0, atol=1e-12)
    torch.testing.assert_close(part, full, rtol=0, atol=1e-12)
    assert torch.equal(radii_part, radii_full)
    for name, grad in grads_full.items():
        torch.testing.assert_close(grads_part[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    unfactored_render = _render_and_grads(model, time, skip=True)[0]
    assert float((unfactored_render - full).abs().max()) > 0.01             # the factors change the picture


def test_with_an_opacity_deformation_every_dynamic_gaussian_is_deformed():
    model = _model("bases", n=60, with_opacity=True, seed=2)
    with torch.no_grad():
        model.splats["time_log_scales"].fill_(math.log(0.05))
    full = model.gaussians_at(0.5)
    part = model.gaussians_at(0.5, skip_invisible=True)
    for key in ("means", "quats", "scales", "opacities"):
        assert torch.equal(full[key], part[key]), key


def test_padded_sizes_hold_the_count_within_a_sixteenth_and_form_a_short_ladder():
    from stages.optimize.model import padded_size

    assert padded_size(0, 1000) == 0 and padded_size(1, 1000) == 256 and padded_size(300, 1000) == 512
    assert padded_size(19_000, 60_000) == 19_456                     # 19 x 1024: steps of 1024 from 16384
    assert padded_size(59_000, 60_000) == 59_392                     # 29 x 2048: steps of 2048 from 32768
    assert padded_size(59_900, 60_000) == 60_000                     # never more than there are to pad with
    sizes = {padded_size(count, 10**6) for count in range(1, 200_001)}
    for count in (1, 255, 256, 4097, 33_333, 199_999):
        size = padded_size(count, 10**6)
        assert count <= size <= count + max(256, count / 16)
    assert len(sizes) <= 16 * 9                                      # 16 per doubling from 4096 up, fewer below


@pytest.mark.parametrize("kind", ["bases", "planes"])
def test_padding_the_visible_set_changes_neither_the_render_nor_its_gradients(kind):
    """pad_visible (under CUDA graphs): the deformation sees the visible Gaussians and then invisible dynamic ones
    up to a ladder size; the padding rows are culled, so image, radii and every gradient are those of the visible
    set alone, and ``deformed`` still names the visible rows only."""
    model = _model(kind, n=600, seed=2)
    with torch.no_grad():
        model.splats["time_log_scales"].fill_(math.log(0.05))
        model.splats["opacities"].fill_(2.0)
    time = 0.47

    def run(pad: bool):
        seen = {}
        original = model.deformation.displacement

        def displacement(means, *args, **kwargs):           # the rows the deformation is asked for
            seen["rows"] = means.shape[0]
            return original(means, *args, **kwargs)

        model.deformation.displacement = displacement
        try:
            return (*_render_and_grads(model, time, skip=True, pad=pad), seen["rows"])
        finally:
            del model.deformation.displacement

    plain, radii, grads, g_plain, rows_plain = run(False)
    padded, radii_padded, grads_padded, g_padded, rows_padded = run(True)
    visible = int(g_plain["deformed"].numel())
    dynamic = int(model.splats["is_dynamic"].sum())
    from stages.optimize.model import padded_size

    assert 10 < visible < dynamic - 256 and rows_plain == visible
    assert rows_padded == padded_size(visible, dynamic) > visible                  # the padding is real
    assert torch.equal(g_padded["deformed"], g_plain["deformed"])
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-12)
    assert float(plain.std()) > 0.01 and torch.equal(radii_padded, radii)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_padded[name], grad, rtol=1e-10, atol=1e-12, msg=name)
