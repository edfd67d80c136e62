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


def _render_and_grads(model, time: float, skip: bool, factors=None):
    model.zero_grad(set_to_none=True)
    g = model.gaussians_at(time, skip_invisible=skip, opacity_factors=factors)
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
